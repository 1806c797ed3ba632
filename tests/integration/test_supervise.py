"""carina worker starts its Celery worker again when it dies, with a new node name."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import redis

from carina.local import start_worker, stop_process_group
from queues.app import create_app
from queues.jobs import JobStore
from queues.pipelines import submit, wait
from queues.settings import Settings

from tests.helpers import remove_segments


def test_a_celery_worker_that_dies_is_started_again_and_takes_jobs(redis_server, sample, tmp_path):
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/9"),
           "CARINA_NAMESPACE": f"sup{uuid.uuid4().hex[:6]}", "CARINA_SHM_DIR": "/dev/shm", "CARINA_HOST_ID": "host-v"}
    settings = Settings.from_env(env)
    log = tmp_path / "worker.log"
    supervisor = start_worker(env, log, "io,cpu", concurrency=1, host_id="host-v")
    try:
        [celery] = [int(p) for p in Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text().split()]
        os.kill(celery, signal.SIGKILL)  # as the OOM killer would
        deadline = time.monotonic() + 90
        while log.read_text().count(" ready.") < 2:
            assert supervisor.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        text = log.read_text()
        assert "exited (signal 9); starting it again" in text
        nodes = {line.split()[-2] for line in text.splitlines() if line.endswith(" ready.")}
        assert len(nodes) == 2  # a new node name: the dead one is seen as lost
        jobs = JobStore(redis.Redis.from_url(settings.redis_url), settings.namespace, settings.job_ttl_s)
        job = submit(create_app(settings), settings, "fastio-itk", sample[0], tmp_path / "out")
        assert wait(jobs, job, 60).state == "done"
    finally:
        stop_process_group(supervisor)
        redis.Redis.from_url(settings.redis_url).flushdb()
        remove_segments(settings)
    assert supervisor.returncode == 0  # stopped, not given up
