"""The job lifecycle on real workers and the real janitor: every path that ends a job frees its
memory, then records why (an end interrupted half-way, a worker lost for good, a lease expired)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest

from fastio import FastIOContext
from fastio.registry import Registry
from queues.jobs import DONE
from queues.payload import first_payload

STAGES = ["carina.fastio_itk.read_volume", "carina.fastio_itk.filter_volume", "carina.fastio_itk.write_volume"]


def test_a_stage_redelivered_while_its_job_was_ending_completes_that_end(deployment, tmp_path):
    jobs, config = deployment.jobs(), deployment.settings_for("host-a").fastio_config()
    job_id = "ending-job"
    jobs.create(job_id, "fastio-itk", STAGES, {})
    FastIOContext(deployment.client(), job_id, config).publish_array(np.ones((2, 3, 4), np.int16),
                                                                     "fastio_itk_filtered", {})
    # The last stage's process noted the end and died before freeing the memory.
    jobs.ending(job_id, DONE, output=str(tmp_path / "out"))
    payload = first_payload(job_id, "fastio-itk", "", str(tmp_path / "out"), None, {})
    payload["handles"] = {"fastio_itk_filtered": "fastio_itk_filtered"}
    deployment.app.send_task(STAGES[-1], args=[payload], queue="io.host-a")

    deadline = time.monotonic() + 30
    while not jobs.get(job_id).finished:
        assert time.monotonic() < deadline, deployment.log_tail()
        time.sleep(0.1)
    status = jobs.get(job_id)
    assert (status.state, status.output) == (DONE, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # the stage did not run again
    assert job_id not in Registry(deployment.client(), config).live().values()


def janitor_once(deployment, **env) -> str:
    done = subprocess.run([sys.executable, "-m", "carina", "janitor"], env={**deployment.env, **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def running_job_holding_memory(deployment, job_id: str, worker: str, requeues: int = 0, lease_s: float | None = None):
    jobs, config = deployment.jobs(), deployment.settings_for("host-a").fastio_config()
    if lease_s is not None:
        config = dataclasses.replace(config, lease_s=lease_s)
    jobs.create(job_id, "fastio-itk", STAGES, {})
    if requeues:
        jobs.requeued(job_id, requeues)
    jobs.stage_started(job_id, STAGES[1], 2, task_id=f"{job_id}-task", worker=worker)
    FastIOContext(deployment.client(), job_id, config).publish_array(np.ones(64, np.uint8), "fastio_itk", {})
    return jobs, Registry(deployment.client(), config)


@pytest.mark.parametrize("requeues, reason", [(3, "(4 times)"), (0, "its message was not found to requeue")])
def test_a_job_whose_worker_was_lost_for_good_is_failed_with_its_memory_freed(deployment, requeues, reason):
    job_id = f"lost-{requeues}"
    jobs, registry = running_job_holding_memory(deployment, job_id, "ghost-0000@host-a", requeues)
    janitor_once(deployment)
    status = jobs.get(job_id)
    assert status.state == "failed" and status.error.startswith("WorkerLost: worker ghost-0000@host-a was lost")
    assert reason in status.error and status.stage == STAGES[1]
    assert job_id not in registry.live().values()  # freed now, not when the 6 h lease runs out


def test_a_job_whose_memory_lease_expired_is_failed(deployment):
    jobs, registry = running_job_holding_memory(deployment, "expired-lease", "", lease_s=0.1)
    time.sleep(0.3)
    assert "expired jobs 1" in janitor_once(deployment)
    status = jobs.get("expired-lease")
    assert status.state == "failed" and status.error.startswith("LeaseExpired")
    assert "expired-lease" not in registry.live().values()
