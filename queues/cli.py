"""``carina``: submit and watch jobs, run workers, the janitor and the demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

from queues.errors import CarinaError
from queues.settings import DEFAULT_PRIORITY, LOOPBACK_HOSTS, PRIORITIES, get_settings

EXIT_FAILED = 1
EXIT_REFUSED = 2


FILE_INTERFACE = ("dicom-to-hdf5", "hdf5-to-dicom")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FILE_INTERFACE:
        # The seed's scripts are operators: run them in ops' own process, so this front door
        # never loads pydicom or numpy.
        os.execv(sys.executable, [sys.executable, "-m", "ops.dicom", *argv])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except CarinaError as e:
        print(f"carina: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carina", description="Medical-imaging pipelines on Celery, Redis and shared memory.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="queue a job; prints its id")
    p.add_argument("pipeline", help="pipeline name (see `carina pipelines`)")
    p.add_argument("--input", "-i", "--input-path", required=True, help="input file or folder (as the workers see it)")
    p.add_argument("--output", "-o", "--output-path", required=True, help="output folder")
    p.add_argument("--config", help="folder with config_render.json and other job configuration")
    p.add_argument("--crop-start", nargs=3, type=int, metavar=("X", "Y", "Z"), help="fastio-itk: first voxel (-1 = 0)")
    p.add_argument("--crop-size", nargs=3, type=int, metavar=("X", "Y", "Z"), help="fastio-itk: extent (-1 = to the edge)")
    p.add_argument("--sigma-mm", type=float, help="3dblur: Gaussian sigma in millimetres (default 1.0)")
    p.add_argument("--series-uid", help="3dblur: the SeriesInstanceUID to read (default: the largest series)")
    p.add_argument("--overlap", type=_number,
                   help="spleen-seg: window overlap, a fraction (default 0.25); nuclei-seg: pixels of context "
                        "read around each tile (default 0). The seed's -o: here -o is --output")
    p.add_argument("--model", "-m", help="spleen-seg, nuclei-seg: the Triton model (default spleen_ct, nuclei_unet)")
    p.add_argument("--tile-size", "-t", type=int, help="nuclei-seg: tile side in pixels, a multiple of 16 (default 256)")
    p.add_argument("--num-workers", "-w", type=int,
                   help="nuclei-seg: tile batches in parallel, hence requests in flight (default: the worker's CPUs)")
    p.add_argument("--mask-pixel-count-limit", type=int,
                   help="nuclei-seg: most pixels of the low-resolution tissue mask (default 1048576)")
    p.add_argument("--priority", choices=list(PRIORITIES), default=DEFAULT_PRIORITY,
                   help="Clara's job priorities: an immediate job's stages go ahead of waiting normal ones "
                        "(default normal)")
    p.add_argument("--wait", action="store_true", help="follow the job; exit 1 with the reason if it fails")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    p.set_defaults(run=_submit)

    p = sub.add_parser("status", help="state, stage and error of a job")
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(run=_status)

    for name, text in (("dicom-to-hdf5", "a DICOM series → HDF5 volume + JSON (the seed's script; -h for options)"),
                       ("hdf5-to-dicom", "an HDF5 volume → DICOM series from a template (-h for options)")):
        sub.add_parser(name, help=text, add_help=False)

    p = sub.add_parser("pipelines", help="list the pipelines")
    p.set_defaults(run=_pipelines)

    p = sub.add_parser("worker", help="start a Celery worker for this host")
    p.add_argument("--queues", "-Q", default="io,cpu", help="queue kinds, comma-separated: io,cpu,gpu (default io,cpu)")
    p.add_argument("--concurrency", "-c", type=int, default=None, help="processes (default: the CPUs)")
    p.add_argument("--host-id", help="override CARINA_HOST_ID for this worker")
    p.add_argument("--gpus", help="GPU workers: one process per device (e.g. 0,1), pinned with "
                                  "CUDA_VISIBLE_DEVICES, concurrency 1, on the gpu queues (ignores --queues)")
    p.add_argument("--loglevel", "-l", default="info")
    p.set_defaults(run=_worker)

    p = sub.add_parser("watch", help="watch an inbox folder: each stable file or folder dropped in starts a job")
    p.add_argument("inbox", type=Path, nargs="?",
                   help="the folder watched, done/ and failed/ made inside it (default CARINA_WATCH_INBOX, ./inbox)")
    p.add_argument("--rules", type=Path, help="JSON rules mapping entries to pipelines (default: slides → nuclei-seg, "
                                              "CT abdomen DICOM and volumes → spleen-seg, other DICOM → 3dblur)")
    p.add_argument("--output", type=Path,
                   help="each job writes into OUTPUT/<entry>-<job id> (default CARINA_WATCH_OUTPUT, ./results)")
    p.add_argument("--stable-s", type=float, help="seconds an entry must stay unchanged (default CARINA_WATCH_STABLE_S, 10)")
    p.add_argument("--poll-s", type=float, help="seconds between scans (default CARINA_WATCH_POLL_S, 5)")
    p.add_argument("--poll", action="store_true", help="scan only, no change notifications (network filesystems)")
    p.set_defaults(run=_watch)

    p = sub.add_parser("health", help="check Redis, the workers, Triton and FastIO on this host")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds each check waits (default 3)")
    p.set_defaults(run=_health)

    p = sub.add_parser("metrics", help="serve Carina's Prometheus metrics (jobs, stages, queues, FastIO)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default CARINA_METRICS_PORT, 9808)")
    p.add_argument("--once", action="store_true", help="print them once and exit")
    p.set_defaults(run=_metrics)

    p = sub.add_parser("flower", help="the Flower dashboard with the project's configuration")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default CARINA_FLOWER_PORT, 5555)")
    p.set_defaults(run=_flower)

    p = sub.add_parser("janitor", help="reclaim FastIO memory of dead jobs on this host; requeue stages of lost workers")
    p.add_argument("--drain", action="store_true", help="also unlink the pool of free segments")
    p.add_argument("--interval", type=float, help="repeat every N seconds instead of once")
    p.set_defaults(run=_janitor)

    p = sub.add_parser("api", help="serve the HTTP job API (POST /job/, GET /query/<uid>)")
    p.add_argument("--host", help="address to listen on (default CARINA_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default CARINA_API_PORT, 8080)")
    p.set_defaults(run=_api)

    p = sub.add_parser("redis", help="a local redis-server on CARINA_REDIS_URL's port (loopback, no persistence)")
    p.set_defaults(run=_redis_server)

    p = sub.add_parser("triton", help="serve the project's model repository with a local Triton (loopback)")
    p.add_argument("--port", type=int, help="HTTP port (default: the port of CARINA_TRITON_URL, 8000)")
    p.add_argument("--models", type=Path, help="model repository (default: the project's models/)")
    p.set_defaults(run=_triton)

    p = sub.add_parser("demo", help="run the pipelines on generated data with a private redis and worker")
    p.add_argument("--output", default="demo-output", help="folder for the sample and the results")
    p.set_defaults(run=_demo)
    return parser


def _number(text: str) -> int | float:
    """An int where the text is one (pixels), else a float (fractions)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _redis():
    import redis

    return redis.Redis.from_url(get_settings().redis_url, socket_connect_timeout=3)


def _submit(args: argparse.Namespace) -> int:
    from queues.app import app
    from queues.pipelines import submit

    options = ("crop_start", "crop_size", "sigma_mm", "series_uid", "overlap", "model", "tile_size", "num_workers",
               "mask_pixel_count_limit")
    params = {k: v for k in options if (v := getattr(args, k)) is not None}
    job_id = submit(app, get_settings(), args.pipeline, args.input, args.output, args.config, params,
                    priority=args.priority)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    return _follow(job_id, args.timeout)


def _follow(job_id: str, timeout_s: float) -> int:
    import queues

    def show(status) -> None:
        step = f" [{status.stage_index}/{len(status.stages)}] {status.stage}" if status.stage else ""
        done = f" {status.progress_done}/{status.progress_total}" if status.progress_total else ""
        print(f"{status.state}{step}{done}", file=sys.stderr, flush=True)

    status = queues.wait(job_id, timeout_s, on_change=show)
    if status.state == "done":
        print(f"done: {status.output}", file=sys.stderr)
        return 0
    if status.state == "failed":
        print(f"failed in {status.stage}: {status.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"still {status.state} after {timeout_s:.0f} s", file=sys.stderr)
    return EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    import queues

    status = queues.status(args.job)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    print(f"job:      {status.job_id}\npipeline: {status.pipeline}\nstate:    {status.state}")
    if status.priority:
        print(f"priority: {status.priority}")
    if status.stage:
        print(f"stage:    {status.stage} ({status.stage_index}/{len(status.stages)})")
    if status.progress_total:
        print(f"progress: {status.progress_done}/{status.progress_total}")
    if status.output:
        print(f"output:   {status.output}")
    if status.error:
        print(f"error:    {status.error}")
    return EXIT_FAILED if status.state == "failed" else 0


def _pipelines(args: argparse.Namespace) -> int:
    from queues.pipelines import PIPELINES

    for spec in PIPELINES.values():
        print(f"{spec.name:12} {spec.description}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from queues.app import QUEUE_KINDS

    kinds = [k.strip() for k in args.queues.split(",") if k.strip()]
    unknown = set(kinds) - set(QUEUE_KINDS)
    if unknown or not kinds:
        raise CarinaError(f"--queues {args.queues!r}: choose from {', '.join(QUEUE_KINDS)}")
    if args.host_id:
        os.environ["CARINA_HOST_ID"] = args.host_id
        get_settings.cache_clear()
    settings = get_settings()
    if args.gpus is not None:
        return _gpu_workers(args, settings)
    os.execv(sys.executable, _celery_worker_argv(kinds, settings.host_id, args.loglevel, args.concurrency))
    return 0  # not reached


def _celery_worker_argv(kinds: list[str], host_id: str, loglevel: str, concurrency: int | None,
                        name: str | None = None) -> list[str]:
    queues = kinds + [get_settings().host_queue(k, host_id) for k in kinds]
    node = f"{name or '+'.join(kinds)}-{uuid.uuid4().hex[:6]}@{host_id}"
    argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", ",".join(queues),
            "-n", node, "-l", loglevel, "-E", "--pool", "prefork"]
    return argv + (["-c", str(concurrency)] if concurrency else [])


def _gpu_workers(args: argparse.Namespace, settings) -> int:
    """One worker process per device, each seeing only its device, one task at a time."""
    import signal
    import subprocess

    devices = [d.strip() for d in args.gpus.split(",") if d.strip()]
    if not devices or not all(d.isdigit() for d in devices):
        raise CarinaError(f"--gpus {args.gpus!r}: device numbers, e.g. 0,1")
    children = [subprocess.Popen(_celery_worker_argv(["gpu"], settings.host_id, args.loglevel, 1, name=f"gpu{d}"),
                                 env={**os.environ, "CUDA_VISIBLE_DEVICES": d}) for d in devices]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def _api(args: argparse.Namespace) -> int:
    import logging

    from queues.api import run
    from queues.app import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    run(settings, app, args.host or settings.api_host, args.port or settings.api_port)
    return 0


def _redis_server(args: argparse.Namespace) -> int:
    from urllib.parse import urlparse

    from queues.local import redis_server_binary

    port = urlparse(get_settings().redis_url).port or 6379
    binary = redis_server_binary()
    os.execv(binary, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    return 0  # not reached


def _triton(args: argparse.Namespace) -> int:
    import signal
    import threading

    from queues.triton import REPO_ROOT, LocalTriton

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    port = args.port or int(get_settings().triton_url.rsplit(":", 1)[1])
    with LocalTriton(model_repository=args.models or REPO_ROOT / "models", http_port=port) as server:
        print(f"Triton ready at {server.url} (log: {server.log}); Ctrl-C stops it", flush=True)
        while not stop.wait(1.0):
            if server.process is not None and server.process.poll() is not None:
                print(f"Triton exited:\n{server.log_summary()}", file=sys.stderr)
                return EXIT_FAILED
    return 0


def _watch(args: argparse.Namespace) -> int:
    import logging

    from queues.watch import DEFAULT_RULES, load_rules, watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    rules = load_rules(args.rules) if args.rules else DEFAULT_RULES
    stable_s = settings.watch_stable_s if args.stable_s is None else args.stable_s
    poll_s = settings.watch_poll_s if args.poll_s is None else args.poll_s
    inbox = (args.inbox or settings.watch_inbox).absolute()
    inbox.mkdir(parents=True, exist_ok=True)
    output = (args.output or settings.watch_output).absolute()
    watch(inbox, output, rules, settings, stable_s, poll_s, use_watchdog=not args.poll)
    return 0


def _health(args: argparse.Namespace) -> int:
    from monitoring.health import check_all
    from queues.app import app

    checks = check_all(get_settings(), app, args.timeout)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        for check in checks:
            print(f"{'ok ' if check.ok else 'BAD'} {check.name:8} {check.detail}")
    return 0 if all(c.ok for c in checks) else EXIT_FAILED


def _metrics(args: argparse.Namespace) -> int:
    import logging

    import redis

    from monitoring.metrics import dumps, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if args.once:
        print(dumps(settings, redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)), end="")
        return 0
    serve(settings, args.host, args.port or settings.metrics_port)
    return 0


def _flower(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.flower_auth and args.address not in LOOPBACK_HOSTS:
        raise CarinaError(f"Flower would listen on {args.address} without credentials: set CARINA_FLOWER_AUTH "
                          "(user:password) or keep it on 127.0.0.1")
    config = Path(__file__).resolve().parents[1] / "monitoring" / "flowerconfig.py"
    argv = [sys.executable, "-m", "celery", "-A", "queues.app", "flower", f"--conf={config}",
            f"--address={args.address}", f"--port={args.port or settings.flower_port}"]
    # Credentials by environment, never on a command line that `ps` shows.
    env = {**os.environ, **({"FLOWER_BASIC_AUTH": settings.flower_auth} if settings.flower_auth else {})}
    os.execve(sys.executable, argv, env)
    return 0


def _janitor(args: argparse.Namespace) -> int:
    from fastio import drain_pool, sweep
    from queues.app import app
    from queues.recovery import requeue_lost_stages

    settings = get_settings()
    config = settings.fastio_config()
    client = _redis()
    while True:
        report = sweep(client, config)
        drained = drain_pool(client, config) if args.drain else 0
        lost = requeue_lost_stages(app, client, settings)
        print(f"expired jobs {report.expired_jobs}, ownerless {report.ownerless}, orphans {report.orphans}, "
              f"jobs of lost workers {len(lost)}" + (f", drained {drained}" if args.drain else ""), flush=True)
        if args.interval is None:
            return 0
        time.sleep(args.interval)


def _demo(args: argparse.Namespace) -> int:
    from queues.demo import run_demo

    return 0 if run_demo(Path(args.output).absolute()) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
