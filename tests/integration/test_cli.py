"""What the CLI gives a user beyond submit and status: a progress bar on a terminal, the
recent jobs, and a warning for a job that no live worker would take."""

from __future__ import annotations

import getpass
import os
import pty
import socket
import subprocess
import sys
import uuid

import pytest

CLI = [sys.executable, "-m", "carina"]


def carina(*args, env, timeout=120):
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def on_a_terminal(*args, env, timeout=120) -> tuple[int, str, str]:
    """Run ``carina`` with its stderr on a pseudo-terminal: (exit status, stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    stdout = process.communicate(timeout=timeout)[0]
    return process.returncode, stdout, shown.decode(errors="replace")


@pytest.fixture
def idle_env(redis_server):
    """A namespace of its own on which no worker runs."""
    return {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/7"),
            "CARINA_NAMESPACE": f"idle{uuid.uuid4().hex[:6]}"}


def test_submit_and_status_warn_of_a_stage_no_live_worker_reads(idle_env, sample, tmp_path):
    submitted = carina("submit", "spleen-seg", "-i", str(sample[0]), "-o", str(tmp_path / "out"), env=idle_env)
    assert submitted.returncode == 0, submitted.stderr
    for kind, stage in (("io", "carina.segmentation.read_volume"), ("gpu", "carina.segmentation.infer")):
        assert f"no live worker reads the {kind} queue: {stage} will wait" in submitted.stderr
    assert "cpu queue" not in submitted.stderr  # spleen-seg has no cpu stage
    status = carina("status", submitted.stdout.strip(), env=idle_env)
    assert "state:    queued" in status.stdout and "no live worker reads the gpu queue" in status.stderr
    # the audit trail: who asked, from which front door, when
    user = f"{getpass.getuser()}@{socket.gethostname()}"
    assert f"by {user} (carina submit)" in status.stdout
    carina("cancel", submitted.stdout.strip(), env=idle_env)
    assert f"by {user} (carina cancel)" in carina("status", submitted.stdout.strip(), env=idle_env).stdout


def test_submit_wait_on_a_terminal_draws_a_progress_bar(deployment, tmp_path):
    from ops.samples import he_slide

    slide = he_slide(tmp_path / "slide.tif", (1500, 2000), seed=11)
    code, stdout, shown = on_a_terminal("submit", "nuclei-seg", "-i", str(slide), "-o", str(tmp_path / "out"),
                                        "--wait", env=deployment.env)
    assert code == 0, shown
    assert "\r[2/3] segment" in shown and "\r[3/3] write_results" in shown  # one line, redrawn in place
    assert "█" in shown and "done: " in shown
    assert "running [" not in shown  # the plain lines are for pipes and files


def test_jobs_lists_recent_jobs_newest_first_with_filters(deployment, sample, tmp_path):
    ids = []
    for name in ("a", "b"):
        done = carina("submit", "fastio-itk", "-i", str(sample[0]), "-o", str(tmp_path / name), "--wait",
                      env=deployment.env)
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip())
    bad = carina("submit", "fastio-itk", "-i", str(tmp_path / "missing.mhd"), "-o", str(tmp_path / "c"), "--wait",
                 env=deployment.env)
    ids.append(bad.stdout.strip())

    listed = carina("jobs", "-n", "3", env=deployment.env)
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["job", "pipeline", "state", "stage", "age"]
    assert [row.split()[0] for row in rows[1:]] == ids[::-1]
    assert rows[1].split()[1:3] == ["fastio-itk", "failed"] and rows[2].split()[1:3] == ["fastio-itk", "done"]

    failed = carina("jobs", "--state", "failed", "-n", "50", env=deployment.env).stdout
    assert ids[2] in failed and ids[0] not in failed
    assert ids[0] not in carina("jobs", "--pipeline", "3dblur", "-n", "50", env=deployment.env).stdout


def test_watch_on_a_file_is_one_line(idle_env, sample):
    refused = carina("watch", str(sample[0]), env=idle_env)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"carina: error: inbox {sample[0]} is a file, not a folder"
