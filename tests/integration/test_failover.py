"""Redis Sentinel: the primary dies in the middle of a job, a replica is promoted, the job completes."""

from __future__ import annotations

import uuid

import pytest
import redis

from carina.local import LocalRedis, LocalSentinel, start_worker, stop_process_group
from fastio.registry import Registry
from queues.pipelines import wait
from queues.settings import Settings

from tests.helpers import slide_job_under_inference, wait_until, worker_env

MASTER = "carina-test"


def replicating(replica: LocalRedis) -> bool:
    link = redis.Redis(port=replica.port, password=replica.password).info("replication")
    return link.get("master_link_status") == "up"


@pytest.fixture
def sentinel_group():
    """A persistent primary, its replica, and three sentinels (quorum 2) watching them."""
    primary = LocalRedis(persistent=True).start()
    replica = LocalRedis(persistent=True, replica_of=primary.port, password=primary.password).start()
    sentinels = []
    try:
        wait_until(lambda: replicating(replica), 20, "replicating")
        sentinels = [LocalSentinel(primary.port, MASTER, primary.password).start() for _ in range(3)]
        yield primary, replica, sentinels
    finally:
        for server in [*sentinels, replica, primary]:
            server.stop()


def test_a_job_completes_across_a_sentinel_failover_in_the_middle_of_its_stage(sentinel_group, project_triton,
                                                                                tmp_path):
    primary, replica, sentinels = sentinel_group
    url = ";".join(f"sentinel://:{primary.password}@127.0.0.1:{s.port}/0" for s in sentinels)
    env = worker_env(url, f"failover{uuid.uuid4().hex[:6]}", project_triton.url, CARINA_REDIS_MASTER_NAME=MASTER)
    settings = Settings.from_env(env)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "io,cpu,gpu", concurrency=1, host_id="host-a")
    try:
        jobs, job = slide_job_under_inference(settings, tmp_path, seed=8)

        primary.kill()
        wait_until(lambda: all(s.primary() == ("127.0.0.1", replica.port) for s in sentinels), 60,
                   "promoted by every sentinel")
        status = wait(jobs, job, 300)
        assert status.state == "done", (status, log.read_text()[-3000:])
        assert (tmp_path / "out" / "image.tif").is_file()
        assert worker.poll() is None  # the worker rode out the failover
        assert Registry(jobs.redis, settings.fastio_config()).live() == {}
    finally:
        stop_process_group(worker)
        for path in settings.shm_dir.glob(f"{settings.namespace}-*"):
            path.unlink(missing_ok=True)
