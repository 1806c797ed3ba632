"""A host lost for good in the middle of a job: the job starts again from its input on another host."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pytest
import redis

from carina.local import start_worker, stop_process_group
from fastio.registry import Registry
from queues.pipelines import wait
from queues.settings import Settings

from tests.helpers import slide_job_under_inference, worker_env

HOSTS = ("host-a", "host-b")


@pytest.fixture
def two_hosts(redis_server, project_triton, tmp_path):
    """Two hosts on one Redis database, each with its own segment folder (memory one host
    cannot map from the other), beating every second and lost after 3 s of silence."""
    namespace = f"lost{uuid.uuid4().hex[:6]}"
    folders = {host: Path(tempfile.mkdtemp(prefix=f"carina-{host}-", dir="/dev/shm")) for host in HOSTS}
    envs = {host: worker_env(redis_server.url.replace("/0", "/10"), namespace, project_triton.url, host=host,
                             shm_dir=str(folders[host]), CARINA_JANITOR_INTERVAL_S="1", CARINA_HOST_LOST_S="3")
            for host in HOSTS}
    workers = {}
    try:
        for host in HOSTS:
            workers[host] = start_worker(envs[host], tmp_path / f"{host}.log", "io,cpu,gpu", concurrency=1,
                                         host_id=host)
        yield {host: Settings.from_env(envs[host]) for host in HOSTS}, workers
    finally:
        for worker in workers.values():
            stop_process_group(worker)
        redis.Redis.from_url(redis_server.url.replace("/0", "/10")).flushdb()
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)


def test_a_job_whose_host_is_lost_for_good_completes_on_another(two_hosts, tmp_path):
    settings, workers = two_hosts
    jobs, job = slide_job_under_inference(settings["host-a"], tmp_path, seed=9)
    registry = Registry(jobs.redis, settings["host-a"].fastio_config())
    [lost] = set(registry.job_segments(job).values())  # the host holding the slide's memory
    [survivor] = set(HOSTS) - {lost}
    os.killpg(workers[lost].pid, signal.SIGKILL)  # the whole host: nobody comes back for its stage
    workers[lost].wait()

    status = wait(jobs, job, 300)
    log = (tmp_path / f"{survivor}.log").read_text()
    assert status.state == "done", (status, log[-3000:])
    assert status.restarts == 1 and f"host {lost} was lost" in log
    assert (tmp_path / "out" / "image.tif").is_file()
    assert not list(tmp_path.glob(".out.*.partial"))  # nothing partial left beside the result
    assert Registry(jobs.redis, settings[survivor].fastio_config()).live() == {}
