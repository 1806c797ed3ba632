"""Cancelling jobs on real workers: from the front door, the CLI and the API."""

from __future__ import annotations

import subprocess
import sys
import time

from fastio.registry import Registry
from queues.jobs import CANCELLED
from queues.pipelines import cancel, submit, wait


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_running_job_is_stopped_its_memory_freed_and_nothing_written(deployment, tmp_path):
    from ops.samples import he_slide

    slide = he_slide(tmp_path / "slide.tif", (3000, 4000), seed=21)
    jobs = deployment.jobs()
    job = submit(deployment.app, deployment.settings, "nuclei-seg", slide, tmp_path / "out",
                 params={"num_workers": 1})
    wait_for(lambda: jobs.get(job).stage == "carina.nuclei.segment" and jobs.get(job).progress_done > 0, 120,
             "inference never started")
    cancel(deployment.app, deployment.settings, job, by="radiologist@pacs")

    status = wait(jobs, job, 60)
    assert status.state == CANCELLED and status.stage == "carina.nuclei.segment"
    assert status.error.startswith("Cancelled by radiologist@pacs at ")
    assert not (tmp_path / "out" / "image.tif").exists()
    for host in ("host-a", "host-b"):
        assert job not in Registry(deployment.client(), deployment.settings_for(host).fastio_config()).live().values()
    # The worker whose stage was stopped goes on taking jobs.
    assert len(deployment.app.control.ping(timeout=5)) == len(deployment.logs)
    again = submit(deployment.app, deployment.settings, "fastio-itk", slide.parent / "missing.mhd", tmp_path / "x")
    assert wait(jobs, again, 60).state == "failed"


def test_a_queued_job_cancelled_from_the_cli_never_runs(deployment, tmp_path):
    from ops.samples import he_slide

    slide = he_slide(tmp_path / "slide.tif", (1000, 1000), seed=22)
    control = deployment.app.control
    assert len(control.cancel_consumer("cpu", reply=True, timeout=10)) == len(deployment.logs)
    try:
        job = submit(deployment.app, deployment.settings, "nuclei-seg", slide, tmp_path / "out")
        done = subprocess.run([sys.executable, "-m", "carina", "cancel", job, "--wait"], env=deployment.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == f"{job}: cancelled", done.stderr
    finally:
        control.add_consumer("cpu", reply=True, timeout=10)
    # Its first stage, queued all along, is dropped when a worker takes it.
    wait_for(lambda: "redelivered late, dropped" in deployment.log_tail() and job in deployment.log_tail(), 60,
             "the queued stage was not dropped")
    status = deployment.jobs().get(job)
    assert status.state == CANCELLED and "(carina cancel)" in status.error
    assert not (tmp_path / "out").exists()
    again = subprocess.run([sys.executable, "-m", "carina", "cancel", job], env=deployment.env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == f"{job}: cancelled already"
