"""TritonPredictor against a real tritonserver (tests/triton_fixtures.py starts it)."""

from __future__ import annotations

import ipaddress
import logging
import os
import pickle
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ops.errors import InferenceServerUnavailable, InferenceTimeout, ModelNotFound, ModelShapeMismatch
from ops.triton import TritonPredictor
from carina.errors import ServiceError
from carina.local import free_port
from carina.triton import LocalTriton, triton_install
from tests.triton_fixtures import SLOW_MODEL_S

ROI = (8, 8, 8)


def volume_batch(batch: int, fill: float | None = None, seed: int = 0) -> np.ndarray:
    if fill is not None:
        return np.full((batch, 2, *ROI), fill, dtype=np.float32)
    return np.random.default_rng(seed).normal(size=(batch, 2, *ROI)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_double_returns_twice_the_batch(triton_server, batch):
    predictor = TritonPredictor(triton_server.url, "double")
    x = volume_batch(batch, seed=batch)
    y = predictor(x)
    assert y.dtype == np.float32 and y.shape == x.shape and y.flags.writeable
    np.testing.assert_array_equal(y, x * 2)


def test_batch_above_max_batch_size_is_split_and_reassembled(triton_server):
    predictor = TritonPredictor(triton_server.url, "double", concurrency=3)
    x = volume_batch(10)  # max_batch_size 4: requests of 4, 4 and 2
    np.testing.assert_array_equal(predictor(x), x * 2)
    assert predictor.spec().max_batch_size == 4


def test_predict_many_yields_in_order(triton_server):
    predictor = TritonPredictor(triton_server.url, "double", concurrency=4)
    sizes = [1, 3, 4, 2, 6, 1, 4, 1]
    outputs = list(predictor.predict_many(volume_batch(b, fill=i) for i, b in enumerate(sizes)))
    assert [o.shape[0] for o in outputs] == sizes
    for i, out in enumerate(outputs):
        assert np.all(out == 2 * i)


def test_predict_many_keeps_requests_in_flight(triton_server):
    # One request at a time would take 4 sleeps; four in flight take 2: the first runs
    # alone, the dynamic batcher hands the three queued meanwhile to the second execution.
    predictor = TritonPredictor(triton_server.url, "slow", concurrency=4, timeout_s=30)
    start = time.monotonic()
    outputs = list(predictor.predict_many(volume_batch(1, fill=i) for i in range(4)))
    elapsed = time.monotonic() - start
    assert [float(o.flat[0]) for o in outputs] == [0.0, 1.0, 2.0, 3.0]
    assert elapsed < 3 * SLOW_MODEL_S, f"{elapsed:.1f} s: the requests did not overlap"


def test_one_predictor_shared_by_threads(triton_server):
    predictor = TritonPredictor(triton_server.url, "double")
    batches = [volume_batch(1 + i % 4, seed=i) for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(predictor, batches))
    for x, y in zip(batches, outputs):
        np.testing.assert_array_equal(y, x * 2)


def test_predictor_pickles_without_its_clients(triton_server):
    predictor = TritonPredictor(triton_server.url, "double")
    x = volume_batch(2)
    predictor(x)
    clone = pickle.loads(pickle.dumps(predictor))
    np.testing.assert_array_equal(clone(x), x * 2)


def test_compute_seconds_grows_with_work(triton_server):
    predictor = TritonPredictor(triton_server.url, "double")
    before = predictor.compute_seconds()
    predictor(volume_batch(4))
    assert predictor.compute_seconds() > before


def test_missing_model(triton_server):
    predictor = TritonPredictor(triton_server.url, "no_such_model")
    with pytest.raises(ModelNotFound, match="no_such_model"):
        predictor(volume_batch(1))


def test_model_returning_another_shape(triton_server):
    predictor = TritonPredictor(triton_server.url, "wrong_shape")
    with pytest.raises(ModelShapeMismatch, match=r"shape \(2, 2, 4, 4, 4\)"):
        predictor(volume_batch(2))


@pytest.mark.parametrize("shape", [(1, 2, 4, 4, 4), (1, 3, 8, 8, 8), (2, 8, 8, 8)])
def test_batch_the_model_does_not_take(triton_server, shape):
    predictor = TritonPredictor(triton_server.url, "double")
    with pytest.raises(ModelShapeMismatch, match=r"takes shape \(B, 2, 8, 8, 8\)"):
        predictor(np.zeros(shape, np.float32))


def test_unknown_input_name(triton_server):
    predictor = TritonPredictor(triton_server.url, "double", input_name="image")
    with pytest.raises(ModelShapeMismatch, match="no input 'image'.*INPUT__0"):
        predictor(volume_batch(1))


def test_closed_port_is_retried_then_unavailable(caplog):
    predictor = TritonPredictor(f"127.0.0.1:{free_port()}", "double", retries=2, backoff_s=0.01)
    with (caplog.at_level(logging.WARNING, logger="ops.triton"),
          pytest.raises(InferenceServerUnavailable, match="ConnectionRefusedError")):
        predictor(volume_batch(1))
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


def test_server_listens_on_loopback_only(triton_server):
    listening = listening_addresses(triton_server.process.pid)
    ports = {port for _, port in listening}
    assert {triton_server.http_port, triton_server.grpc_port, triton_server.metrics_port} <= ports
    assert {address for address, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening


def test_model_that_fails_to_load_fails_the_start_with_its_error(triton_server, tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')
    (tmp_path / "broken" / "1" / "model.py").write_text('raise RuntimeError("no weights here")\n')
    server = LocalTriton(tmp_path)
    with pytest.raises(ServiceError, match="(?s)exited.*failed to load 'broken'.*no weights here"):
        server.start(timeout_s=60)
    assert server.log is None  # stopped and cleaned up


def test_missing_install_says_how_to_install(tmp_path):
    with pytest.raises(ServiceError, match="setup_triton.sh"):
        triton_install(tmp_path)


def test_slow_answer_times_out_without_retry(triton_server):
    predictor = TritonPredictor(triton_server.url, "slow", timeout_s=0.5, retries=3)
    predictor.spec()
    start = time.monotonic()
    with pytest.raises(InferenceTimeout, match=r"no answer in 0.5 s \(timeout_s\); waited \d+ s in all") as raised:
        predictor(volume_batch(1))
    waited = time.monotonic() - start
    assert waited < SLOW_MODEL_S
    # The message tells the time the caller actually lost, closing the connection included.
    assert abs(float(re.search(r"waited (\d+) s", str(raised.value)).group(1)) - waited) <= 1.0
    # The model is still busy with the abandoned request: a patient one queues behind it and
    # returns once the model is idle again, so no test after this one meets a busy model.
    patient = TritonPredictor(triton_server.url, "slow", timeout_s=4 * SLOW_MODEL_S)
    assert patient(volume_batch(1)).shape == volume_batch(1).shape


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state that process ``pid`` holds (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            address = ipaddress.ip_address(raw)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                shown = f"::ffff:{address.ipv4_mapped}"
            else:
                shown = str(address)
            found.add((shown, int(port_hex, 16)))
    return found
