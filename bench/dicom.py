"""DICOM instances received per second by ``carina dicom-listen`` against DCMTK's own
``storescp`` receiving the same series in the same run, over one association and over four
in parallel (DCMTK's ``storescu`` sending, ``TCP_NODELAY=1`` on both sides).

Carina's listener writes each instance under a temporary name, renames it into place and
records its arrival in Redis before it answers; with ``CARINA_DICOM_FSYNC=batch`` (the default)
the instances are fsynced together within a fraction of a second, with ``each`` every one is
fsynced before it is answered (measured as a second listener). ``storescp`` writes the file and
answers, never fsyncing. The series stays "receiving" for the whole run (a stability wait of an hour), so no
job is started: this measures the receiving alone. ``storescp`` binds every interface, so it
runs with the loopback shim (``carina/orthanc.py``). Each measurement is the median of
``--runs``; the last line printed is one JSON object, ``carina_over_storescp_1`` and ``_4``
the ratios (the issue's target: ≥ 0.8), ``carina_each_over_storescp_1`` and ``_4`` those of
``CARINA_DICOM_FSYNC=each``.

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
    for run in range(3 * 2 * args.runs):
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
            carina_port, each_port, dcmtk_port = free_port(), free_port(), free_port()
            listeners = [subprocess.Popen(
                [sys.executable, "-m", "carina", "dicom-listen", "--port", str(port), "--allow", "MODALITY",
                 "--ae-title", title, "--spool", str(work / f"spool-{fsync}"), "--output", str(work / "results"),
                 "--outbox", str(work / "outbox"), "--stable-s", "3600"], env={**env, "CARINA_DICOM_FSYNC": fsync},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                for port, title, fsync in ((carina_port, "CARINA", "batch"), (each_port, "CARINA_EACH", "each"))]
            (work / "storescp").mkdir()
            storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "+xa", "-od", str(work / "storescp"),
                                         str(dcmtk_port)], env={**os.environ, **NODELAY,
                                                                "LD_PRELOAD": str(loopback_shim())},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                for port, listener in zip((carina_port, each_port), listeners):
                    wait_for_port(port, listener, "carina dicom-listen")
                wait_for_port(dcmtk_port, storescp, "storescp")
                fresh = iter(series)
                for streams in (1, 4):
                    carina, each, dcmtk = [], [], []
                    for _ in range(args.runs):  # alternating, a new series each time
                        carina.append(send(next(fresh), carina_port, "CARINA", streams))
                        each.append(send(next(fresh), each_port, "CARINA_EACH", streams))
                        dcmtk.append(send(next(fresh), dcmtk_port, "STORESCP", streams))
                    c, e, d = (len(files) / statistics.median(times) for times in (carina, each, dcmtk))
                    figures[f"carina_per_s_{streams}"] = round(c, 1)
                    figures[f"carina_each_per_s_{streams}"] = round(e, 1)
                    figures[f"storescp_per_s_{streams}"] = round(d, 1)
                    figures[f"carina_over_storescp_{streams}"] = round(c / d, 3)
                    figures[f"carina_each_over_storescp_{streams}"] = round(e / d, 3)
            finally:
                for listener in listeners:
                    stop(listener)
                stop(storescp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(files)} instances of 512×512 int16 ({megabytes:.0f} MB), median of {args.runs}:\n"
          "| associations | carina dicom-listen (instances/s) | ratio | with CARINA_DICOM_FSYNC=each | ratio "
          "| DCMTK storescp (instances/s) |\n|---:|---:|---:|---:|---:|---:|")
    for n in (1, 4):
        print(f"| {n} | {figures[f'carina_per_s_{n}']} | {figures[f'carina_over_storescp_{n}']:.2f}× | "
              f"{figures[f'carina_each_per_s_{n}']} | {figures[f'carina_each_over_storescp_{n}']:.2f}× | "
              f"{figures[f'storescp_per_s_{n}']} |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
