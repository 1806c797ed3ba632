"""bench/gpu.sh where no GPU is: it says so in one line and exits 0, and the GPU flags of the
benches it runs refuse in one line (exit 2) rather than measure the CPU under a GPU's name.

Where a GPU is, the script is a bench (minutes), run by hand: these tests skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ops.arrays import gpu_available

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(gpu_available(), reason="a GPU is here: bench/gpu.sh measures it (a bench)")


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_gpu_bench_without_a_gpu_says_so_and_exits_0():
    done = run("bash", "bench/gpu.sh")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "bench/gpu.sh: no GPU here (.venv/bin/python: cupy not installed or no CUDA device it sees): nothing measured"]


@pytest.mark.parametrize("script", ["bench/blur.py", "bench/spleen.py"])
def test_gpu_flag_without_a_gpu_is_one_line_and_exit_2(script):
    done = run(sys.executable, script, "--gpu")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"{script} --gpu: cupy is not installed or sees no CUDA device\n"
