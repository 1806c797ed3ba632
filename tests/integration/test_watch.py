"""``carina watch`` against real workers: stable drops start one job each, inputs are filed away, never lost."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ops.volume import write_volume
from queues.app import create_app
from queues.rules import Rule
from queues.watch import Watcher

from tests.helpers import GEOMETRY, digest

RULES = (Rule("fastio-itk", kind="volume"), Rule("3dblur", kind="dicom", dicom={"Modality": "CT"}))


def volume_file(path: Path) -> Path:
    return write_volume((np.arange(8 * 12 * 10) % 300).astype(np.int16).reshape(8, 12, 10), GEOMETRY, path)


def make_watcher(deployment, inbox: Path, stable_s: float = 0.6) -> Watcher:
    settings = deployment.settings_for("host-a")
    return Watcher(inbox, inbox.parent / "results", RULES, settings, create_app(settings), deployment.client(),
                   stable_s)


def scan_until(watcher: Watcher, done, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the watcher did not get there in time"
        watcher.scan()
        time.sleep(0.1)


@pytest.fixture
def inbox(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def test_a_stable_drop_starts_one_job_and_is_filed_in_done(deployment, inbox):
    watcher = make_watcher(deployment, inbox)
    source = volume_file(inbox.parent / "ct.nii.gz")
    before = source.read_bytes()
    # Written in two halves: no job may start on the first half.
    with open(inbox / "ct.nii.gz", "wb") as f:
        f.write(before[: len(before) // 2])
        f.flush()
        for _ in range(5):
            watcher.scan()
            time.sleep(0.1)
        assert watcher.records() == {}
        f.write(before[len(before) // 2:])
    scan_until(watcher, lambda: (inbox / "done" / "ct.nii.gz").exists())
    assert (inbox / "done" / "ct.nii.gz").read_bytes() == before
    [result] = (inbox.parent / "results").iterdir()
    assert result.name.startswith("ct.nii.gz-") and (result / "output.mhd").is_file()
    assert watcher.records() == {}


def test_names_still_being_copied_wait_until_renamed(deployment, inbox):
    watcher = make_watcher(deployment, inbox, stable_s=0.2)
    volume_file(inbox.parent / "big.nii.gz").rename(inbox / "big.nii.gz.part")
    for _ in range(8):
        watcher.scan()
        time.sleep(0.1)
    assert watcher.records() == {} and not (inbox / "done").exists()
    (inbox / "big.nii.gz.part").rename(inbox / "big.nii.gz")
    scan_until(watcher, lambda: (inbox / "done" / "big.nii.gz").exists())


def test_a_restarted_watcher_follows_its_job_and_picks_up_what_came_meanwhile(deployment, inbox):
    jobs_before = set(deployment.jobs().recent(1000))
    first = make_watcher(deployment, inbox)
    volume_file(inbox / "one.nii.gz")
    scan_until(first, lambda: first.records() != {})
    first = None  # the daemon stops with a job under way ...
    volume_file(inbox / "two.nii.gz")  # ... and something arrives while it is down
    second = make_watcher(deployment, inbox)
    scan_until(second, lambda: {p.name for p in (inbox / "done").glob("*")} >= {"one.nii.gz", "two.nii.gz"})
    assert len(set(deployment.jobs().recent(1000)) - jobs_before) == 2  # one job each, never two


def test_what_no_rule_takes_or_that_fails_goes_to_failed_with_the_reason(deployment, inbox):
    watcher = make_watcher(deployment, inbox)
    (inbox / "report.pdf").write_bytes(b"%PDF-1.7 not a study")
    mixed = inbox / "mixed"
    mixed.mkdir()
    volume_file(mixed / "ct.nii.gz")
    (mixed / "slide.svs").write_bytes(b"II*\0")
    (inbox / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    digests = {name: digest(inbox / name) for name in ("report.pdf", "mixed", "broken.nii.gz")}
    scan_until(watcher, lambda: all((inbox / "failed" / n).exists() for n in ("report.pdf", "mixed", "broken.nii.gz")))
    failed = inbox / "failed"
    assert "no slide, volume or DICOM file" in (failed / "report.pdf.error.txt").read_text()
    assert "mixed content" in (failed / "mixed.error.txt").read_text()
    assert "fastio-itk job" in (failed / "broken.nii.gz.error.txt").read_text()
    for name, files in digests.items():  # nothing lost, nothing changed: the same bytes, moved
        moved = {path.replace(str(inbox), str(failed), 1): sha for path, sha in files.items()}
        assert digest(failed / name) == moved


def test_a_dicom_series_is_routed_by_its_header(deployment, inbox):
    from ops.samples import ct_phantom, ct_series

    ct_series(inbox / "study", ct_phantom((6, 32, 32)), {**GEOMETRY, "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]})
    watcher = make_watcher(deployment, inbox)
    scan_until(watcher, lambda: (inbox / "done" / "study").exists())
    [result] = (inbox.parent / "results").iterdir()
    assert len(list(result.glob("*.dcm"))) == 6


def test_an_inbox_deleted_while_watching_is_waited_for(deployment, inbox, caplog):
    watcher = make_watcher(deployment, inbox, stable_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, 0.2), daemon=True)
    with caplog.at_level(logging.INFO, logger="queues.watch"):
        thread.start()
        try:
            time.sleep(0.5)
            inbox.rmdir()
            deadline = time.monotonic() + 10
            while "is gone" not in caplog.text:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.1)
            inbox.mkdir()
            volume_file(inbox / "late.nii.gz")
            deadline = time.monotonic() + 120
            while not (inbox / "done" / "late.nii.gz").exists():
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.2)
        finally:
            stop.set()
            thread.join(timeout=10)
    assert "is back" in caplog.text


def test_a_metaimage_header_and_its_data_file_are_one_drop(deployment, inbox):
    watcher = make_watcher(deployment, inbox)
    volume = (np.arange(8 * 12 * 10) % 300).astype(np.int16).reshape(8, 12, 10)
    write_volume(volume, GEOMETRY, inbox / "ct.mhd")  # ct.mhd + ct.raw, loose in the inbox
    assert (inbox / "ct.raw").is_file()
    scan_until(watcher, lambda: (inbox / "done" / "ct.mhd").exists())
    assert (inbox / "done" / "ct.raw").is_file()  # moved with its header
    assert not (inbox / "failed").exists()  # the data file was never taken for a drop of its own
    [result] = (inbox.parent / "results").iterdir()
    assert result.name.startswith("ct.mhd-") and (result / "output.mhd").is_file()


def test_an_empty_folder_waits_for_its_files_and_a_lone_sidecar_is_named(deployment, inbox):
    watcher = make_watcher(deployment, inbox, stable_s=0.2)
    (inbox / "study").mkdir()  # a copier makes the folder first
    for _ in range(8):
        watcher.scan()
        time.sleep(0.1)
    assert not (inbox / "failed").exists() and watcher.records() == {}
    volume_file(inbox / "study" / "ct.mhd")
    (inbox / "notes.txt").write_text("for the radiologist")
    scan_until(watcher, lambda: (inbox / "done" / "study").exists() and (inbox / "failed" / "notes.txt").exists())
    assert "(notes.txt)" in (inbox / "failed" / "notes.txt.error.txt").read_text()
