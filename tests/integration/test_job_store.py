"""The job store: records, the bounded index, counts in proportion to the jobs under way."""

from __future__ import annotations

import time

import pytest

from queues.jobs import DONE, FAILED, QUEUED, RUNNING, JobStore


@pytest.fixture
def jobs(redis_client):
    return JobStore(redis_client, "js", ttl_s=3600)


def test_an_ended_job_leaves_the_active_set_and_is_counted_by_pipeline_and_state(jobs):
    for n in range(3):
        jobs.create(f"j{n}", "3dblur", ["a", "b"], {})
    jobs.stage_started("j0", "a", 1)
    assert jobs.active() == {"j0": ("3dblur", RUNNING), "j1": ("3dblur", QUEUED), "j2": ("3dblur", QUEUED)}
    assert jobs.end("j1", DONE, output="/out") is True
    assert jobs.end("j2", FAILED, stage="b", error="boom") is True
    assert jobs.running() == ["j0"]
    assert jobs.counts() == {("3dblur", RUNNING): 1, ("3dblur", DONE): 1, ("3dblur", FAILED): 1}
    assert jobs.get("j1").output == "/out" and jobs.get("j2").error == "boom"


def test_the_first_end_stands(jobs):
    jobs.create("j", "fastio-itk", ["a"], {})
    assert jobs.end("j", FAILED, stage="a", error="first")
    assert not jobs.end("j", DONE, output="/late")
    jobs.stage_started("j", "a", 1)  # a late stage does not revive it
    status = jobs.get("j")
    assert (status.state, status.error, status.output) == (FAILED, "first", "")
    assert jobs.counts() == {("fastio-itk", FAILED): 1}


def test_an_unknown_job_cannot_end(jobs):
    assert jobs.end("nobody", DONE, output="/x") is False
    with pytest.raises(ValueError):
        jobs.end("nobody", RUNNING)


def test_expired_jobs_leave_every_index(redis_client):
    jobs = JobStore(redis_client, "short", ttl_s=1)
    jobs.create("old", "3dblur", ["a"], {})
    jobs.create("old-active", "3dblur", ["a"], {})
    jobs.end("old", DONE, output="/o")
    time.sleep(1.2)
    jobs.create("new", "3dblur", ["a"], {})
    assert jobs.recent(10) == ["new"]
    assert jobs.active() == {"new": ("3dblur", QUEUED)}
    assert jobs.counts() == {("3dblur", QUEUED): 1}
    assert redis_client.zcard(jobs.index) == 1
    assert redis_client.zcard(jobs.active_index) == 1
    assert redis_client.zcard(jobs.ended_key(DONE, "3dblur")) == 0


def test_a_restart_is_taken_once_and_drops_the_messages_of_the_run_before(jobs):
    from queues.jobs import MOVED_PAST

    jobs.create("j", "3dblur", ["a", "b"], {}, origin={"job": "j", "input": "/in"}, host="host-a")
    jobs.stage_started("j", "a", 1, attempt="t1/0")
    jobs.stage_started("j", "b", 2, attempt="t2/0")
    assert jobs.restart("j", restarts=0) is True
    assert jobs.restart("j", restarts=0) is False  # a second janitor that read the same record
    status = jobs.get("j")
    assert (status.state, status.stage_index, status.restarts) == (QUEUED, 0, 1)
    assert status.origin == {"job": "j", "input": "/in"} and status.host == "host-a"
    assert jobs.stage_started("j", "b", 2, attempt="t2/0", restarts=0) == MOVED_PAST  # the lost host's
    assert jobs.stage_started("j", "a", 1, attempt="t3/0", restarts=1) == 1  # the new run's
    jobs.end("j", DONE, output="/out")
    assert jobs.restart("j", restarts=1) is False  # an ended job stays ended
