"""``carina demo``: the product tour on generated data.

A private redis-server, Triton, a worker, Flower and the watch-folder daemon; every pipeline
submitted as an app would, plus one study dropped into the watch folder; a results table with
the Flower URL and the PNG previews; then everything is stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from fastio import drain_pool
from queues.app import create_app
from queues.jobs import JobStatus, JobStore
from queues.local import LocalRedis, free_port, start_worker, stop_process_group
from queues.pipelines import submit, wait
from queues.settings import Settings
from queues.triton import REPO_ROOT, LocalTriton
from queues.watch import DEFAULT_RULES, Watcher

JOB_TIMEOUT_S = 300
DROPPED = "dropped-abdomen.nii.gz"  # a copy of the spleen-seg sample, dropped into the inbox


@dataclass(frozen=True)
class DemoJob:
    pipeline: str
    sample: str  # folder or file under <out>/input
    sample_args: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    what: str = ""


DEMO_JOBS = (
    DemoJob("fastio-itk", "phantom.mhd", ("--shape", "64", "160", "160"),
            {"crop_start": [20, 30, 8], "crop_size": [120, 100, 48]}, "crop 120x100x48 from (20, 30, 8)"),
    DemoJob("3dblur", "ct-series", ("--dicom", "--shape", "48", "160", "160"),
            {"sigma_mm": 1.5}, "Gaussian, sigma 1.5 mm, DICOM in and out"),
    DemoJob("spleen-seg", "abdomen.nii.gz", ("--spleen", "--shape", "64", "256", "256"),
            {}, "96³ sliding-window UNet on a local Triton"),
    DemoJob("nuclei-seg", "slide.tif", ("--slide", "3000", "4000"),
            {}, "H&E slide: tissue tiles → nuclei UNet on Triton (Dask) → pyramidal image.tif"),
)


def run_demo(out: Path) -> bool:
    """Run every demo job; print where the results are. True if all of them succeeded."""
    for job in DEMO_JOBS:
        # A subprocess, so the front door's process never loads ITK or pydicom.
        subprocess.run([sys.executable, "-m", "ops.samples", "--output", str(out / "input" / job.sample),
                        *job.sample_args], check=True, stdout=subprocess.DEVNULL)
    print(f"generated samples in {out / 'input'}")
    results: list[tuple[DemoJob, JobStatus]] = []
    with LocalRedis() as server, LocalTriton(REPO_ROOT / "models") as triton:
        env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": "carina-demo",
               "CARINA_TRITON_URL": triton.url}
        settings = Settings.from_env(env)
        client = redis.Redis.from_url(server.url)
        print(f"redis at {server.url}, Triton at {triton.url}")
        worker = start_worker(env, out / "worker.log", "io,cpu,gpu", concurrency=2)
        flower_port = free_port()
        flower = start_flower(env, flower_port, out / "flower.log")
        inbox = out / "inbox"
        for folder in (inbox, out / "result-watch"):  # a fresh tour each time
            shutil.rmtree(folder, ignore_errors=True)
        inbox.mkdir(parents=True)
        app = create_app(settings)
        stop_watching = threading.Event()
        watcher = Watcher(inbox, out / "result-watch", DEFAULT_RULES, settings, app, client, stable_s=1.0)
        watching = threading.Thread(target=watcher.run, args=(stop_watching, 0.5), daemon=True)
        watching.start()
        print(f"Flower at http://127.0.0.1:{flower_port}/tasks (until the demo ends); watching {inbox}")
        try:
            jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
            submitted = [(job, submit(app, settings, job.pipeline, out / "input" / job.sample,
                                      out / f"result-{job.pipeline}", params=job.params)) for job in DEMO_JOBS]
            shutil.copyfile(out / "input" / "abdomen.nii.gz", inbox / DROPPED)
            print(f"dropped {DROPPED} into {inbox}")
            for job, job_id in submitted:
                print(f"{job.pipeline} job {job_id}: {job.what}")
                results.append((job, wait(jobs, job_id, JOB_TIMEOUT_S,
                                          on_change=lambda s: print(f"  {s.state:8} {s.stage}", flush=True))))
            results.append((DemoJob("spleen-seg", DROPPED, (), what="from the watch folder"),
                            wait_for_drop(watcher, inbox / DROPPED, jobs)))
        finally:
            stop_watching.set()
            watching.join(timeout=10)
            stop_process_group(flower)
            stop_process_group(worker, grace_s=30)
            drain_pool(client, settings.fastio_config())
            client.close()
    print(f"\n{'pipeline':12} {'state':8} output")
    for job, status in results:
        print(f"{job.pipeline:12} {status.state:8} {status.output or status.error or 'timed out'}")
        if status.state == "done":
            files = sorted(Path(status.output).iterdir())
            for path in files[:4]:
                print(f"{'':22}{path.name:20} {path.stat().st_size:>10} bytes")
            if len(files) > 4:
                print(f"{'':22}… and {len(files) - 4} more files")
    previews = sorted(out.glob("result-*/**/*.png"))
    print("\npreviews:\n" + "\n".join(f"  {p}" for p in previews))
    ok = all(status.state == "done" for _, status in results)
    if not ok:
        print(f"worker log: {out / 'worker.log'}")
    return ok


def start_flower(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """``carina flower`` on 127.0.0.1:``port`` (no credentials: loopback only), logging to ``log``."""
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "queues.cli", "flower", "--port", str(port)],
                                env={**env, "CARINA_FLOWER_AUTH": ""}, stdout=stream, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_drop(watcher: Watcher, entry: Path, jobs: JobStore) -> JobStatus:
    """The status of the job the watcher started for ``entry``, once it has ended."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    job_id = None
    while job_id is None and time.monotonic() < deadline:
        job_id = watcher.records().get(entry.name, {}).get("job")
        time.sleep(0.2)
    if job_id is None:
        return JobStatus(job_id="", pipeline="?", state="failed", stages=[], error="the watcher started no job")
    status = wait(jobs, job_id, max(1.0, deadline - time.monotonic()))
    while entry.exists() and time.monotonic() < deadline:  # filed into done/ or failed/
        time.sleep(0.2)
    return status
