"""Monitoring against the real deployment: carina health, the Prometheus metrics, Flower's credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from base64 import b64encode

import redis

from monitoring.health import check_all
from monitoring.metrics import dumps
from queues.app import create_app
from carina.local import free_port, stop_process_group
from queues.pipelines import submit, wait
from queues.settings import Settings

from tests.helpers import http_get



def carina(*args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "carina", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one series in Prometheus text (labels in any order), or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for series in family.samples:
            if series.name == name and series.labels == labels:
                return series.value
    return None


def test_health_finds_every_part_and_names_what_is_missing(deployment):
    checks = {c.name: c for c in check_all(deployment.settings_for("host-a"), deployment.app)}
    assert all(c.ok for c in checks.values()), checks
    assert "host-a" in checks["workers"].detail and "host-b" in checks["workers"].detail

    dead = {**deployment.env, "CARINA_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "CARINA_TRITON_URL": f"127.0.0.1:{free_port()}"}
    result = carina("health", "--json", "--timeout", "1", env=dead)
    assert result.returncode == 1
    found = {c["name"]: c for c in json.loads(result.stdout)}
    assert not found["redis"]["ok"] and not found["triton"]["ok"]
    assert found["workers"]["detail"] == "not asked: Redis is unreachable"


def test_metrics_count_jobs_stages_and_memory(deployment, sample, tmp_path):
    settings = deployment.settings_for("host-a")
    job = submit(deployment.app, settings, "fastio-itk", sample[0], tmp_path / "out", host="host-a")
    assert wait(deployment.jobs(), job, 60).state == "done"
    text = dumps(settings, deployment.client())
    assert metric(text, "carina_up") == 1
    assert metric(text, "carina_jobs", pipeline="fastio-itk", state="done") >= 1
    count = metric(text, "carina_stage_seconds_count", stage="carina.fastio_itk.read_volume", outcome="success")
    assert count >= 1
    assert metric(text, "carina_stage_seconds_bucket", stage="carina.fastio_itk.read_volume", outcome="success",
                  le="+Inf") == count
    assert metric(text, "carina_fastio_segments", host="host-a", use="in_use") == 0  # freed with the job
    assert "# TYPE carina_fastio_reclaimed_total counter" in text


def test_queue_depths_count_every_priority(redis_server, sample, tmp_path):
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/4"),
           "CARINA_NAMESPACE": f"m{uuid.uuid4().hex[:6]}"}
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        app = create_app(settings)
        for priority in ("immediate", "normal", "lower"):
            submit(app, settings, "fastio-itk", sample[0], tmp_path / priority, priority=priority)
        text = dumps(settings, client)
        assert metric(text, "carina_queue_messages", queue="io") == 3  # no worker: all three wait
        assert metric(text, "carina_jobs", pipeline="fastio-itk", state="queued") == 3
    finally:
        client.flushdb()


def test_a_scrape_while_redis_is_down_answers_and_says_so(tmp_path):
    port = free_port()
    env = {**os.environ, "CARINA_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with open(tmp_path / "metrics.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "carina", "metrics", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = http_get(f"http://127.0.0.1:{port}/metrics", timeout_s=30)[1]
        assert metric(text, "carina_up") == 0
        assert "unreachable" in (tmp_path / "metrics.log").read_text()
    finally:
        stop_process_group(server)


def test_flower_needs_credentials_beyond_loopback_and_checks_them(deployment, tmp_path):
    refused = carina("flower", "--address", "0.0.0.0", env={**deployment.env, "CARINA_FLOWER_AUTH": ""})
    assert refused.returncode == 2 and "without credentials" in refused.stderr

    port = free_port()
    env = {**deployment.env, "CARINA_FLOWER_AUTH": "radiology:s3cret"}
    with open(tmp_path / "flower.log", "w") as log:
        flower = subprocess.Popen([sys.executable, "-m", "carina", "flower", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status, _ = http_get(f"http://127.0.0.1:{port}/workers", timeout_s=60)
        assert status == 401
        good = {"Authorization": "Basic " + b64encode(b"radiology:s3cret").decode()}
        status, page = http_get(f"http://127.0.0.1:{port}/workers", timeout_s=10, headers=good)
        assert status == 200 and "Flower" in page
        wrong = {"Authorization": "Basic " + b64encode(b"radiology:guess").decode()}
        assert http_get(f"http://127.0.0.1:{port}/workers", timeout_s=10, headers=wrong)[0] == 401
    finally:
        stop_process_group(flower)


def test_a_counting_stage_shows_its_progress_to_flower(deployment, tmp_path):
    from ops.samples import he_slide

    slide = he_slide(tmp_path / "slide.tif", (3000, 4000), seed=9)
    job = submit(deployment.app, deployment.settings, "nuclei-seg", slide, tmp_path / "out",
                 params={"overlap": 16, "num_workers": 1})
    jobs, seen = deployment.jobs(), None
    deadline = time.monotonic() + 120
    while seen is None:
        status = jobs.get(job)
        assert time.monotonic() < deadline and not status.finished, status
        if status.stage == "carina.nuclei.segment" and status.progress_done:
            result = deployment.app.AsyncResult(status.stage_task)  # what Flower shows for the task
            if result.state == "PROGRESS":
                seen = result.info
        time.sleep(0.05)
    assert seen["job"] == job and seen["stage"] == "carina.nuclei.segment"
    assert 0 < seen["done"] <= seen["total"] and seen["percent"] == round(100 * seen["done"] / seen["total"], 1)
    assert wait(jobs, job, 120).state == "done"
