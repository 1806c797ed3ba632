"""DICOM instances received per second by ``carina dicom-listen`` against DCMTK's own
``storescp`` receiving the same series in the same run, over one association and over four
in parallel (DCMTK's ``storescu`` sending, ``TCP_NODELAY=1`` on both sides).

Carina's listener writes each instance under a temporary name, renames it into place and
records its arrival in Redis before it answers; with ``CARINA_DICOM_FSYNC=batch`` (the default)
the instances are fsynced together within a fraction of a second, with ``series`` a series'
instances are fsynced together once it is complete (before its job), with ``each`` every one is
fsynced before it is answered (each policy measured as a listener of its own). ``storescp``
writes the file and answers, never fsyncing. The series stays "receiving" for the whole run (a stability wait of an hour), so no
job is started: this measures the receiving alone. ``storescp`` binds every interface, so it
runs with the loopback shim (``carina/orthanc.py``). Each measurement is the median of
``--runs``; the last line printed is one JSON object, ``carina_over_storescp_1`` and ``_4``
the ratios (the issue's target: ≥ 0.8), ``carina_series_over_storescp_…`` and
``carina_each_over_storescp_…`` those of ``CARINA_DICOM_FSYNC=series`` and ``each``.

With ``--round-trips N`` (default 3; 0 leaves it out) it then runs the whole path N times, a new
series each time: Debian's Orthanc (``make pacs``) holds a 64-slice 256×256 CT, is asked to
C-STORE it to the listener, spleen-seg runs on a worker with the project's Triton, and the SEG is
sent back to Orthanc. ``last_instance_to_seg_s`` is the median time from the last instance
reaching the spool (its file's time) to the SEG being found in Orthanc (polled every 0.1 s),
``stability_wait_s`` the listener's ``--stable-s`` (default 10, the setting's default) and
``wait_share`` the part of the round trip spent waiting for the series to be complete.

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
from queues.dicom_listener import FSYNC_POLICIES

NODELAY = {"TCP_NODELAY": "1"}
POLICIES = FSYNC_POLICIES  # the default (batch) first


def key(policy: str) -> str:
    """The JSON keys' prefix of a policy's figures (the default's keep their old names)."""
    return "carina" if policy == "batch" else f"carina_{policy}"


def title(policy: str) -> str:
    return "CARINA" if policy == "batch" else f"CARINA_{policy.upper()}"


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
    parser.add_argument("--round-trips", type=int, default=3, help="Orthanc → Carina → Orthanc runs (0: none)")
    parser.add_argument("--stable-s", type=float, default=10.0, help="the listener's stability wait in round trips")
    args = parser.parse_args()
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        raise SystemExit("DCMTK is needed: make dicom-tools")
    work = Path(tempfile.mkdtemp(prefix="carina-bench-dicom-"))
    # A series of its own for each run: the listener stores an instance it already has only once.
    series = []
    for run in range((len(POLICIES) + 1) * 2 * args.runs):
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
            ports = {policy: free_port() for policy in POLICIES}
            dcmtk_port = free_port()
            listeners = [subprocess.Popen(
                [sys.executable, "-m", "carina", "dicom-listen", "--port", str(ports[policy]), "--allow", "MODALITY",
                 "--ae-title", title(policy), "--spool", str(work / f"spool-{policy}"),
                 "--output", str(work / "results"), "--outbox", str(work / "outbox"), "--stable-s", "3600"],
                env={**env, "CARINA_DICOM_FSYNC": policy}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True) for policy in POLICIES]
            (work / "storescp").mkdir()
            storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "+xa", "-od", str(work / "storescp"),
                                         str(dcmtk_port)], env={**os.environ, **NODELAY,
                                                                "LD_PRELOAD": str(loopback_shim())},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                for policy, listener in zip(POLICIES, listeners):
                    wait_for_port(ports[policy], listener, "carina dicom-listen")
                wait_for_port(dcmtk_port, storescp, "storescp")
                fresh = iter(series)
                for streams in (1, 4):
                    times: dict[str, list[float]] = {policy: [] for policy in (*POLICIES, "storescp")}
                    for _ in range(args.runs):  # alternating, a new series each time
                        for policy in POLICIES:
                            times[policy].append(send(next(fresh), ports[policy], title(policy), streams))
                        times["storescp"].append(send(next(fresh), dcmtk_port, "STORESCP", streams))
                    rate = {name: len(files) / statistics.median(taken) for name, taken in times.items()}
                    figures[f"storescp_per_s_{streams}"] = round(rate["storescp"], 1)
                    for policy in POLICIES:
                        figures[f"{key(policy)}_per_s_{streams}"] = round(rate[policy], 1)
                        figures[f"{key(policy)}_over_storescp_{streams}"] = round(rate[policy] / rate["storescp"], 3)
            finally:
                for listener in listeners:
                    stop(listener)
                stop(storescp)
        if args.round_trips:
            figures.update(round_trips(work, args.round_trips, args.stable_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(files)} instances of 512×512 int16 ({megabytes:.0f} MB), median of {args.runs}, "
          "carina dicom-listen by CARINA_DICOM_FSYNC:\n| associations | "
          + " | ".join(f"{policy} (instances/s) | ratio" for policy in POLICIES)
          + " | DCMTK storescp (instances/s) |\n|---:|" + "---:|---:|" * len(POLICIES) + "---:|")
    for n in (1, 4):
        print(f"| {n} | " + " | ".join(f"{figures[f'{key(p)}_per_s_{n}']} | {figures[f'{key(p)}_over_storescp_{n}']:.2f}×"
                                      for p in POLICIES) + f" | {figures[f'storescp_per_s_{n}']} |")
    if args.round_trips:
        print(f"Orthanc → carina dicom-listen → spleen-seg → Orthanc, median of {args.round_trips}: "
              f"{figures['last_instance_to_seg_s']} s from the last instance to the SEG in Orthanc, of which "
              f"{figures['stability_wait_s']} s the stability wait ({figures['wait_share']:.0%})")
    print(json.dumps(figures))


def round_trips(work: Path, count: int, stable_s: float) -> dict:
    """Seconds from a series' last instance in the listener's spool to its SEG in Orthanc, ``count``
    times over (see the module's docstring): the median, and the stability wait's share of it."""
    import redis

    from carina.local import start_worker, stop_process_group
    from fastio import drain_pool
    from queues.settings import Settings
    from carina.orthanc import LocalOrthanc
    from carina.triton import MODEL_REPOSITORY, LocalTriton

    root = work / "round-trip"
    root.mkdir()
    (root / "rules.json").write_text(json.dumps([{"kind": "dicom", "dicom": {"Modality": "CT"},
                                                  "pipeline": "spleen-seg", "send_to": "orthanc"}]))
    port = free_port()
    orthanc = LocalOrthanc(modalities={"carina": ("CARINA", "127.0.0.1", port)})
    with LocalRedis() as server, LocalTriton(MODEL_REPOSITORY, models=["spleen_ct"]) as triton, orthanc:
        env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": "bench-pacs",
               "CARINA_DATA_ROOT": str(work), "CARINA_TRITON_URL": triton.url,
               "CARINA_DICOM_DESTINATIONS": f"orthanc=ORTHANC@127.0.0.1:{orthanc.dicom_port}"}
        worker = start_worker(env, root / "worker.log", "io,cpu,gpu", concurrency=1)
        with open(root / "listener.log", "w") as log:  # the child keeps its own descriptor
            listener = subprocess.Popen(
                [sys.executable, "-m", "carina", "dicom-listen", "--port", str(port), "--allow", "ORTHANC",
                 "--spool", str(root / "spool"), "--output", str(root / "results"), "--outbox", str(root / "outbox"),
                 "--rules", str(root / "rules.json"), "--stable-s", str(stable_s)], env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(port, listener, "carina dicom-listen")
            totals = [one_round_trip(orthanc, root, seed) for seed in range(count)]
        finally:
            stop(listener)
            stop_process_group(worker)
            # The worker's pooled segments stay for its next start; this bench leaves none.
            drain_pool(redis.Redis.from_url(server.url), Settings.from_env(env).fastio_config())
    total = statistics.median(totals)
    return {"round_trips": count, "last_instance_to_seg_s": round(total, 1), "stability_wait_s": stable_s,
            "wait_share": round(stable_s / total, 3)}


def one_round_trip(orthanc, root: Path, seed: int) -> float:
    """Orthanc sends a new CT series to the listener; seconds from its last instance in the spool
    to its SEG in Orthanc."""
    series = root / f"ct-{seed}"
    subprocess.run([sys.executable, "-m", "ops.samples", "--output", str(series), "--dicom", "--spleen",
                    "--shape", "64", "256", "256"], check=True, stdout=subprocess.DEVNULL)
    before = set(orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": "SEG"}}))
    instance = orthanc.upload(sorted(series.iterdir()))[0]
    orthanc.request("POST", "/modalities/carina/store", orthanc.get(f"/instances/{instance}")["ParentSeries"].encode())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = set(orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": "SEG"}}))
        if found - before:
            back = time.time()
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"no SEG reached Orthanc within 600 s: see {root / 'listener.log'}")
    uid = series_uid(series)
    spooled = [p for p in (root / "spool").rglob("*.dcm") if uid in p.parent.name]
    return back - max(p.stat().st_mtime for p in spooled)


def series_uid(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID)


if __name__ == "__main__":
    main()
