"""Chaos: a worker process killed with SIGKILL in the middle of a stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis

from fastio.registry import Registry
from ops.samples import he_slide
from queues.app import create_app
from queues.jobs import JobStore
from carina.local import start_worker, stop_process_group
from queues.pipelines import submit, wait
from queues.settings import Settings

from tests.helpers import pool_processes, remove_segments, slide_job_under_inference, worker_env


@pytest.fixture
def lone_worker(redis_server, project_triton, tmp_path):
    """One worker (one pool process) on a database of its own."""
    env = worker_env(redis_server.url.replace("/0", "/5"), f"chaos{uuid.uuid4().hex[:6]}", project_triton.url)
    settings = Settings.from_env(env)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "io,cpu,gpu", concurrency=1, host_id="host-a")
    try:
        yield env, settings, worker, log
    finally:
        stop_process_group(worker)
        redis.Redis.from_url(settings.redis_url).flushdb()
        remove_segments(settings)


def test_a_pool_process_killed_mid_stage_is_replaced_and_the_stage_redelivered(lone_worker, tmp_path):
    env, settings, worker, log = lone_worker
    jobs, job = slide_job_under_inference(settings, tmp_path, seed=5)
    [child] = pool_processes(worker)  # the pool process running the stage
    os.kill(child.pid, signal.SIGKILL)

    status = wait(jobs, job, 300)
    assert status.state == "done", (status, log.read_text()[-3000:])
    assert (tmp_path / "out" / "image.tif").is_file()
    text = log.read_text()
    assert "signal 9" in text or "WorkerLostError" in text  # it really died mid-stage
    assert [p.pid for p in pool_processes(worker)] != [child.pid]  # a new pool process took over
    # what the killed process had allocated was the job's, and went with it
    assert Registry(redis.Redis.from_url(settings.redis_url), settings.fastio_config()).live() == {}


def segment_files(config) -> set[str]:
    return {p.name for p in config.shm_dir.iterdir() if p.name.startswith(config.segment_prefix)}


def test_a_soak_of_200_small_jobs_loses_none(lone_worker, sample, tmp_path):
    env, settings, worker, log = lone_worker
    app = create_app(settings)
    jobs = JobStore(redis.Redis.from_url(settings.redis_url), settings.namespace, settings.job_ttl_s)
    submitted = [submit(app, settings, "fastio-itk", sample[0], tmp_path / f"out-{i}") for i in range(200)]
    finished = [wait(jobs, job, 300) for job in submitted]
    assert [s.state for s in finished].count("done") == 200, log.read_text()[-3000:]
    assert all((tmp_path / f"out-{i}" / "output.mhd").is_file() for i in range(200))
    registry = Registry(jobs.redis, settings.fastio_config())
    assert registry.live() == {} and segment_files(settings.fastio_config()) <= set(registry.pooled())


def test_a_whole_worker_killed_mid_stage_has_its_stage_requeued_not_stuck_running(lone_worker, tmp_path):
    env, settings, worker, log = lone_worker
    jobs, job = slide_job_under_inference(settings, tmp_path, seed=6)
    lost = jobs.get(job).worker
    os.killpg(worker.pid, signal.SIGKILL)  # parent and pool: nobody is left to put the message back
    worker.wait()
    time.sleep(1.0)
    assert jobs.get(job).state == "running"  # what Clara 0.8.1 left for ever

    # A worker starts again on the host; its janitor finds the dead one's heartbeat gone.
    fast = {**env, "CARINA_JANITOR_INTERVAL_S": "1", "CARINA_WORKER_HEARTBEAT_S": "1"}
    again = start_worker(fast, tmp_path / "again.log", "io,cpu,gpu", concurrency=1, host_id="host-a")
    try:
        status = wait(jobs, job, 180)
    finally:
        stop_process_group(again)
    assert status.state == "done", (status, (tmp_path / "again.log").read_text()[-3000:])
    assert status.requeues == 1 and status.worker != lost
    assert (tmp_path / "out" / "image.tif").is_file()


def test_a_redis_restart_during_a_job_loses_nothing(project_triton, tmp_path):
    from carina.local import LocalRedis

    server = LocalRedis(persistent=True).start()
    env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": f"rr{uuid.uuid4().hex[:6]}",
           "CARINA_SHM_DIR": "/dev/shm", "CARINA_HOST_ID": "host-a", "CARINA_TRITON_URL": project_triton.url}
    settings = Settings.from_env(env)
    worker = start_worker(env, tmp_path / "worker.log", "io,cpu,gpu", concurrency=1, host_id="host-a")
    try:
        jobs, job = slide_job_under_inference(settings, tmp_path, seed=8)
        server.restart(down_s=2.0)  # broker, results and registry all away for two seconds
        status = wait(jobs, job, 300)
        assert status.state == "done", (status, (tmp_path / "worker.log").read_text()[-3000:])
        assert (tmp_path / "out" / "image.tif").is_file()
        assert Registry(jobs.redis, settings.fastio_config()).live() == {}
        assert "Connection to broker lost" in (tmp_path / "worker.log").read_text()  # the restart was felt
    finally:
        stop_process_group(worker)
        server.stop()
        remove_segments(settings)


def test_a_stage_delivered_after_its_job_ended_is_dropped(deployment, sample, tmp_path):
    job = submit(deployment.app, deployment.settings, "fastio-itk", sample[0], tmp_path / "out")
    assert wait(deployment.jobs(), job, 60).state == "done"
    # What a lost acknowledgement brings back hours later: the job's first stage, again.
    stale = {"job": job, "pipeline": "fastio-itk", "input": str(sample[0]), "output": str(tmp_path / "again"),
             "config": None, "params": {}, "handles": {}, "trace": []}
    deployment.app.send_task("carina.fastio_itk.read_volume", args=(stale,), queue="io")
    deadline = time.monotonic() + 30
    while "redelivered late, dropped" not in deployment.log_tail():
        assert time.monotonic() < deadline, deployment.log_tail()
        time.sleep(0.2)
    assert deployment.jobs().get(job).state == "done" and not (tmp_path / "again").exists()


def test_submit_wait_rides_out_a_redis_restart(sample, tmp_path):
    from carina.local import LocalRedis

    server = LocalRedis(persistent=True).start()
    env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": f"ride{uuid.uuid4().hex[:6]}",
           "CARINA_SHM_DIR": "/dev/shm", "CARINA_HOST_ID": "host-a"}
    settings = Settings.from_env(env)
    follower = subprocess.Popen([sys.executable, "-m", "carina", "submit", "fastio-itk", "-i", str(sample[0]),
                                 "-o", str(tmp_path / "out"), "--wait"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        job = follower.stdout.readline().strip()  # queued; no worker yet, so it waits
        server.restart(down_s=3.0)
        worker = start_worker(env, tmp_path / "worker.log", "io,cpu", concurrency=1, host_id="host-a")
        _, stderr = follower.communicate(timeout=120)
        assert follower.returncode == 0, stderr
        assert f"done: {tmp_path / 'out'}" in stderr
        assert JobStore(redis.Redis.from_url(server.url), settings.namespace, settings.job_ttl_s).get(job).state == "done"
    finally:
        follower.kill()
        if worker is not None:
            stop_process_group(worker)
        server.stop()
        remove_segments(settings)


def test_a_stage_whose_process_dies_every_time_fails_its_job_at_the_bound(lone_worker, tmp_path):
    env, settings, worker, log = lone_worker
    jobs, job = slide_job_under_inference(settings, tmp_path, seed=12)
    registry = Registry(jobs.redis, settings.fastio_config())
    kills, held = 0, []
    deadline = time.monotonic() + 240
    while not jobs.get(job).finished:
        assert time.monotonic() < deadline, jobs.get(job)
        status = jobs.get(job)
        if status.deliveries == kills + 1 and status.progress_done > 0:  # this attempt is under way
            held.append(len(registry.job_segments(job)))
            for child in pool_processes(worker):
                os.kill(child.pid, signal.SIGKILL)
            kills += 1
        time.sleep(0.05)
    status = jobs.get(job)
    assert kills == settings.max_deliveries == 3
    assert status.state == "failed" and status.stage == "carina.nuclei.segment"
    assert "StageCrashed: carina.nuclei.segment started 3 times and its process died each time" in status.error
    # Each attempt held the tissue flags and its own staging buffer: a dead attempt's was freed.
    assert held == [2, 2, 2]
    assert registry.live() == {}


def test_a_redis_restart_while_a_stage_runs_leaves_every_worker_process_up(project_triton, tmp_path):
    """The stage runs on through the outage and finishes after the worker has reconnected; its
    acknowledgement on the channel the reconnect closed must not stop the worker, and the job
    completes."""
    from carina.local import LocalRedis

    server = LocalRedis(persistent=True).start()
    env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": f"ack{uuid.uuid4().hex[:6]}",
           "CARINA_SHM_DIR": "/dev/shm", "CARINA_HOST_ID": "host-a", "CARINA_TRITON_URL": project_triton.url}
    settings = Settings.from_env(env)
    slide = he_slide(tmp_path / "slide.tif", (8000, 10000), seed=13)  # about ten seconds of inference
    worker = start_worker(env, tmp_path / "worker.log", "io,cpu,gpu", concurrency=1, host_id="host-a")
    jobs = JobStore(redis.Redis.from_url(server.url), settings.namespace, settings.job_ttl_s)
    try:
        job = submit(create_app(settings), settings, "nuclei-seg", slide, tmp_path / "out", params={"num_workers": 1})
        deadline = time.monotonic() + 60
        while not (jobs.get(job).stage == "carina.nuclei.segment" and jobs.get(job).progress_done > 0):
            assert time.monotonic() < deadline, jobs.get(job)
            time.sleep(0.02)
        server.restart(down_s=1.0)
        status = wait(jobs, job, 120)
        log = (tmp_path / "worker.log").read_text()
        assert worker.poll() is None and "Unrecoverable error" not in log, log[-3000:]
        assert status.state == "done", (status, log[-3000:])
    finally:
        stop_process_group(worker)
        server.stop()
        remove_segments(settings)


def test_a_slide_whose_stage_is_lost_at_60_percent_resumes_from_its_last_checkpoint(lone_worker, tmp_path):
    import re

    import openslide

    from queues.connection import connect

    env, settings, worker, log = lone_worker
    shape, tile = (12288, 2048), 256
    rows = shape[0] // tile
    slide = he_slide(tmp_path / "slide.tif", shape, seed=7)
    jobs = JobStore(connect(settings, socket_timeout=5, socket_connect_timeout=2), settings.namespace,
                    settings.job_ttl_s)
    job = submit(create_app(settings), settings, "nuclei-seg", slide, tmp_path / "out", params={"num_workers": 1})
    deadline = time.monotonic() + 240
    while not ((s := jobs.get(job)).stage == "carina.nuclei.segment" and s.progress_total
               and s.progress_done >= 0.6 * s.progress_total):
        assert not s.finished and time.monotonic() < deadline, s
        time.sleep(0.01)
    [child] = pool_processes(worker)
    os.kill(child.pid, signal.SIGKILL)

    status = wait(jobs, job, 300)
    assert status.state == "done", (status, log.read_text()[-3000:])
    text = log.read_text()
    assert "signal 9" in text or "WorkerLostError" in text  # it really died mid-stage
    [resumed] = re.findall(r"pyramid resumed from \S+: (\d+) rows of tiles already written", text)
    # killed with 60 % or more of the tiles done, the retry did at most 45 % of them again
    assert 1 - int(resumed) / rows <= 0.45, (resumed, rows)
    with openslide.OpenSlide(tmp_path / "out" / "image.tif") as written:
        assert written.level_dimensions[0] == (shape[1], shape[0]) and written.level_count >= 3
    assert not list((tmp_path / "out").glob(".*checkpoints*"))  # the checkpoints went once it was whole
