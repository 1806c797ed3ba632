"""``carina worker --gpus``: one pinned, single-task worker per device (runs without a GPU too)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from carina.local import stop_process_group


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_one_pinned_worker_per_device(redis_server, tmp_path):
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/2"), "CARINA_HOST_ID": "gpu-host",
           "CARINA_NAMESPACE": "gputest"}
    log = tmp_path / "gpu.log"
    with open(log, "w") as out:
        parent = subprocess.Popen([sys.executable, "-m", "carina", "worker", "--gpus", "0,1"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while log.read_text().count(" ready.") < 2:
            assert parent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        workers = child_pids(parent.pid)
        assert sorted(environ(pid)["CUDA_VISIBLE_DEVICES"] for pid in workers) == ["0", "1"]
        text = log.read_text()
        assert "gpu0-" in text and "gpu1-" in text and "@gpu-host" in text
        for pid in workers:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"gpu,gpu.gpu-host" in cmdline and cmdline[cmdline.index(b"-c") + 1] == b"1"
    finally:
        stop_process_group(parent, grace_s=30)
    assert parent.returncode == 0
