"""DICOM instances received per second by ``carina dicom-listen`` against DCMTK's own
``storescp`` receiving the same series in the same run, over one association and over four
in parallel (DCMTK's ``storescu`` sending, ``TCP_NODELAY=1`` on both sides).

Carina's listener writes each instance under a temporary name, fsyncs it, renames it into
place and records its arrival in Redis before it answers; ``storescp`` writes the file and
answers. The series stays "receiving" for the whole run (a stability wait of an hour), so no
job is started: this measures the receiving alone. ``storescp`` binds every interface, so it
runs with the loopback shim (``carina/orthanc.py``). Each measurement is the median of
``--runs``; the last line printed is one JSON object, ``carina_over_storescp_1`` and ``_4``
the ratios (the issue's target: ≥ 0.8).

    python bench/dicom.py --slices 200 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from carina.local import LocalRedis, free_port
from carina.orthanc import loopback_shim

NODELAY = {"TCP_NODELAY": "1"}


def send(files: list[Path], port: int, called: str, streams: int) -> float:
    """Seconds for ``streams`` storescu processes to send ``files`` between them."""
    groups = [files[i::streams] for i in range(streams)]
    env = {**os.environ, **NODELAY}
    start = time.perf_counter()
    senders = [subprocess.Popen(["storescu", "-aet", "MODALITY", "-aec", called, "127.0.0.1", str(port),
                                 *map(str, group)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for group in groups]
    for sender in senders:
        _, err = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode()[-2000:]}")
    return time.perf_counter() - start


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200, help="instances of 512×512 int16")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        raise SystemExit("DCMTK is needed: make dicom-tools")
    work = Path(tempfile.mkdtemp(prefix="carina-bench-dicom-"))
    # A series of its own for each run: the listener stores an instance it already has only once.
    series = []
    for run in range(2 * args.runs):
        subprocess.run([sys.executable, "-m", "ops.samples", "--output", str(work / f"series-{run}"), "--dicom",
                        "--shape", str(args.slices), "512", "512"], check=True, stdout=subprocess.DEVNULL)
        series.append(sorted((work / f"series-{run}").iterdir()))
    files = series[0]
    megabytes = sum(f.stat().st_size for f in files) / 2**20
    figures: dict = {"instances": len(files), "megabytes": round(megabytes, 1)}
    try:
        with LocalRedis() as server:
            env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": "bench-dicom",
                   "CARINA_DATA_ROOT": str(work)}
            carina_port, dcmtk_port = free_port(), free_port()
            listener = subprocess.Popen(
                [sys.executable, "-m", "carina", "dicom-listen", "--port", str(carina_port), "--allow", "MODALITY",
                 "--spool", str(work / "spool"), "--output", str(work / "results"), "--outbox",
                 str(work / "outbox"), "--stable-s", "3600"], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            (work / "storescp").mkdir()
            storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "+xa", "-od", str(work / "storescp"),
                                         str(dcmtk_port)], env={**os.environ, **NODELAY,
                                                                "LD_PRELOAD": str(loopback_shim())},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_for_port(carina_port, listener, "carina dicom-listen")
                wait_for_port(dcmtk_port, storescp, "storescp")
                fresh = iter(series)
                for streams in (1, 4):
                    carina, dcmtk = [], []
                    for _ in range(args.runs):  # alternating, a new series each time
                        run_files = next(fresh)
                        carina.append(send(run_files, carina_port, "CARINA", streams))
                        dcmtk.append(send(run_files, dcmtk_port, "STORESCP", streams))
                    c, d = len(files) / statistics.median(carina), len(files) / statistics.median(dcmtk)
                    figures[f"carina_per_s_{streams}"] = round(c, 1)
                    figures[f"storescp_per_s_{streams}"] = round(d, 1)
                    figures[f"carina_over_storescp_{streams}"] = round(c / d, 3)
            finally:
                stop(listener)
                stop(storescp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(files)} instances of 512×512 int16 ({megabytes:.0f} MB), median of {args.runs}:\n"
          "| associations | carina dicom-listen (instances/s) | DCMTK storescp (instances/s) | ratio |\n"
          "|---:|---:|---:|---:|")
    for streams in (1, 4):
        print(f"| {streams} | {figures[f'carina_per_s_{streams}']} | {figures[f'storescp_per_s_{streams}']} | "
              f"{figures[f'carina_over_storescp_{streams}']:.2f}× |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
