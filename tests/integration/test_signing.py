"""Signed messages: the workers run only what a trusted key signed. Messages are pushed
straight into Redis, as anyone with the Redis password could."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from queues import signing
from queues.errors import ConfigError, UnknownJob
from queues.settings import Settings

from tests.helpers import assert_no_memory_held, digest


def forge(app: Celery, sample, tmp_path) -> None:
    payload = {"job": "forged-job", "pipeline": "fastio-itk", "input": str(sample[0]), "output": str(tmp_path / "out"),
               "config": None, "params": {}, "handles": {}, "trace": [], "restarts": 0}
    app.send_task("carina.fastio_itk.read_volume", args=[payload], queue="io")


def assert_refused(deployment, send, marker: str, tmp_path, job_recorded: bool = False) -> None:
    """After ``send()``, a worker logs ``marker`` and nothing runs: no output, no memory held,
    and no record of the forged job (unless a front door recorded it: ``job_recorded``)."""
    before = deployment.log_tail(10**7).count(marker)
    send()
    deadline = time.monotonic() + 30
    while deployment.log_tail(10**7).count(marker) == before:
        assert time.monotonic() < deadline, deployment.log_tail()
        time.sleep(0.2)
    time.sleep(1.0)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    if not job_recorded:
        with pytest.raises(UnknownJob):
            deployment.jobs().get("forged-job")
    assert_no_memory_held(deployment)


def test_an_unsigned_message_is_refused_and_nothing_runs(deployment, sample, tmp_path):
    url = deployment.settings.redis_url
    forger = Celery("forger", broker=url, backend=url)
    forger.conf.update(task_serializer="json", accept_content=["json"])
    assert_refused(deployment, lambda: forge(forger, sample, tmp_path),
                   "Refusing to deserialize untrusted content of type json", tmp_path)


def test_a_message_signed_by_a_key_the_store_does_not_trust_is_refused(deployment, sample, tmp_path):
    # A process signs with one key (Celery's auth serializer is process-wide): the CLI, with its own.
    keys = tmp_path / "stranger"
    signing.make_keys(keys, name="stranger")
    env = {**deployment.env, **signing.environment(keys)}
    submitted = []

    def send() -> None:
        cli = subprocess.run([sys.executable, "-m", "carina", "submit", "fastio-itk", "-i", str(sample[0]), "-o",
                              str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
        submitted.append(cli.stdout.strip())

    assert_refused(deployment, send, "Unknown certificate", tmp_path, job_recorded=True)
    assert deployment.jobs().get(submitted[0]).state == "queued"  # its front door recorded it; no stage ran


def test_signing_settings_go_together():
    with pytest.raises(ConfigError, match="go together"):
        signing.signing_enabled(dataclasses.replace(Settings(), signing_key=Path("k")))


def test_a_replayed_signed_message_acts_on_nothing(deployment, sample, tmp_path):
    """A genuine message captured from Redis and pushed again once its job is done: its
    signature is good, and the lifecycle drops it (the job has ended); nothing is rewritten."""
    from queues.broker import priority_lists
    from queues.pipelines import submit, wait

    client = deployment.client()
    job = submit(deployment.app, deployment.settings, "fastio-itk", sample[0], tmp_path / "out", host="host-z")
    [held] = [name for name in priority_lists("io.host-z") if client.llen(name)]  # no worker of host-z
    captured = client.lindex(held, 0)
    client.delete(held)
    client.lpush(held.replace("io.host-z", "io"), captured)  # delivered where a worker reads
    assert wait(deployment.jobs(), job, 60).state == "done"
    before = digest(tmp_path / "out")
    replays = deployment.log_tail(10**7).count("redelivered late, dropped")
    client.lpush(held.replace("io.host-z", "io"), captured)
    deadline = time.monotonic() + 30
    while deployment.log_tail(10**7).count("redelivered late, dropped") == replays:
        assert time.monotonic() < deadline, deployment.log_tail()
        time.sleep(0.2)
    assert digest(tmp_path / "out") == before and deployment.jobs().get(job).state == "done"
    assert_no_memory_held(deployment)


def test_a_signed_message_whose_payload_is_altered_to_name_another_job_is_refused(deployment, sample, tmp_path):
    """A genuine message with its payload changed to name another job (the forger's way to
    write that job's volume where it likes): the signature no longer matches, nothing runs."""
    import base64
    import json

    from queues.broker import priority_lists
    from queues.pipelines import submit

    client = deployment.client()
    job = submit(deployment.app, deployment.settings, "fastio-itk", sample[0], tmp_path / "out", host="host-z")
    [held] = [name for name in priority_lists("io.host-z") if client.llen(name)]  # no worker of host-z
    message = json.loads(client.lindex(held, 0))
    client.delete(held)
    signed = base64.b64decode(base64.b64decode(message["body"]))
    other = "0" * len(job)
    assert job.encode() in signed  # the payload names it (and the last stage takes it as its task id)
    message["body"] = base64.b64encode(base64.b64encode(signed.replace(job.encode(), other.encode()))).decode()
    assert_refused(deployment, lambda: client.lpush(held.replace("io.host-z", "io"), json.dumps(message)),
                   "Bad signature", tmp_path, job_recorded=True)
    with pytest.raises(UnknownJob):
        deployment.jobs().get(other)
    assert deployment.jobs().get(job).state == "queued"  # no stage of it ran either
