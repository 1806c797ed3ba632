"""Hand a volume from one process to another: FastIO against the usual alternatives.

Every method does the same work, timed from the moment process A starts handing the
volume over to the moment process B holds an array (``handoff``) and to the moment B has
read it once, a checksum of every byte (``with read``, the headline figure):

* fastio        A: ``publish_array`` into a (pooled) shared-memory segment;
                B: ``get`` → zero-copy view → checksum.
* fastio_zero_copy  the volume is already in an allocation (a stage that writes its
                output straight into FastIO memory): A ``publish``; B as above.
* memcpy        the floor of any copying handoff: one copy into a ready buffer, then the
                checksum, in one process.
* npy           A: ``np.save`` to a file in the page cache; B: ``np.load`` → checksum.
* redis_pickle  A: ``pickle.dumps`` + SET; B: GET + ``pickle.loads`` → checksum.
* ray           A: ``ray.put``; B: ``ray.get`` → checksum (only if ray is installed).

Steady state, as in a long-running worker: warm-up runs first, then the median of
``--runs``. The last line printed is one JSON object of medians in milliseconds:
``<method>_ms`` with the read, ``<method>_handoff_ms`` without it.

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
from carina.local import LocalRedis


def checksum(array: np.ndarray) -> int:
    """Read every byte once."""
    flat = array.reshape(-1).view(np.uint8)
    usable = flat[: flat.size - flat.size % 8].view(np.uint64)
    return int(np.bitwise_xor.reduce(usable))


def consumer(conn, redis_url: str, config: FastIOConfig) -> None:
    """Process B: waits for (method, handle), takes the volume, reads it, answers the times."""
    client = redis.Redis.from_url(redis_url)
    ray = None
    while True:
        message = conn.recv()
        if message is None:
            return
        method, handle = message
        if method == "ray_init":
            import ray as ray_module

            try:
                ray_module.init(address=handle, logging_level="ERROR", _node_ip_address="127.0.0.1")
                ray = ray_module
                conn.send(True)
            except Exception:  # noqa: BLE001
                conn.send(False)
            continue
        if method == "fastio":
            array = FastIOContext(client, handle["job"], config).get(handle["name"]).array
        elif method == "npy":
            array = np.load(handle)
        elif method == "redis_pickle":
            array = pickle.loads(client.get(handle))
        elif method == "ray":
            array = ray.get(ray.cloudpickle.loads(bytes.fromhex(handle)))
        else:
            raise ValueError(method)
        ready = time.perf_counter()
        value = checksum(array)
        # Done with it, as a stage is when it returns: a view kept alive holds its segment
        # (fastio/segments.py), and the writer's free could then neither pool nor reuse it.
        del array
        conn.send((ready, time.perf_counter(), value))


Medians = dict[str, tuple[float, float] | None]


def run(args: argparse.Namespace) -> Medians:
    shape = (int(args.mb * 2**20 // (512 * 512 * 2)), 512, 512)
    volume = np.random.default_rng(0).integers(-1024, 3071, size=shape, dtype=np.int16)
    expected = checksum(volume)
    print(f"volume int16 {shape[0]}x{shape[1]}x{shape[2]} = {volume.nbytes / 2**20:.0f} MiB, "
          f"{args.runs} runs after {args.warmup} warm-up")

    shm_dir = Path(tempfile.mkdtemp(prefix="carina-bench-", dir="/dev/shm"))
    scratch = Path(tempfile.mkdtemp(prefix="carina-bench-"))
    config = FastIOConfig(host_id="bench", shm_dir=shm_dir, namespace=f"bench{uuid.uuid4().hex[:6]}")
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        measure(args, volume, expected, config, scratch, results)
    finally:
        shutil.rmtree(shm_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return {k: ((statistics.median(h for h, _ in v), statistics.median(r for _, r in v)) if v else None)
            for k, v in results.items()}


def measure(args, volume, expected, config, scratch, results) -> None:
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(target=consumer, args=(child, server.url, config), daemon=True)
        proc.start()

        def handoff(method: str, give) -> tuple[float, float]:
            t0 = time.perf_counter()
            handle = give()
            parent.send((method, handle))
            ready, read, value = parent.recv()
            assert value == expected, f"{method} delivered different bytes"
            return (ready - t0) * 1e3, (read - t0) * 1e3

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

        def free_job():
            FastIOContext(client, f"bench-{job['n']}", config).free_all()

        timed("fastio", fastio_give, after=free_job)

        produced = {}

        def produce_in_place():
            # Untimed: the producing stage writes its result straight into an allocation.
            job["n"] += 1
            alloc = FastIOContext(client, f"bench-{job['n']}", config).create(volume.nbytes)
            alloc.set_type_and_dimensions(volume.dtype, volume.shape)
            np.copyto(alloc.array, volume)
            produced["alloc"] = alloc

        def zero_copy_give():
            return {"job": f"bench-{job['n']}", "name": produced["alloc"].publish("volume")}

        samples = []
        for i in range(args.warmup + args.runs):
            produce_in_place()
            pair = handoff("fastio", zero_copy_give)
            free_job()
            if i >= args.warmup:
                samples.append(pair)
        results["fastio_zero_copy"] = samples

        target = np.empty_like(volume)
        samples = []
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            np.copyto(target, volume)
            ready = time.perf_counter()
            assert checksum(target) == expected
            if i >= args.warmup:
                samples.append(((ready - t0) * 1e3, (time.perf_counter() - t0) * 1e3))
        results["memcpy"] = samples

        npy = scratch / "volume.npy"
        timed("npy", lambda: (np.save(npy, volume), str(npy))[1])
        timed("redis_pickle", lambda: (client.set("bench:volume", pickle.dumps(volume, protocol=5)), "bench:volume")[1])
        results["ray"] = run_ray(args, volume, handoff, parent)

        parent.send(None)
        proc.join(30)
        client.close()


def run_ray(args, volume, handoff, parent) -> list[tuple[float, float]]:
    try:
        import ray
    except ImportError:
        print("ray is not installed: skipped (pip install 'ray[default]')")
        return []
    try:
        # Loopback only: this bench must not listen on, or reach, any other address.
        context = ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
                           _node_ip_address="127.0.0.1",
                           object_store_memory=max(4 * volume.nbytes, 2**30))
    except Exception as e:  # noqa: BLE001  (ray is optional; say why and go on)
        print(f"ray did not start: {e}")
        return []
    try:
        parent.send(("ray_init", context.address_info["address"]))
        if not parent.recv():
            print("ray: the consumer could not connect")
            return []
        samples = []
        for i in range(args.warmup + args.runs):
            ms = handoff("ray", lambda: ray.cloudpickle.dumps(ray.put(volume)).hex())
            if i >= args.warmup:
                samples.append(ms)
        return samples
    finally:
        ray.shutdown()


def main() -> None:
    # Ray's token authentication stops a second process of ours from joining; everything
    # here listens on loopback only, so turn it off for this run (children inherit it).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=150, help="volume size in MiB (512x512xN int16)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    medians = run(args)
    print(table(medians))
    figures: dict[str, object] = {}
    for method, pair in medians.items():
        figures[f"{method}_ms"] = None if pair is None else round(pair[1], 2)
        figures[f"{method}_handoff_ms"] = None if pair is None else round(pair[0], 2)
    print(json.dumps(figures | {"mb": args.mb, "runs": args.runs, "cpus": os.cpu_count()}))


def table(medians: Medians) -> str:
    """A Markdown table: medians and each method's cost relative to FastIO."""
    fastio = medians["fastio"]
    rows = ["| method | handoff ms | × fastio | with read ms | × fastio |", "|---|---:|---:|---:|---:|"]
    for method, pair in medians.items():
        if pair is None:
            rows.append(f"| {method} | n/a | | n/a | |")
            continue
        rows.append(f"| {method} | {pair[0]:.1f} | {pair[0] / fastio[0]:.1f} | {pair[1]:.1f} | {pair[1] / fastio[1]:.1f} |")
    return "\n" + "\n".join(rows)


if __name__ == "__main__":
    main()
