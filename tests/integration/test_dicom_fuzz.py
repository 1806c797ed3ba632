"""``carina dicom-listen`` fed what a broken modality or an attacker sends: a recorded, valid
association (A-ASSOCIATE-RQ, C-ECHO, C-STOREs, A-RELEASE-RQ) mutated — bytes changed, a PDU's
type or length rewritten, cut short, bytes spliced in — one mutation per connection. The
listener must go on serving, raise nothing it does not handle, leave no partial file, and keep
in its series folders only whole instances."""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest

from ops.samples import ct_phantom, ct_series
from tests.dicom_peers import RunningListener
from tests.helpers import wait_until

MODALITY = "CT_SCANNER"
CASES = 400
NO_RULE = [{"kind": "dicom", "dicom": {"Modality": "NOTHING"}, "pipeline": "3dblur"}]  # no job for what arrives


def recorded_session(port: int, files: list[Path]) -> bytes:
    """The bytes pynetdicom sends to echo, store ``files`` and release, recorded by a relay in
    front of the listener on ``port``."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    relay = socket.create_server(("127.0.0.1", 0))
    sent = bytearray()

    def relay_one() -> None:
        client, _ = relay.accept()
        upstream = socket.create_connection(("127.0.0.1", port))

        def answers() -> None:
            while data := upstream.recv(65536):
                client.sendall(data)
            client.close()
        back = threading.Thread(target=answers, daemon=True)
        back.start()
        while data := client.recv(65536):
            sent.extend(data)
            upstream.sendall(data)
        upstream.shutdown(socket.SHUT_WR)
        back.join(10)

    relaying = threading.Thread(target=relay_one, daemon=True)
    relaying.start()
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", relay.getsockname()[1], ae_title="CARINA")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    for path in files:
        assert int(assoc.send_c_store(pydicom.dcmread(path)).Status) == 0
    assoc.release()
    relaying.join(30)
    relay.close()
    return bytes(sent)


def pdu_starts(stream: bytes) -> list[int]:
    starts, offset = [], 0
    while offset + 6 <= len(stream):
        starts.append(offset)
        offset += 6 + struct.unpack_from(">I", stream, offset + 2)[0]
    return starts


def mutated(stream: bytes, rng: random.Random) -> bytes:
    """``stream`` with one kind of damage, chosen by ``rng``."""
    data = bytearray(stream)
    kind = rng.choice(("bytes", "type", "length", "cut", "splice"))
    if kind == "bytes":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "type":
        data[rng.choice(pdu_starts(stream))] = rng.randrange(256)
    elif kind == "length":
        at = rng.choice(pdu_starts(stream))
        length = struct.unpack_from(">I", data, at + 2)[0]
        struct.pack_into(">I", data, at + 2, rng.choice((0, 1, 3, length - 1, length + 1, 2**31, 2**32 - 1,
                                                         rng.randrange(2**32))) % 2**32)
    elif kind == "cut":
        del data[rng.randrange(len(data)):]
    else:
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    return bytes(data)


def replay(port: int, data: bytes) -> bytes:
    """Send ``data`` on a connection of its own, then close our side and read to the end; what
    the listener answered."""
    answered = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                answered += chunk
        except OSError:  # the listener aborted and closed first: what it should do with most of these
            pass
    return bytes(answered)


@pytest.fixture(scope="module")
def listener(deployment, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzed")
    running = RunningListener(deployment.env, root, NO_RULE, MODALITY)
    running.start()
    yield running
    running.kill()


def test_a_release_before_the_data_set_of_a_c_store_is_answered_with_an_abort(listener, tmp_path):
    stream = recorded_session(listener.port, ct_series(tmp_path / "ct", ct_phantom((1, 16, 16))))
    starts = pdu_starts(stream)
    # associate, echo, the C-STORE's command, its data set, release
    assert [stream[i] for i in starts] == [0x01, 0x04, 0x04, 0x04, 0x05]
    answered = replay(listener.port, stream[:starts[3]] + stream[starts[4]:])  # the data set left out
    kinds = [answered[i] for i in pdu_starts(answered)]
    assert kinds == [0x02, 0x04, 0x07], kinds  # accepted, the echo answered, then aborted: not released


def test_mutated_associations_leave_the_listener_serving_and_its_spool_whole(listener, tmp_path):
    echoscu = shutil.which("echoscu")
    if echoscu is None:
        pytest.fail("echoscu not found: DCMTK is installed by `make dicom-tools` (Debian's dcmtk, as root)")
    files = ct_series(tmp_path / "ct", ct_phantom((3, 16, 16)))
    stream = recorded_session(listener.port, files)
    assert len(pdu_starts(stream)) >= 6  # associate, echo, three stores (command, data set), release
    rng = random.Random(15)
    for _ in range(CASES):
        replay(listener.port, mutated(stream, rng))
    assert listener.process.poll() is None, listener.log.read_text()[-3000:]
    echo = subprocess.run([echoscu, "-aet", MODALITY, "-aec", "CARINA", "127.0.0.1", str(listener.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    incoming = listener.spool / ".incoming" / "CARINA"
    wait_until(lambda: not list(incoming.iterdir()), 30, "the partial files to go")
    log = listener.log.read_text()
    for unwanted in ("Traceback", "Warning"):  # every problem is one line of the listener's own
        assert unwanted not in log, log[log.index(unwanted) - 500:][:4000]
    kept = [p for p in listener.spool.rglob("*") if p.is_file()]
    assert kept  # the unmutated stores, and mutations that left an instance whole
    for path in kept:
        assert path.suffix == ".dcm" and path.is_relative_to(listener.spool)
        assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID == path.stem
