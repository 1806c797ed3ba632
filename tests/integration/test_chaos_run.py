"""The chaos run behind the README's fault figures, on every pipeline: each figure is asserted
here and printed as the README quotes it."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
import uuid

import numpy as np
import psutil
import pytest
import redis

from carina.local import LocalRedis, start_worker, stop_process_group
from fastio import sweep
from fastio.registry import Registry
from ops.samples import ct_phantom, ct_series, he_slide, spleen_phantom
from ops.volume import write_volume
from queues.app import create_app
from queues.jobs import JobStore
from queues.pipelines import submit, wait
from queues.settings import Settings

from tests.helpers import GEOMETRY, pool_processes, remove_segments, wait_until, worker_env

PIPELINES = ("fastio-itk", "3dblur", "spleen-seg", "nuclei-seg")
# The stages that count units of work: there, "mid-stage" is "some windows or tiles done".
COUNTING = {"spleen-seg": "carina.segmentation.infer", "nuclei-seg": "carina.nuclei.segment"}
PARAMS = {"nuclei-seg": {"overlap": 16, "num_workers": 1}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One input per pipeline, large enough that its stages take a while on a CI core."""
    root = tmp_path_factory.mktemp("chaos-inputs")
    volume = (np.arange(96 * 384 * 384, dtype=np.int64) % 2000 - 1000).astype(np.int16).reshape(96, 384, 384)
    ct, _ = spleen_phantom((72, 224, 224), (1.4, 1.4, 2.5), seed=900_004)
    ct_series(root / "study", ct_phantom((48, 192, 192), seed=4), GEOMETRY)
    return {"fastio-itk": write_volume(volume, GEOMETRY, root / "mhd" / "ct.mhd"),
            "3dblur": root / "study",
            "spleen-seg": write_volume(ct, GEOMETRY, root / "patient" / "ct.nii.gz"),
            "nuclei-seg": he_slide(root / "slide.tif", (3000, 4000), seed=21)}


def start_stack(server: LocalRedis, triton_url: str, tmp_path, name: str):
    # A message the broker loses as Redis restarts (off its list, the BRPOP's reply lost) is
    # taken as lost after 10 s: its job starts again.
    env = worker_env(server.url, f"{name}{uuid.uuid4().hex[:6]}", triton_url, CARINA_JANITOR_INTERVAL_S="1",
                     CARINA_LOST_MESSAGE_S="10")
    settings = Settings.from_env(env)
    worker = start_worker(env, tmp_path / "worker.log", "io,cpu,gpu", concurrency=1, host_id="host-a")
    return settings, worker, JobStore(redis.Redis.from_url(server.url), settings.namespace, settings.job_ttl_s)


def under_way(jobs: JobStore, job: str, pipeline: str) -> bool:
    status = jobs.get(job)
    if pipeline in COUNTING:
        return status.stage == COUNTING[pipeline] and status.progress_done > 0
    return status.state == "running"


def assert_nothing_held(jobs: JobStore, settings: Settings) -> None:
    """0 segments in use, and every file left in /dev/shm a free one of the pool."""
    config = dataclasses.replace(settings.fastio_config(), orphan_grace_s=0.0)
    sweep(jobs.redis, config)
    registry = Registry(jobs.redis, config)
    files = {p.name for p in config.shm_dir.iterdir() if p.name.startswith(config.segment_prefix)}
    assert registry.live() == {} and files <= set(registry.pooled())


@pytest.mark.timeout(900)  # a job whose message a restart lost takes CARINA_LOST_MESSAGE_S more
def test_redis_restarted_mid_stage_ten_times_every_job_done_no_worker_exits(project_triton, inputs, tmp_path):
    server = LocalRedis(persistent=True).start()
    settings, worker, jobs = start_stack(server, project_triton.url, tmp_path, "rr10")
    app = create_app(settings)
    try:
        states, stages, ids = [], [], []
        for n in range(10):
            pipeline = PIPELINES[n % len(PIPELINES)]
            job = submit(app, settings, pipeline, inputs[pipeline], tmp_path / f"out-{n}",
                         params=PARAMS.get(pipeline))
            wait_until(lambda: under_way(jobs, job, pipeline), 120, f"{pipeline} under way", poll_s=0.01)
            stages.append(jobs.get(job).stage)
            server.restart(down_s=1.0)
            states.append(wait(jobs, job, 240).state)
            ids.append(job)
        log = (tmp_path / "worker.log").read_text()
        exits = log.count("Unrecoverable error") + (worker.poll() is not None)
        restarted = sum(jobs.get(job).restarts for job in ids)
        put_back = sum(jobs.get(job).requeues for job in ids)
        print(f"\nRedis restarted mid-stage 10 times: {states.count('done')} of 10 jobs done, {exits} worker exits, "
              f"{restarted} started again after a lost message, {put_back} put back after a stranded one "
              f"(stages hit: {sorted(set(stages))})")
        assert states == ["done"] * 10 and exits == 0, log[-3000:]
        assert all(any((tmp_path / f"out-{n}").iterdir()) for n in range(10))
        assert_nothing_held(jobs, settings)
    finally:
        stop_process_group(worker)
        server.stop()
        remove_segments(settings)


def test_pool_processes_killed_at_random_every_job_done(project_triton, inputs, tmp_path):
    """24 jobs (21 fastio-itk, one of each other pipeline) and at least 8 pool processes killed
    at random moments. A stage is not killed past CARINA_MAX_DELIVERIES - 1 starts: one that
    dies every time fails by design (tests/integration/test_chaos.py)."""
    server = LocalRedis(persistent=True).start()
    settings, worker, jobs = start_stack(server, project_triton.url, tmp_path, "kill")
    app = create_app(settings)
    try:
        plan = ["fastio-itk"] * 21 + ["3dblur", "spleen-seg", "nuclei-seg"]
        random.Random(3).shuffle(plan)
        submitted = [submit(app, settings, p, inputs[p], tmp_path / f"out-{n}", params=PARAMS.get(p))
                     for n, p in enumerate(plan)]
        celery_workers = psutil.Process(worker.pid).children()
        rng, kills = random.Random(11), 0
        deadline = time.monotonic() + 250
        while not all(jobs.get(job).finished for job in submitted):
            assert time.monotonic() < deadline, [jobs.get(job).state for job in submitted]
            time.sleep(rng.uniform(0.1, 0.6))
            running = [jobs.get(job) for job in jobs.running() if job in submitted]
            if kills < 12 and running and all(s.deliveries < settings.max_deliveries - 1 for s in running):
                for child in pool_processes(worker):
                    os.kill(child.pid, signal.SIGKILL)
                    kills += 1
        finished = [jobs.get(job) for job in submitted]
        counts = {state: sum(s.state == state for s in finished) for state in ("done", "failed", "running")}
        print(f"\npool processes killed at random ({len(plan)} jobs, {kills} kills): {counts['done']} done, "
              f"{counts['failed']} failed, {counts['running']} running")
        assert counts == {"done": 24, "failed": 0, "running": 0}, [(s.state, s.error) for s in finished]
        assert kills >= 8 and psutil.Process(worker.pid).children() == celery_workers  # 0 worker exits
        assert_nothing_held(jobs, settings)
    finally:
        stop_process_group(worker)
        server.stop()
        remove_segments(settings)


def test_a_whole_worker_killed_for_good_another_alive_the_job_completes(project_triton, inputs, tmp_path):
    server = LocalRedis(persistent=True).start()
    settings, first, jobs = start_stack(server, project_triton.url, tmp_path, "whole")
    env = worker_env(server.url, settings.namespace, project_triton.url, CARINA_JANITOR_INTERVAL_S="1")
    second = start_worker(env, tmp_path / "second.log", "io,cpu,gpu", concurrency=1, host_id="host-a")
    workers = [first, second]
    try:
        job = submit(create_app(settings), settings, "nuclei-seg", inputs["nuclei-seg"], tmp_path / "out",
                     params=PARAMS["nuclei-seg"])
        wait_until(lambda: under_way(jobs, job, "nuclei-seg"), 120, "under inference", poll_s=0.02)
        node = jobs.get(job).worker
        [running] = [w for w in workers if any(node in " ".join(c.cmdline()) for c in psutil.Process(w.pid).children())]
        os.killpg(running.pid, signal.SIGKILL)  # supervisor, worker and pool: nobody restarts it
        running.wait()
        status = wait(jobs, job, 240)
        print(f"\na whole worker killed and not restarted, another alive: the job {status.state}")
        assert status.state == "done" and status.requeues == 1 and status.worker != node, status
        assert_nothing_held(jobs, settings)
    finally:
        for worker in workers:
            stop_process_group(worker)
        server.stop()
        remove_segments(settings)
