"""The cost of periodic work against the number of jobs kept: one janitor pass and one metrics
scrape with many finished jobs in Redis, against the same with few (measured in the same run).

Both read only the jobs under way (the active set) and counts of the ended ones, so their
cost should not grow with the jobs kept. Starts its own redis-server on loopback.

    python bench/jobs.py --finished 100000 --running 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from carina.local import LocalRedis

PIPELINES = ("fastio-itk", "3dblur", "spleen-seg", "nuclei-seg")


def fill(client: redis.Redis, namespace: str, finished: int, running: int, worker: str) -> None:
    """``finished`` jobs ended (done or failed) and ``running`` jobs running on ``worker``."""
    from queues.jobs import DONE, FAILED, JobStore

    jobs = JobStore(client, namespace, ttl_s=7 * 24 * 3600)

    def one(n: int) -> None:
        job_id = f"{namespace}-{n}"
        jobs.create(job_id, PIPELINES[n % len(PIPELINES)], ["a", "b", "c"], {})
        if n < finished:
            jobs.end(job_id, DONE if n % 10 else FAILED, output="/out", stage="b", error="")
        else:
            jobs.stage_started(job_id, "b", 2, task_id=f"task-{n}", worker=worker)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(finished + running)))


def median_ms(action, repeats: int) -> float:
    action()  # warm: scripts loaded, connections open
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(server: LocalRedis, finished: int, running: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of one janitor pass and one scrape in a fresh namespace."""
    namespace = f"bench{finished}"
    shm = tempfile.mkdtemp(prefix="carina-bench-jobs-", dir="/dev/shm")
    os.environ.update({"CARINA_REDIS_URL": server.url, "CARINA_NAMESPACE": namespace, "CARINA_SHM_DIR": shm,
                       "CARINA_HOST_ID": "bench"})
    from monitoring.metrics import dumps
    from queues.settings import get_settings
    from workers.janitor import janitor_pass
    from queues.presence import beat
    from workers.runtime import redis_client

    get_settings.cache_clear()
    redis_client.cache_clear()
    settings = get_settings()
    client = redis.Redis.from_url(server.url)
    worker = "bench-worker@bench"
    fill(client, namespace, finished, running, worker)
    beat(client, namespace, worker, settings.host_id, ["cpu"], interval_s=3600)  # the running jobs' worker is alive
    result = {"janitor_ms": median_ms(lambda: janitor_pass(settings), repeats),
              "scrape_ms": median_ms(lambda: dumps(settings, client), repeats)}
    os.rmdir(shm)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finished", type=int, default=100_000, help="finished jobs kept")
    parser.add_argument("--baseline", type=int, default=100, help="finished jobs kept in the baseline")
    parser.add_argument("--running", type=int, default=10, help="jobs running")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with LocalRedis() as server:
        small = measure(server, args.baseline, args.running, args.repeats)
        large = measure(server, args.finished, args.running, args.repeats)
    print(f"{'':28} {args.baseline:>10,} kept {args.finished:>10,} kept   ratio")
    for name, label in (("janitor_ms", "janitor pass (ms)"), ("scrape_ms", "metrics scrape (ms)")):
        print(f"{label:28} {small[name]:15.2f} {large[name]:15.2f} {large[name] / small[name]:7.2f}×")
    print(json.dumps({"running": args.running, "baseline": {"finished": args.baseline, **small},
                      "large": {"finished": args.finished, **large}}))


if __name__ == "__main__":
    main()
