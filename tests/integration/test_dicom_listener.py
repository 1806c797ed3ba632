"""``carina dicom-listen`` against DCMTK's echoscu and storescu as the modality (and pynetdicom
as a sender of what DCMTK would not send): who may associate, a series stored once and turned
into one job, sent again, a listener killed before the series was complete, bad instances."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from carina.local import free_port, start_api, stop_process_group
from ops.samples import ct_phantom, ct_series
from queues.dicom_listener import DONE, Series
from queues.jobs import JobStore
from tests.dicom_peers import RunningListener
from tests.helpers import wait_until

MODALITY = "CT_SCANNER"


def dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: DCMTK is installed by `make dicom-tools` (Debian's dcmtk, as root)")
    return path


class Pacs:
    """A DICOM peer results are sent to: pynetdicom's storage SCP on loopback, keeping what it
    is sent in ``folder`` (``refuse`` makes it answer 0xA700 to everything)."""

    def __init__(self, folder: Path):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.folder, self.port, self.refuse = folder, free_port(), False
        folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event) -> int:
        if self.refuse:
            return 0xA700
        (self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    peer = Pacs(tmp_path_factory.mktemp("pacs"))
    yield peer
    peer.server.shutdown()


RULES = [{"kind": "dicom", "dicom": {"SeriesDescription": "*send*"}, "pipeline": "3dblur", "send_to": "pacs"},
         {"kind": "dicom", "dicom": {"SeriesDescription": "*down*"}, "pipeline": "3dblur", "send_to": "down"},
         {"kind": "dicom", "dicom": {"Modality": "CT"}, "pipeline": "3dblur"}]


@pytest.fixture(scope="module")
def listener(deployment, pacs, tmp_path_factory):
    running = RunningListener(deployment.env, tmp_path_factory.mktemp("dicom"), RULES, MODALITY,
                              CARINA_DICOM_DESTINATIONS=f"pacs=PACS@127.0.0.1:{pacs.port},"
                                                        f"down=NOBODY@127.0.0.1:{free_port()}",
                              CARINA_DICOM_SEND_ATTEMPTS="2", CARINA_DICOM_SEND_BACKOFF_S="0.5")
    running.start()
    try:
        yield running
    finally:
        running.kill()


def echo(listener, calling: str) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("echoscu"), "-aet", calling, "-aec", "CARINA", "127.0.0.1", str(listener.port)],
                          capture_output=True, text=True, timeout=30)


def store(listener, files, calling: str = MODALITY) -> subprocess.CompletedProcess:
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK waits on Nagle otherwise
    return subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", "CARINA", "127.0.0.1", str(listener.port),
                           *map(str, files)], capture_output=True, text=True, timeout=120, env=env)


def a_series(folder: Path, slices: int = 6, **options) -> list[Path]:
    return ct_series(folder, ct_phantom((slices, 48, 48)), **options)


def finished(deployment, listener, series_uid: str, generation: int = 1) -> Series:
    return listener.finished(deployment.client(), series_uid, generation)


def test_only_an_allowed_calling_ae_title_may_associate(listener):
    assert echo(listener, MODALITY).returncode == 0
    refused = echo(listener, "INTRUDER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_a_connection_from_an_address_not_allowed_is_closed_before_any_association(deployment, tmp_path):
    with own_listener(deployment, tmp_path, CARINA_DICOM_ALLOWED_ADDRESSES="10.255.255.1") as running:
        refused = echo(running, MODALITY)
        assert refused.returncode != 0
        assert "a connection from 127.0.0.1 refused: not in CARINA_DICOM_ALLOWED_ADDRESSES" in running.log.read_text()
    with own_listener(deployment, tmp_path / "again",
                      CARINA_DICOM_ALLOWED_ADDRESSES="10.255.255.1,127.0.0.1") as running:
        assert echo(running, MODALITY).returncode == 0


def test_a_series_is_stored_once_and_becomes_one_job(deployment, listener, tmp_path):
    files = a_series(tmp_path / "ct")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    first, again = store(listener, files), store(listener, files[:3])  # the modality retries part of it
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    record = finished(deployment, listener, uid)
    assert record.state == DONE, (record, listener.log.read_text()[-2000:])
    assert (record.instances, record.duplicates, record.calling_ae) == (len(files), 3, MODALITY)
    spooled = sorted(record.folder(listener.spool).iterdir())
    assert [p.name for p in spooled] == sorted(f"{pydicom.dcmread(f).SOPInstanceUID}.dcm" for f in files)
    assert all(p.read_bytes()[128:132] == b"DICM" for p in spooled)
    folders = [listener.spool, record.folder(listener.spool).parent, record.folder(listener.spool),
               listener.spool / ".incoming", listener.spool / ".incoming" / "CARINA"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in [*spooled, *folders])  # patient data: 0600, each folder 0700
    status = JobStore(deployment.client(), deployment.settings.namespace, 3600).get(record.job)
    assert status.pipeline == "3dblur"
    assert "the DICOM listener CARINA (CT_SCANNER at 127.0.0.1)" in status.submitted_by
    [output] = [p for p in listener.output.iterdir() if p.name.startswith(uid)]
    assert len(list(output.glob("*.dcm"))) == len(files)


def test_a_series_sent_again_after_its_job_is_a_new_generation_and_a_new_job(deployment, listener, tmp_path):
    files = a_series(tmp_path / "ct")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert store(listener, files).returncode == 0
    first = finished(deployment, listener, uid)
    assert store(listener, files).returncode == 0
    second = finished(deployment, listener, uid, generation=2)
    assert second.state == DONE and second.job != first.job and second.previous_jobs == [first.job]
    assert second.instances == len(files) and len(list(first.folder(listener.spool).iterdir())) == len(files)


def test_a_listener_killed_before_the_series_was_complete_starts_its_job_once_restarted(deployment, listener,
                                                                                          tmp_path):
    files = a_series(tmp_path / "ct")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert store(listener, files).returncode == 0
    listener.kill()  # within the stability wait: nothing was submitted yet
    assert listener.records(deployment.client())[uid].state == "receiving"
    listener.start()
    record = finished(deployment, listener, uid)
    assert record.state == DONE and record.instances == len(files)
    assert listener.log.read_text().count(f"series {uid} ({len(files)} instances") == 1


def test_with_fsync_at_the_series_decision_a_killed_listener_restarted_runs_the_series_once(deployment, tmp_path):
    files = a_series(tmp_path / "ct")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    with own_listener(deployment, tmp_path, CARINA_DICOM_FSYNC="series") as running:
        assert store(running, files).returncode == 0
        running.kill()  # the instances answered, none fsynced yet, a part of them perhaps not yet in Redis
        running.start()
        record = running.finished(deployment.client(), uid)
        assert record.state == DONE and record.instances == len(files), running.log.read_text()[-2000:]
        assert running.log.read_text().count(f"series {uid} ({len(files)} instances") == 1


def test_one_association_more_than_allowed_is_rejected_and_a_silent_one_is_aborted(deployment, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(Verification)
    with own_listener(deployment, tmp_path, CARINA_DICOM_MAX_ASSOCIATIONS="1", CARINA_DICOM_TIMEOUT_S="2") as running:
        first = ae.associate("127.0.0.1", running.port, ae_title="CARINA")
        assert first.is_established
        second = ae.associate("127.0.0.1", running.port, ae_title="CARINA")
        assert second.is_rejected
        assert "rejected: 1 associations already" in running.log.read_text()
        wait_until(lambda: not first.is_alive(), 30, "the silent association to be aborted")
        assert first.is_aborted
        third = ae.associate("127.0.0.1", running.port, ae_title="CARINA")  # its place is free again
        assert third.is_established and int(third.send_c_echo().Status) == 0
        third.release()


def send_with_pynetdicom(listener, dataset) -> int:
    """The status of a C-STORE of ``dataset`` from pynetdicom (what DCMTK refuses to send)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CARINA")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


def test_an_instance_whose_uids_would_leave_the_spool_is_refused_and_nothing_is_written(listener, tmp_path):
    dataset = pydicom.dcmread(a_series(tmp_path / "ct", slices=1)[0])
    dataset.SeriesInstanceUID = "../../escaped"
    before = {p for p in listener.root.rglob("*")}
    assert send_with_pynetdicom(listener, dataset) == 0xA900
    assert {p for p in listener.root.rglob("*")} - before <= {listener.log}
    assert "without valid SOP/series/study instance UIDs" in listener.log.read_text()


def test_a_sop_class_the_listener_does_not_take_is_not_negotiated(listener, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import BasicTextSRStorage, CTImageStorage

    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(BasicTextSRStorage)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CARINA")
    try:
        assert assoc.is_established
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [CTImageStorage]
        assert [c.abstract_syntax for c in assoc.rejected_contexts] == [BasicTextSRStorage]
    finally:
        assoc.release()


def test_two_series_interleaved_on_one_association_become_two_jobs(deployment, listener, tmp_path):
    first, second = a_series(tmp_path / "a", slices=4), a_series(tmp_path / "b", slices=5)
    interleaved = [f for pair in zip(first, second) for f in pair] + second[len(first):]
    assert store(listener, interleaved).returncode == 0
    records = [finished(deployment, listener, pydicom.dcmread(files[0]).SeriesInstanceUID) for files in (first,
                                                                                                        second)]
    assert [(r.state, r.instances) for r in records] == [(DONE, 4), (DONE, 5)]
    assert records[0].job != records[1].job


@contextmanager
def own_listener(deployment, tmp_path: Path, spool: Path | None = None, **variables: str):
    """A listener of the test's own (every DICOM series → 3dblur), started, killed afterwards."""
    (tmp_path / "listener").mkdir(parents=True)
    running = RunningListener(deployment.env, tmp_path / "listener", [{"kind": "dicom", "pipeline": "3dblur"}],
                              MODALITY, spool=spool, **variables)
    try:
        running.start()
        yield running
    finally:
        running.kill()


def send_then_abort(port: int, files: list[Path]) -> None:
    """C-STORE ``files`` over one association (each answered success), then abort it."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="CARINA")
    assert assoc.is_established
    for path in files:
        assert int(assoc.send_c_store(pydicom.dcmread(path)).Status) == 0
    assoc.abort()


def test_an_association_aborted_half_way_keeps_what_arrived_and_the_series_completes(deployment, listener, tmp_path):
    files = a_series(tmp_path / "ct", slices=6)
    send_then_abort(listener.port, files[:3])
    record = finished(deployment, listener, pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert record.state == DONE and record.instances == 3
    assert len(list(record.folder(listener.spool).glob("*.dcm"))) == 3


def dispatched(deployment, job: str, state: str) -> dict:
    jobs = JobStore(deployment.client(), deployment.settings.namespace, 3600)
    wait_until(lambda: jobs.get(job).dispatch.get("state") == state, 60, f"job {job}'s results {state}")
    return jobs.get(job).dispatch


def test_a_job_s_dicom_results_are_sent_to_the_rule_s_destination(deployment, listener, pacs, tmp_path):
    files = a_series(tmp_path / "ct", series_description="please send back")
    assert store(listener, files).returncode == 0
    record = finished(deployment, listener, pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert record.state == DONE and record.send_to == "pacs"
    sent = dispatched(deployment, record.job, "sent")
    assert sent["files"] == len(files) and sent["attempts"] == 1
    [output] = [p for p in listener.output.iterdir() if p.name.startswith(record.series)]
    received = {pydicom.dcmread(p).SOPInstanceUID for p in pacs.folder.iterdir()}
    assert {pydicom.dcmread(p).SOPInstanceUID for p in output.glob("*.dcm")} <= received
    assert not (listener.outbox / record.job).exists()  # acknowledged: the copy is gone, the output stays
    shown = subprocess.run([sys.executable, "-m", "carina", "status", record.job], env=listener.env,
                           capture_output=True, text=True, timeout=60)
    assert "dispatch: sent to pacs (PACS@127.0.0.1:" in shown.stdout


def test_results_a_destination_never_takes_go_to_the_dead_letter_with_the_reason(deployment, listener, tmp_path):
    files = a_series(tmp_path / "ct", series_description="down the line")
    assert store(listener, files).returncode == 0
    record = finished(deployment, listener, pydicom.dcmread(files[0]).SeriesInstanceUID)
    dead = dispatched(deployment, record.job, "dead-letter")
    assert dead["attempts"] == 2 and "no association with down" in dead["reason"]
    letter = listener.outbox / "dead-letter" / record.job
    assert len(list(letter.glob("*.dcm"))) == len(files)
    assert "2 attempts: no association with down" in (letter / "reason.txt").read_text()
    [output] = [p for p in listener.output.iterdir() if p.name.startswith(record.series)]
    assert len(list(output.glob("*.dcm"))) == len(files)  # the job's own output untouched
    port = free_port()
    api = start_api({**deployment.env, "CARINA_API_TOKEN": "t" * 32}, port, tmp_path / "api.log")
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/query/{record.job}",
                                         headers={"Authorization": f"Bearer {'t' * 32}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    finally:
        stop_process_group(api)
    assert body["dispatch"]["state"] == "dead-letter" and "no association with down" in body["dispatch"]["reason"]


def test_results_the_destination_refuses_are_kept_in_the_dead_letter_with_its_status(deployment, listener, pacs,
                                                                                      tmp_path):
    files = a_series(tmp_path / "ct", series_description="send, but refused")
    pacs.refuse = True
    try:
        assert store(listener, files).returncode == 0
        record = finished(deployment, listener, pydicom.dcmread(files[0]).SeriesInstanceUID)
        dead = dispatched(deployment, record.job, "dead-letter")
    finally:
        pacs.refuse = False
    assert dead["attempts"] == 2 and "refused 00000-" in dead["reason"] and "status 0xA700" in dead["reason"]
    assert len(list((listener.outbox / "dead-letter" / record.job).glob("*.dcm"))) == len(files)


def test_the_metrics_count_what_the_listener_and_its_outbox_did(listener):
    # Runs after the tests above in this module: an intruder, stored series, duplicates,
    # refused instances, deliveries sent and dead letters.
    shown = subprocess.run([sys.executable, "-m", "carina", "metrics", "--once"], env=listener.env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    counts = {line.split('event="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in shown.stdout.splitlines() if line.startswith('carina_dicom_events_total{ae_title="CARINA"')}
    assert counts["rejected"] >= 1 and counts["associations"] >= 5 and counts["refused"] >= 1
    assert counts["instances"] >= 30 and counts["duplicates"] >= 3
    assert counts["series_complete"] == counts["jobs_started"] >= 6
    assert counts["results_sent"] >= 1 and counts["dead_letters"] >= 2 and counts["send_retries"] >= 2


def test_health_echoes_the_listener_and_each_destination(deployment, listener):
    env = {**listener.env, "CARINA_DICOM_ALLOWED_AES": MODALITY, "CARINA_DICOM_PORT": str(listener.port)}
    shown = subprocess.run([sys.executable, "-m", "carina", "health", "--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(shown.stdout)}
    assert checks["dicom"]["ok"] and "C-ECHO answered" in checks["dicom"]["detail"]
    assert checks["send:pacs"]["ok"]
    assert not checks["send:down"]["ok"] and "no association" in checks["send:down"]["detail"]
    assert shown.returncode == 1  # one destination is down


def test_a_full_spool_refuses_the_instance_leaves_no_partial_file_and_runs_no_job(deployment, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root, as CI has): {mounted.stderr.strip()}")
    try:
        with own_listener(deployment, tmp_path, spool=disk) as running:
            files = ct_series(tmp_path / "ct", ct_phantom((8, 256, 256)))  # 128 kB a slice: 1 MB for 512 kB
            sent = store(running, files)
            uid = pydicom.dcmread(files[0]).SeriesInstanceUID
            record = running.finished(deployment.client(), uid)
            assert record.state == "unrouted" and not record.job
            assert record.reason.startswith(f"incomplete: {len(record.unstored)} instances could not be stored")
            assert "No space left on device" in record.reason
            # storescu gives up on the series at the first refusal: what came before it is kept whole
            assert record.instances > 0 and record.unstored and record.instances + len(record.unstored) <= len(files)
            kept = list(disk.rglob("*"))
            assert not [p for p in kept if p.is_file() and p.name.startswith(".")]  # no partial file
            assert all(p.read_bytes()[128:132] == b"DICM" for p in kept if p.is_file())
            assert "0xa700" in (sent.stdout + sent.stderr).lower() or sent.returncode != 0
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_truncated_instance_is_refused_and_nothing_of_it_is_kept(listener, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    whole = a_series(tmp_path / "ct", slices=1)[0]
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])  # the pixels end mid-way
    sop = pydicom.dcmread(whole).SOPInstanceUID
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CARINA")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(cut)  # sent as the bytes are, as pynetdicom sends a file
    finally:
        assoc.release()
    assert int(status.Status) == 0xC000
    assert not list(listener.spool.rglob(f"*{sop}*"))
    assert f"{sop} from {MODALITY} at 127.0.0.1: its pixel data is" in listener.log.read_text()
    assert "cut short; refused" in listener.log.read_text()


def test_a_series_whose_association_was_aborted_can_be_reported_incomplete_instead(deployment, tmp_path):
    with own_listener(deployment, tmp_path, CARINA_DICOM_ABORTED="incomplete") as running:
        files = a_series(tmp_path / "ct", slices=6)
        send_then_abort(running.port, files[:2])
        record = running.finished(deployment.client(), pydicom.dcmread(files[0]).SeriesInstanceUID)
        assert record.state == "unrouted" and record.aborted and not record.job
        assert record.reason.startswith("incomplete: the association sending it was aborted after 2 instances")
        assert len(list(record.folder(running.spool).glob("*.dcm"))) == 2  # kept


def test_an_ended_series_is_forgotten_with_its_job_and_sent_again_still_opens_a_new_generation(deployment,
                                                                                               tmp_path):
    with own_listener(deployment, tmp_path, CARINA_JOB_TTL_S="6") as running:
        files = a_series(tmp_path / "ct", slices=4)
        uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        assert store(running, files).returncode == 0
        first = running.finished(deployment.client(), uid)
        assert first.state == DONE
        wait_until(lambda: uid not in running.records(deployment.client()), 30, "the record forgotten")
        assert store(running, files).returncode == 0
        second = running.finished(deployment.client(), uid, generation=2)
        assert second.state == DONE and second.instances == len(files) and second.job != first.job
        assert len(list(first.folder(running.spool).glob("*.dcm"))) == len(files)  # the first untouched


def test_with_a_retention_a_done_series_leaves_the_spool_and_an_incomplete_one_stays(deployment, tmp_path):
    with own_listener(deployment, tmp_path, CARINA_DICOM_SPOOL_RETAIN_S="1",
                      CARINA_DICOM_ABORTED="incomplete") as running:
        done_files, kept_files = a_series(tmp_path / "done", slices=4), a_series(tmp_path / "kept", slices=4)
        assert store(running, done_files).returncode == 0
        send_then_abort(running.port, kept_files[:2])
        done_uid, kept_uid = (pydicom.dcmread(f[0]).SeriesInstanceUID for f in (done_files, kept_files))
        done = running.finished(deployment.client(), done_uid)
        kept = running.finished(deployment.client(), kept_uid)
        assert done.state == DONE and kept.state == "unrouted"
        wait_until(lambda: running.records(deployment.client())[done_uid].removed, 30, "the done series removed")
        assert not done.folder(running.spool).exists()
        time.sleep(2)  # past the retention, and two passes
        assert len(list(kept.folder(running.spool).glob("*.dcm"))) == 2 and not running.records(
            deployment.client())[kept_uid].removed
        [output] = [p for p in running.output.iterdir() if p.name.startswith(done_uid)]
        assert len(list(output.glob("*.dcm"))) == 4  # the job's results are not the spool's


def test_a_series_with_fewer_files_on_disk_than_were_received_is_reported_incomplete_and_not_run(deployment,
                                                                                                     tmp_path):
    """The host went down inside the batch fsync window: the record says 4 arrived, the disk has 3."""
    with own_listener(deployment, tmp_path) as running:
        files = a_series(tmp_path / "ct", slices=4)
        uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        assert store(running, files).returncode == 0
        wait_until(lambda: running.records(deployment.client())[uid].instances == 4, 10, "all four recorded")
        running.kill()  # within the stability wait: nothing was submitted yet
        folder = running.records(deployment.client())[uid].folder(running.spool)
        sorted(folder.glob("*.dcm"))[0].unlink()  # what the crash did not let reach the disk
        running.start()
        record = running.finished(deployment.client(), uid)
        assert record.state == "unrouted" and not record.job
        assert record.reason.startswith(f"incomplete: 4 instances were received, 3 are in {folder}")
        assert len(list(folder.glob("*.dcm"))) == 3 and all(f.exists() for f in files)
