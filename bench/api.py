"""Load on the HTTP job API: N submissions from concurrent clients, each followed to the end.

Starts its own redis-server, a worker (io,cpu) and ``carina api`` on loopback, then sends
``--jobs`` POST /job/ requests from ``--clients`` threads and polls GET /query/<uid>. It prints
p50/p99 latency to the 201 and to completion; the last line is one JSON object.

    python bench/api.py --jobs 40 --clients 8 --pipeline 3dblur
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastio import drain_pool
from carina.local import LocalRedis, free_port, start_api, start_worker, stop_process_group
from queues.settings import Settings

TOKEN = "bench-token"


def make_input(pipeline: str, root: Path) -> dict:
    """A small study inside the data root and the request body that names it."""
    from ops import samples

    if pipeline == "fastio-itk":
        from ops.volume import write_volume

        write_volume(samples.ct_phantom((32, 96, 96)), samples.CT_GEOMETRY, root / "study" / "ct.mhd")
        return {"job_name": pipeline, "in_dir": "study", "crop_size": [64, 64, 16]}
    if pipeline == "3dblur":
        samples.ct_series(root / "study", samples.ct_phantom((24, 96, 96)))
        return {"job_name": pipeline, "in_dir": "study", "sigma_mm": 1.0}
    raise SystemExit(f"no bench input for {pipeline}")


def request(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def one_job(api: str, body: dict, timeout_s: float) -> tuple[float, float, bool]:
    """Seconds to the 201, seconds to completion, and whether the job succeeded."""
    t0 = time.perf_counter()
    status, reply = request(f"{api}/job/", body)
    accepted = time.perf_counter() - t0
    if status != 201:
        return accepted, accepted, False
    while time.perf_counter() - t0 < timeout_s:
        status, _ = request(f"{api}/query/{reply['uid']}")
        if status != 202:
            return accepted, time.perf_counter() - t0, status == 200
        time.sleep(0.05)
    return accepted, time.perf_counter() - t0, False


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pipeline", default="3dblur", choices=["3dblur", "fastio-itk"])
    parser.add_argument("--worker-processes", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="carina-bench-api-"))
    body = make_input(args.pipeline, root)
    with LocalRedis() as server:
        env = {**os.environ, "CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": "bench-api",
               "CARINA_DATA_ROOT": str(root), "CARINA_API_TOKEN": TOKEN}
        worker = start_worker(env, root / "worker.log", "io,cpu", concurrency=args.worker_processes)
        port = free_port()
        api = start_api(env, port, root / "api.log")
        try:
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda _: one_job(f"http://127.0.0.1:{port}", body, 600), range(args.jobs)))
            wall = time.perf_counter() - start
        finally:
            stop_process_group(api)
            stop_process_group(worker)
            import redis

            drain_pool(redis.Redis.from_url(server.url), Settings.from_env(env).fastio_config())
            shutil.rmtree(root, ignore_errors=True)
    accepted = [r[0] * 1e3 for r in results]
    completed = [r[1] for r in results]
    failed = sum(not r[2] for r in results)
    print(f"{args.jobs} {args.pipeline} jobs from {args.clients} clients, {args.worker_processes} worker processes, "
          f"{wall:.1f} s wall, {failed} failed")
    print("| latency | p50 | p99 |\n|---|---:|---:|")
    print(f"| to 201 (ms) | {percentile(accepted, 50):.1f} | {percentile(accepted, 99):.1f} |")
    print(f"| to completion (s) | {percentile(completed, 50):.2f} | {percentile(completed, 99):.2f} |")
    print(json.dumps({"pipeline": args.pipeline, "jobs": args.jobs, "clients": args.clients, "failed": failed,
                      "submit_p50_ms": round(percentile(accepted, 50), 2),
                      "submit_p99_ms": round(percentile(accepted, 99), 2),
                      "complete_p50_s": round(percentile(completed, 50), 3),
                      "complete_p99_s": round(percentile(completed, 99), 3),
                      "jobs_per_s": round(args.jobs / wall, 2)}))


if __name__ == "__main__":
    main()
