"""``carina worker`` and ``carina janitor``: the processes that run stages and reclaim memory."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from functools import partial

import redis

from carina.cli.common import log_to_stderr
from carina.supervise import Child, supervise
from queues.errors import CarinaError
from queues.settings import QUEUE_KINDS, Settings, get_settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="start a Celery worker for this host (started again if it dies)")
    p.add_argument("--queues", "-Q", default="io,cpu", help="queue kinds, comma-separated: io,cpu,gpu (default io,cpu)")
    p.add_argument("--concurrency", "-c", type=int, default=None, help="processes (default: the CPUs)")
    p.add_argument("--host-id", help="override CARINA_HOST_ID for this worker")
    p.add_argument("--gpus", help="GPU workers: one process per device (e.g. 0,1), pinned with "
                                  "CUDA_VISIBLE_DEVICES, concurrency 1, on the gpu queues (ignores --queues)")
    p.add_argument("--loglevel", "-l", default="info")
    p.set_defaults(run=worker, role="worker")

    p = sub.add_parser("janitor", help="reclaim FastIO memory of dead jobs on this host; requeue stages of lost workers")
    p.add_argument("--drain", action="store_true", help="also unlink the pool of free segments")
    p.add_argument("--interval", type=float, help="repeat every N seconds instead of once")
    p.set_defaults(run=janitor, role="worker")


def worker(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.queues.split(",") if k.strip()]
    unknown = set(kinds) - set(QUEUE_KINDS)
    if unknown or not kinds:
        raise CarinaError(f"--queues {args.queues!r}: choose from {', '.join(QUEUE_KINDS)}")
    if args.host_id:
        os.environ["CARINA_HOST_ID"] = args.host_id
        get_settings.cache_clear()
    settings = get_settings()
    log_to_stderr()
    if args.gpus is not None:
        children = _gpu_workers(args, settings)
    else:
        children = [Child("+".join(kinds), partial(celery_worker_argv, settings, kinds, args.loglevel, args.concurrency),
                          dict(os.environ))]
    try:
        return supervise(children)
    finally:
        _drain_free_memory(settings)


def _drain_free_memory(settings: Settings) -> None:
    """Unlink this host's pool of free FastIO segments once its workers have stopped: they hold
    the pixels of finished jobs, which are not left in /dev/shm for a next start to reuse. A
    worker of this host still running only allocates afresh (a drain never takes a segment in
    use). Where Redis is away, one attempt is made and ``carina janitor --drain`` is named."""
    from fastio import drain_pool
    from queues.connection import connect

    try:
        drained = drain_pool(connect(settings, socket_timeout=5, socket_connect_timeout=5), settings.fastio_config())
    except redis.RedisError as e:
        log.warning("free shared memory of host %s not unlinked (%s): run `carina janitor --drain`", settings.host_id, e)
    else:
        log.info("unlinked %d free shared-memory segments of host %s", drained, settings.host_id)


def celery_worker_argv(settings: Settings, kinds: list[str], loglevel: str, concurrency: int | None,
                       name: str | None = None) -> list[str]:
    """``celery -A workers worker`` on the kinds' shared queues and this host's own, under a
    node name unique to this start (so a restarted worker is not taken for the one lost)."""
    queues = kinds + [settings.host_queue(k) for k in kinds]
    node = f"{name or '+'.join(kinds)}-{uuid.uuid4().hex[:6]}@{settings.host_id}"
    argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", ",".join(queues),
            "-n", node, "-l", loglevel, "-E", "--pool", "prefork"]
    return argv + (["-c", str(concurrency)] if concurrency else [])


def _gpu_workers(args: argparse.Namespace, settings: Settings) -> list[Child]:
    """One worker process per device, each seeing only its device, one task at a time."""
    devices = [d.strip() for d in args.gpus.split(",") if d.strip()]
    if not devices or not all(d.isdigit() for d in devices):
        raise CarinaError(f"--gpus {args.gpus!r}: device numbers, e.g. 0,1")
    return [Child(f"gpu{d}", partial(celery_worker_argv, settings, ["gpu"], args.loglevel, 1, name=f"gpu{d}"),
                  {**os.environ, "CUDA_VISIBLE_DEVICES": d}) for d in devices]


def janitor(args: argparse.Namespace) -> int:
    from fastio import drain_pool
    from workers.janitor import janitor_pass
    from workers.runtime import redis_client

    settings = get_settings()
    while True:
        report, lost = janitor_pass(settings)
        drained = drain_pool(redis_client(), settings.fastio_config()) if args.drain else 0
        print(f"expired jobs {len(report.expired_jobs)}, ownerless {report.ownerless}, orphans {report.orphans}, "
              f"jobs of lost workers {len(lost)}" + (f", drained {drained}" if args.drain else ""), flush=True)
        if args.interval is None:
            return 0
        time.sleep(args.interval)
