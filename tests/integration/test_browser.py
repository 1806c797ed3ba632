"""A real browser (Debian's Chromium, headless) shows a job in Flower and on the API's status page."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from carina.local import free_port, start_api, stop_process_group
from queues.pipelines import submit, wait

from tests.helpers import http_get

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `make browser` installs Debian's (root)")


def browse(url: str, screenshot=None, scripts_s: float = 0.0) -> str:
    """The page's DOM, after ``scripts_s`` seconds of virtual time for its scripts (not for a
    page that refreshes itself: Chromium would follow it for ever), and optionally a screenshot."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"]
    if scripts_s:
        flags.append(f"--virtual-time-budget={int(scripts_s * 1000)}")
    if screenshot is not None:
        subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


def test_flower_and_the_status_page_show_the_job(deployment, sample, tmp_path):
    flower_port, api_port = free_port(), free_port()
    env = {**deployment.env, "CARINA_FLOWER_AUTH": "", "CARINA_API_TOKEN": ""}
    with open(tmp_path / "flower.log", "w") as log:
        flower = subprocess.Popen([sys.executable, "-m", "carina", "flower", "--port", str(flower_port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = start_api(env, api_port, tmp_path / "api.log")
    try:
        assert http_get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout_s=60)[0] == 200
        # Flower subscribes to events after it starts serving: a worker shown online in its
        # metrics means the events arrive, so those of the job below will too.
        deadline = time.monotonic() + 30
        while "flower_worker_online{" not in http_get(f"http://127.0.0.1:{flower_port}/metrics", timeout_s=10)[1]:
            assert time.monotonic() < deadline, "Flower received no worker event"
            time.sleep(0.2)
        job = submit(deployment.app, deployment.settings, "fastio-itk", sample[0], tmp_path / "out")
        assert wait(deployment.jobs(), job, 60).state == "done"

        status_dom = browse(f"http://127.0.0.1:{api_port}/status", tmp_path / "status.png")
        assert job in status_dom and "fastio-itk" in status_dom and "<td>done</td>" in status_dom

        flower_dom = ""
        deadline = time.monotonic() + 30
        while "carina.fastio_itk.write_volume" not in flower_dom:
            assert time.monotonic() < deadline, flower_dom[-2000:]
            flower_dom = browse(f"http://127.0.0.1:{flower_port}/tasks", tmp_path / "flower.png", scripts_s=5)
        for stage in ("read_volume", "filter_volume", "write_volume"):
            assert f"carina.fastio_itk.{stage}" in flower_dom
        for shot in ("status.png", "flower.png"):
            assert (tmp_path / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (tmp_path / shot).stat().st_size > 10_000  # a rendered page, not a blank one
    finally:
        stop_process_group(flower)
        stop_process_group(api)
