"""Hand a volume from one process to another: FastIO against the usual alternatives.

Every method does the same work, timed from the moment process A starts handing the
volume over to the moment process B holds an array and has read it once (a checksum of
every byte):

* fastio        A: ``publish_array`` into a (pooled) shared-memory segment;
                B: ``get`` → zero-copy view → checksum.
* memcpy        the floor: one copy into a ready buffer, then the checksum, in one process.
* npy           A: ``np.save`` to a file in the page cache; B: ``np.load`` → checksum.
* redis_pickle  A: ``pickle.dumps`` + SET; B: GET + ``pickle.loads`` → checksum.
* ray           A: ``ray.put``; B: ``ray.get`` → checksum (only if ray is installed).

Steady state, as in a long-running worker: warm-up runs first, then the median of
``--runs``. The last line printed is one JSON object of medians in milliseconds.

    python bench/fastio_handoff.py --mb 150
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from fastio import FastIOConfig, FastIOContext
from queues.local import LocalRedis


def checksum(array: np.ndarray) -> int:
    """Read every byte once."""
    flat = array.reshape(-1).view(np.uint8)
    usable = flat[: flat.size - flat.size % 8].view(np.uint64)
    return int(np.bitwise_xor.reduce(usable))


def consumer(conn, redis_url: str, config: FastIOConfig) -> None:
    """Process B: waits for (method, handle, t0), takes the volume, reads it, answers t1."""
    client = redis.Redis.from_url(redis_url)
    ray = None
    while True:
        message = conn.recv()
        if message is None:
            return
        method, handle = message
        if method == "ray_init":
            import ray as ray_module

            ray_module.init(address=handle, logging_level="ERROR")
            ray = ray_module
            conn.send(True)
            continue
        if method == "fastio":
            alloc = FastIOContext(client, handle["job"], config).get(handle["name"])
            value = checksum(alloc.array)
            alloc.release()
        elif method == "npy":
            value = checksum(np.load(handle))
        elif method == "redis_pickle":
            value = checksum(pickle.loads(client.get(handle)))
        elif method == "ray":
            value = checksum(ray.get(ray.cloudpickle.loads(bytes.fromhex(handle))))
        else:
            raise ValueError(method)
        conn.send((time.perf_counter(), value))


def run(args: argparse.Namespace) -> dict[str, float | None]:
    shape = (int(args.mb * 2**20 // (512 * 512 * 2)), 512, 512)
    volume = np.random.default_rng(0).integers(-1024, 3071, size=shape, dtype=np.int16)
    expected = checksum(volume)
    print(f"volume int16 {shape[0]}x{shape[1]}x{shape[2]} = {volume.nbytes / 2**20:.0f} MiB, "
          f"{args.runs} runs after {args.warmup} warm-up")

    shm_dir = Path(tempfile.mkdtemp(prefix="carina-bench-", dir="/dev/shm"))
    scratch = Path(tempfile.mkdtemp(prefix="carina-bench-"))
    config = FastIOConfig(host_id="bench", shm_dir=shm_dir, namespace=f"bench{uuid.uuid4().hex[:6]}")
    results: dict[str, list[float]] = {}
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(target=consumer, args=(child, server.url, config), daemon=True)
        proc.start()

        def handoff(method: str, give) -> float:
            t0 = time.perf_counter()
            handle = give()
            parent.send((method, handle))
            t1, value = parent.recv()
            assert value == expected, f"{method} delivered different bytes"
            return (t1 - t0) * 1e3

        def timed(method: str, give, after=lambda: None) -> None:
            samples = []
            for i in range(args.warmup + args.runs):
                ms = handoff(method, give)
                after()
                if i >= args.warmup:
                    samples.append(ms)
            results[method] = samples

        job = {"n": 0}

        def fastio_give():
            job["n"] += 1
            job_id = f"bench-{job['n']}"
            FastIOContext(client, job_id, config).publish_array(volume, "volume")
            return {"job": job_id, "name": "volume"}

        timed("fastio", fastio_give,
              after=lambda: FastIOContext(client, f"bench-{job['n']}", config).free_all())

        target = np.empty_like(volume)
        samples = []
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            np.copyto(target, volume)
            assert checksum(target) == expected
            if i >= args.warmup:
                samples.append((time.perf_counter() - t0) * 1e3)
        results["memcpy"] = samples

        npy = scratch / "volume.npy"
        timed("npy", lambda: (np.save(npy, volume), str(npy))[1])
        timed("redis_pickle", lambda: (client.set("bench:volume", pickle.dumps(volume, protocol=5)), "bench:volume")[1])
        results["ray"] = run_ray(args, volume, handoff, parent)

        parent.send(None)
        proc.join(30)
        client.close()
    shutil.rmtree(shm_dir, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return {k: (statistics.median(v) if v else None) for k, v in results.items()}


def run_ray(args, volume, handoff, parent) -> list[float]:
    try:
        import ray
    except ImportError:
        print("ray is not installed: skipped (pip install 'ray[default]')")
        return []
    context = ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
                       object_store_memory=max(4 * volume.nbytes, 2**30))
    try:
        parent.send(("ray_init", context.address_info["address"]))
        parent.recv()
        samples = []
        for i in range(args.warmup + args.runs):
            ms = handoff("ray", lambda: ray.cloudpickle.dumps(ray.put(volume)).hex())
            if i >= args.warmup:
                samples.append(ms)
        return samples
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=150, help="volume size in MiB (512x512xN int16)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    medians = run(args)
    fastio = medians["fastio"]
    print(f"\n{'method':14} {'median ms':>10} {'vs fastio':>10}")
    for method, ms in medians.items():
        shown = "n/a" if ms is None else f"{ms:10.1f}"
        ratio = "" if ms is None else f"{ms / fastio:9.1f}x"
        print(f"{method:14} {shown:>10} {ratio:>10}")
    print(json.dumps({f"{k}_ms": (None if v is None else round(v, 2)) for k, v in medians.items()}
                     | {"mb": args.mb, "runs": args.runs, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
