"""Clara's job priorities on the broker: an immediate job overtakes a backlog of normal ones."""

from __future__ import annotations

import os
import uuid

import pytest

from queues.app import create_app
from queues.errors import InvalidJobRequest
from queues.jobs import JobStore
from carina.local import start_worker, stop_process_group
from queues.pipelines import submit, wait
from queues.settings import Settings

from tests.helpers import remove_segments



@pytest.fixture
def quiet_broker(redis_server, tmp_path):
    """A database of its own: no other worker takes these jobs before the test's own starts."""
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/3"),
           "CARINA_NAMESPACE": f"prio{uuid.uuid4().hex[:6]}", "CARINA_SHM_DIR": "/dev/shm",
           "CARINA_HOST_ID": "host-p"}
    settings = Settings.from_env(env)
    yield env, settings
    import redis

    redis.Redis.from_url(settings.redis_url).flushdb()
    remove_segments(settings)


def test_an_immediate_job_overtakes_a_backlog_of_normal_ones(quiet_broker, sample, tmp_path):
    env, settings = quiet_broker
    app = create_app(settings)
    path, _ = sample
    backlog = [submit(app, settings, "fastio-itk", path, tmp_path / f"normal-{i}") for i in range(6)]
    lower = submit(app, settings, "fastio-itk", path, tmp_path / "lower", priority="lower")
    urgent = submit(app, settings, "fastio-itk", path, tmp_path / "urgent", priority="immediate")

    # One worker, one process: it takes the most urgent message each time it is free.
    worker = start_worker(env, tmp_path / "worker.log", "io,cpu", concurrency=1, host_id="host-p")
    try:
        import redis

        jobs = JobStore(redis.Redis.from_url(settings.redis_url), settings.namespace, settings.job_ttl_s)
        finished = {job: wait(jobs, job, 120) for job in [*backlog, lower, urgent]}
    finally:
        stop_process_group(worker)
    assert all(status.state == "done" for status in finished.values()), finished
    order = sorted(finished, key=lambda job: finished[job].updated)
    assert order[0] == urgent  # all three of its stages went ahead of the backlog
    assert order[-1] == lower  # and a lower job waits for every normal one
    assert jobs.get(urgent).priority == "immediate"


def test_an_unknown_priority_is_refused(quiet_broker, sample, tmp_path):
    env, settings = quiet_broker
    with pytest.raises(InvalidJobRequest, match="priority"):
        submit(create_app(settings), settings, "fastio-itk", sample[0], tmp_path / "out", priority="urgent")
