"""A message the broker lost (kombu's BRPOP took it off its list and the reply never came):
the job, which would wait for ever, starts again from its input. A message that merely
waits in its queue is left alone. A message stranded unacknowledged (its consumer gone with
Redis down) goes back on its queue."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from carina.local import start_worker, stop_process_group
from ops.volume import write_volume
from queues.app import create_app
from queues.broker import UNACKED_INDEX_KEY, UNACKED_KEY, priority_lists
from queues.jobs import JobStore
from queues.pipelines import submit, wait
from queues.settings import Settings
from tests.helpers import GEOMETRY, wait_until, worker_env

LOST_AFTER_S = 2.0


@pytest.fixture
def stack(redis_server, tmp_path):
    """One io+cpu worker of host-a on a database of its own, its janitor every second, a
    message taken as lost after 2 s."""
    url = redis_server.url.replace("/0", "/12")
    shm = tempfile.mkdtemp(prefix="carina-lostmsg-", dir="/dev/shm")
    env = worker_env(url, f"lostmsg{uuid.uuid4().hex[:6]}", "127.0.0.1:1", shm_dir=shm,
                     CARINA_JANITOR_INTERVAL_S="1", CARINA_LOST_MESSAGE_S=str(LOST_AFTER_S))
    worker = start_worker(env, tmp_path / "worker.log", "io,cpu", concurrency=1, host_id="host-a")
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(url)
    try:
        yield settings, create_app(settings), JobStore(client, settings.namespace, settings.job_ttl_s), tmp_path
    finally:
        stop_process_group(worker)
        client.flushdb()
        shutil.rmtree(shm, ignore_errors=True)


def volume(folder: Path) -> Path:
    return write_volume(np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8), GEOMETRY, folder / "in" / "ct.mhd")


def take_message(client: redis.Redis, queue: str) -> None:
    """Remove the one message waiting in ``queue``, as a BRPOP whose reply was lost does."""
    [held] = [name for name in priority_lists(queue) if client.llen(name)]
    client.delete(held)


def test_a_lost_first_message_starts_the_job_again_and_a_waiting_one_does_not(stack):
    settings, app, jobs, tmp_path = stack
    control = app.control
    assert control.cancel_consumer("io", reply=True, timeout=10)  # the first stage waits in its queue
    try:
        job = submit(app, settings, "fastio-itk", volume(tmp_path), tmp_path / "out")
        time.sleep(LOST_AFTER_S + 2.5)  # two janitor passes past the bound
        assert jobs.get(job).state == "queued" and jobs.get(job).restarts == 0  # waiting is not lost
        take_message(jobs.redis, "io")
    finally:
        control.add_consumer("io", reply=True, timeout=10)
    status = wait(jobs, job, 60)
    assert status.state == "done" and status.restarts == 1, status
    assert "was lost by the broker" in (tmp_path / "worker.log").read_text()
    assert (tmp_path / "out" / "output.mhd").exists()


def second_message_mishandled(stack, mishap: Callable[[redis.Redis, str], None]) -> str:
    """Submit a fastio-itk job, let ``mishap`` befall its second stage's message as it waits in
    host-a's cpu queue, and return the job's id."""
    settings, app, jobs, tmp_path = stack
    control = app.control
    assert control.cancel_consumer("cpu.host-a", reply=True, timeout=10)  # the second stage waits
    try:
        job = submit(app, settings, "fastio-itk", volume(tmp_path), tmp_path / "out")
        wait_until(lambda: jobs.get(job).awaiting_index == 2, 30, "the first stage done")
        wait_until(lambda: any(jobs.redis.llen(n) for n in priority_lists("cpu.host-a")), 10, "the second queued")
        mishap(jobs.redis, "cpu.host-a")
    finally:
        control.add_consumer("cpu.host-a", reply=True, timeout=10)
    return job


def test_a_lost_message_between_two_stages_starts_the_job_again(stack):
    _, _, jobs, tmp_path = stack
    status = wait(jobs, second_message_mishandled(stack, take_message), 60)
    assert status.state == "done" and status.restarts == 1, status
    assert "stage carina.fastio_itk.filter_volume was lost by the broker" in (tmp_path / "worker.log").read_text()


def strand_message(client: redis.Redis, queue: str) -> None:
    """Move the one message waiting in ``queue`` to the broker's unacknowledged set, delivered
    now: what a consumer leaves there when its connection drops and Redis is down as it tries
    to put it back."""
    [held] = [name for name in priority_lists(queue) if client.llen(name)]
    message = json.loads(client.rpop(held))
    info = message["properties"]["delivery_info"]
    tag = message["properties"]["delivery_tag"]
    client.hset(UNACKED_KEY, tag, json.dumps([message, info["exchange"], info["routing_key"]]))
    client.zadd(UNACKED_INDEX_KEY, {tag: time.time()})


def test_a_message_stranded_unacknowledged_goes_back_on_its_queue(stack):
    _, _, jobs, tmp_path = stack
    status = wait(jobs, second_message_mishandled(stack, strand_message), 60)
    assert status.state == "done" and status.restarts == 0 and status.requeues == 1, status
    assert "stage carina.fastio_itk.filter_volume was delivered" in (tmp_path / "worker.log").read_text()
    assert (tmp_path / "out" / "output.mhd").exists()
