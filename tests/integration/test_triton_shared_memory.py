"""TritonPredictor's system shared-memory path against a real tritonserver on this host."""

from __future__ import annotations

import logging
import mmap
import os
import uuid

import numpy as np
import pytest

from fastio import FastIOConfig, FastIOContext
from fastio.janitor import drain_pool
from ops.triton import SharedRegion, TritonPredictor

ROI = (8, 8, 8)


def server_regions(url: str) -> list[str]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        return [r["name"] for r in client.get_system_shared_memory_status()]
    finally:
        client.close()


@pytest.fixture
def posix_fastio(redis_client):
    """A FastIO context whose segments lie in /dev/shm itself (POSIX shm names), as in production;
    its own namespace keeps them apart, and they are unlinked afterwards."""
    config = FastIOConfig(host_id="host-a", namespace=f"t{uuid.uuid4().hex[:8]}")
    ctx = FastIOContext(redis_client, f"shm-{uuid.uuid4().hex[:8]}", config)
    yield ctx
    ctx.free_all()
    drain_pool(redis_client, config)
    assert not list(config.shm_dir.glob(f"{config.segment_prefix}*"))


@pytest.fixture
def region(posix_fastio):
    """A FastIO allocation in /dev/shm, as the spleen worker hands one to its predictor."""
    allocation = posix_fastio.create(4 << 20)
    assert allocation.posix_shm_key == f"/{allocation.segment}"
    yield SharedRegion(allocation.posix_shm_key, allocation.buffer)
    allocation.release()


def test_tensors_travel_through_the_region_and_results_equal_http(triton_server, region):
    shared = TritonPredictor(triton_server.url, "double", concurrency=3, shared_memory=region)
    plain = TritonPredictor(triton_server.url, "double")
    batches = [np.random.default_rng(i).normal(size=(b, 2, *ROI)).astype(np.float32) for i, b in enumerate([1, 4, 3, 2, 4])]
    outputs = list(shared.predict_many(iter(batches)))
    assert shared._slots.name in server_regions(triton_server.url)
    for batch, out in zip(batches, outputs):
        np.testing.assert_array_equal(out, plain(batch))
    # The last request's input and the server's output for it lie in the region itself.
    last = batches[-1]
    slots = [np.frombuffer(region.buffer, np.float32, last.size, s * shared._slots.slot_bytes) for s in range(3)]
    assert any(np.array_equal(slot, last.reshape(-1)) for slot in slots)
    assert any(np.array_equal(np.frombuffer(region.buffer, np.float32, last.size, s * shared._slots.slot_bytes + last.nbytes),
                              2 * last.reshape(-1)) for s in range(3))
    shared.close()
    assert not any(n.startswith(f"carina-{os.getpid()}") for n in server_regions(triton_server.url))


def test_outputs_do_not_change_when_a_slot_is_reused(triton_server, region):
    predictor = TritonPredictor(triton_server.url, "double", concurrency=1, shared_memory=region)
    first = predictor(np.ones((2, 2, *ROI), np.float32))
    predictor(np.full((2, 2, *ROI), 5.0, np.float32))  # the same slot: the first answer was copied out
    assert np.all(first == 2.0)
    predictor.close()


def test_a_region_the_server_cannot_map_falls_back_to_http(triton_server, caplog):
    anonymous = mmap.mmap(-1, 1 << 20)  # no name in /dev/shm: as if the server were on another host
    predictor = TritonPredictor(triton_server.url, "double",
                                shared_memory=SharedRegion(f"/carina-missing-{uuid.uuid4().hex}", memoryview(anonymous)))
    x = np.random.default_rng(1).normal(size=(2, 2, *ROI)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="ops.triton"):
        np.testing.assert_array_equal(predictor(x), 2 * x)
    assert "tensors go over HTTP" in caplog.text
    assert not bytes(anonymous[:64]).strip(b"\0")  # nothing was written into it
    predictor.close()


def test_a_chunk_too_large_for_a_slot_goes_over_http(triton_server, posix_fastio):
    small = posix_fastio.create(8192)  # a 2×2×8³ float32 chunk is 8 KB: no room for its output
    predictor = TritonPredictor(triton_server.url, "double", shared_memory=SharedRegion(small.posix_shm_key, small.buffer))
    x = np.random.default_rng(2).normal(size=(2, 2, *ROI)).astype(np.float32)
    np.testing.assert_array_equal(predictor(x), 2 * x)
    assert not bytes(small.buffer[:64]).strip(b"\0")
    predictor.close()
    small.release()


def test_a_registration_the_server_lost_falls_back_to_http(triton_server, region):
    # As after a restart of the server: the region is gone from it, the predictor still names it.
    import tritonclient.http as httpclient

    predictor = TritonPredictor(triton_server.url, "double", shared_memory=region)
    x = np.random.default_rng(3).normal(size=(2, 2, *ROI)).astype(np.float32)
    np.testing.assert_array_equal(predictor(x), 2 * x)
    name = predictor._slots.name
    client = httpclient.InferenceServerClient(triton_server.url)
    try:
        client.unregister_system_shared_memory(name)
    finally:
        client.close()
    np.testing.assert_array_equal(predictor(x), 2 * x)  # the server answers 404 for the region: retried over HTTP
    assert predictor._slots.name is None
    region.buffer[:] = bytes(len(region.buffer))
    np.testing.assert_array_equal(predictor(x), 2 * x)
    assert not bytes(region.buffer).strip(b"\0")  # HTTP bodies from then on
    predictor.close()
