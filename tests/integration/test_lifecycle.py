"""The job lifecycle on real workers: a job whose ending process died mid-way is ended by the
next delivery of its stage, in the one order (memory freed, then the state recorded)."""

from __future__ import annotations

import time

import numpy as np

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
