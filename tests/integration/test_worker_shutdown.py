"""``carina worker`` stopping: the host's free shared memory, finished jobs' pixels, goes with it."""

from __future__ import annotations

import os
import uuid

import numpy as np

from carina.local import start_worker, stop_process_group
from fastio import FastIOConfig, FastIOContext
from fastio.registry import Registry


def test_a_stopped_worker_unlinks_its_hosts_free_segments_and_spares_a_running_jobs(
        redis_server, redis_client, shm_dir, tmp_path):
    config = FastIOConfig(host_id="stopping-host", shm_dir=shm_dir, namespace=f"t{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url, "CARINA_NAMESPACE": config.namespace,
           "CARINA_SHM_DIR": str(shm_dir)}
    worker = start_worker(env, tmp_path / "worker.log", "io", concurrency=1, host_id=config.host_id)
    try:
        finished = FastIOContext(redis_client, "finished-job", config)
        finished.publish_array(np.full(1_000_000, 7, np.uint8), "volume")
        finished.free_all()  # its segment goes to the host's pool, pixels and all
        running = FastIOContext(redis_client, "running-job", config)
        running.publish_array(np.ones(10_000_000, np.uint8), "volume")  # too large for the pooled one
        pooled = Registry(redis_client, config).pooled()
        assert len(pooled) == 1 and len(list(shm_dir.iterdir())) == 2
    finally:
        stop_process_group(worker, grace_s=30)
    assert worker.returncode == 0
    assert Registry(redis_client, config).pooled() == {}
    remaining = {p.name for p in shm_dir.iterdir()}
    assert len(remaining) == 1 and remaining.isdisjoint(pooled)  # the running job's segment only
    assert FastIOContext(redis_client, "running-job", config).get("volume").array.sum() == 10_000_000
    assert "unlinked 1 free shared-memory segments of host stopping-host" in (tmp_path / "worker.log").read_text()
    running.free_all()
