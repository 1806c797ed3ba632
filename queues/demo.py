"""``carina demo``: a private redis-server and worker, the pipelines on generated data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from fastio import drain_pool
from queues.app import create_app
from queues.jobs import JobStore
from queues.local import LocalRedis, start_worker, stop_process_group
from queues.pipelines import submit, wait
from queues.settings import Settings

JOB_TIMEOUT_S = 300


def run_demo(out: Path) -> bool:
    """Run every demo job; print where the results are. True if all of them succeeded."""
    sample = out / "input" / "phantom.mhd"
    # A subprocess, so the front door's process never loads ITK.
    subprocess.run([sys.executable, "-m", "ops.samples", "--output", str(sample)], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"sample CT phantom: {sample}")
    with LocalRedis() as server:
        env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": "carina-demo"}
        settings = Settings.from_env(env)
        client = redis.Redis.from_url(server.url)
        worker = start_worker(env, out / "worker.log", "io,cpu", concurrency=2)
        try:
            app = create_app(settings)
            job_id = submit(app, settings, "fastio-itk", sample, out / "result",
                            params={"crop_start": [20, 30, 8], "crop_size": [120, 100, 48]})
            print(f"submitted fastio-itk job {job_id} (crop 120x100x48 from 20,30,8)")
            status = wait(JobStore(client, settings.namespace, settings.job_ttl_s), job_id, JOB_TIMEOUT_S,
                          on_change=lambda s: print(f"  {s.state:8} {s.stage}", flush=True))
        finally:
            stop_process_group(worker, grace_s=30)
            drain_pool(client, settings.fastio_config())
            client.close()
    if status.state != "done":
        print(f"demo job {status.state}: {status.error or 'timed out'} (worker log: {out / 'worker.log'})")
        return False
    print(f"done. output in {out / 'result'}:")
    for path in sorted((out / "result").iterdir()):
        print(f"  {path.name:20} {path.stat().st_size:>10} bytes")
    return True
