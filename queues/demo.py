"""``carina demo``: a private redis-server, Triton and worker; every pipeline on generated data."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from fastio import drain_pool
from queues.app import create_app
from queues.jobs import JobStatus, JobStore
from queues.local import LocalRedis, start_worker, stop_process_group
from queues.pipelines import submit, wait
from queues.settings import Settings
from queues.triton import REPO_ROOT, LocalTriton

JOB_TIMEOUT_S = 300


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
        try:
            app = create_app(settings)
            jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
            submitted = [(job, submit(app, settings, job.pipeline, out / "input" / job.sample,
                                      out / f"result-{job.pipeline}", params=job.params)) for job in DEMO_JOBS]
            for job, job_id in submitted:
                print(f"{job.pipeline} job {job_id}: {job.what}")
                results.append((job, wait(jobs, job_id, JOB_TIMEOUT_S,
                                          on_change=lambda s: print(f"  {s.state:8} {s.stage}", flush=True))))
        finally:
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
    ok = all(status.state == "done" for _, status in results)
    if not ok:
        print(f"worker log: {out / 'worker.log'}")
    return ok
