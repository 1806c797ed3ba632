"""``carina api``, ``watch``, ``flower``, ``metrics`` and ``health``: the long-running front doors
and their monitoring."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from carina.cli.common import EXIT_FAILED, log_to_stderr
from queues.errors import ConfigError
from queues.listeners import check_listener
from queues.settings import get_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the HTTP job API (POST /job/, GET /query/<uid>)")
    p.add_argument("--host", help="address to listen on (default CARINA_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default CARINA_API_PORT, 8080)")
    p.set_defaults(run=api, role="front")

    p = sub.add_parser("watch", help="watch an inbox folder: each stable file or folder dropped in starts a job")
    p.add_argument("inbox", type=Path, nargs="?",
                   help="the folder watched, done/ and failed/ made inside it (default CARINA_WATCH_INBOX, ./inbox)")
    p.add_argument("--rules", type=Path, help="JSON rules mapping entries to pipelines (default CARINA_WATCH_RULES; "
                                              "unset: slides → nuclei-seg, CT abdomen DICOM and volumes → spleen-seg, "
                                              "other DICOM → 3dblur)")
    p.add_argument("--output", type=Path,
                   help="each job writes into OUTPUT/<entry>-<job id> (default CARINA_WATCH_OUTPUT, ./results)")
    p.add_argument("--stable-s", type=float, help="seconds an entry must stay unchanged (default CARINA_WATCH_STABLE_S, 10)")
    p.add_argument("--poll-s", type=float, help="seconds between scans (default CARINA_WATCH_POLL_S, 5)")
    p.add_argument("--poll", action="store_true", help="scan only, no change notifications (network filesystems)")
    p.set_defaults(run=watch, role="front")

    p = sub.add_parser("dicom-listen", help="a DICOM C-STORE/C-ECHO listener: each complete series starts a job "
                                            "chosen by the watch folder's rules")
    p.add_argument("--ae-title", help="this listener's AE title (default CARINA_DICOM_AE_TITLE, CARINA)")
    p.add_argument("--host", help="address to listen on (default CARINA_DICOM_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default CARINA_DICOM_PORT, 11112)")
    p.add_argument("--allow", help="calling AE titles accepted, comma-separated (default CARINA_DICOM_ALLOWED_AES)")
    p.add_argument("--spool", type=Path, help="where instances are kept (default CARINA_DICOM_SPOOL, ./dicom-spool)")
    p.add_argument("--output", type=Path, help="each job writes into OUTPUT/<series>-g<generation>-<job id> "
                                               "(default CARINA_DICOM_OUTPUT, ./results)")
    p.add_argument("--outbox", type=Path, help="results on their way to a rule's send_to destination "
                                               "(default CARINA_DICOM_OUTBOX, ./dicom-outbox)")
    p.add_argument("--rules", type=Path, help="JSON rules, as the watch folder's (default CARINA_DICOM_RULES; unset: "
                                              "CT abdomen → spleen-seg, other DICOM → 3dblur)")
    p.add_argument("--stable-s", type=float,
                   help="seconds without an instance after which a series is complete "
                        "(default CARINA_DICOM_STABLE_S, 10)")
    p.set_defaults(run=dicom_listen, role="front")

    p = sub.add_parser("health", help="check Redis, the workers, Triton and FastIO on this host")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds each check waits (default 3)")
    p.set_defaults(run=health, role="worker")

    p = sub.add_parser("metrics", help="serve Carina's Prometheus metrics (jobs, stages, queues, FastIO)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default CARINA_METRICS_PORT, 9808)")
    p.add_argument("--once", action="store_true", help="print them once and exit")
    p.set_defaults(run=metrics, role="worker")

    p = sub.add_parser("flower", help="the Flower dashboard with the project's configuration")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default CARINA_FLOWER_PORT, 5555)")
    p.set_defaults(run=flower, role="worker")


def api(args: argparse.Namespace) -> int:
    from queues.api import run
    from queues.app import app

    log_to_stderr()
    settings = get_settings()
    run(settings, app, args.host or settings.api_host, args.port or settings.api_port)
    return 0


def watch(args: argparse.Namespace) -> int:
    from queues.rules import DEFAULT_RULES, load_rules
    from queues.watch import watch as watch_inbox

    log_to_stderr()
    settings = get_settings()
    rules_file = args.rules or settings.watch_rules
    rules = load_rules(rules_file, settings) if rules_file else DEFAULT_RULES
    stable_s = settings.watch_stable_s if args.stable_s is None else args.stable_s
    poll_s = settings.watch_poll_s if args.poll_s is None else args.poll_s
    inbox = (args.inbox or settings.watch_inbox).absolute()
    if inbox.exists() and not inbox.is_dir():
        raise ConfigError(f"inbox {inbox} is a file, not a folder")
    inbox.mkdir(parents=True, exist_ok=True)
    output = (args.output or settings.watch_output).absolute()
    watch_inbox(inbox, output, rules, settings, stable_s, poll_s, use_watchdog=not args.poll)
    return 0


def dicom_listen(args: argparse.Namespace) -> int:
    from queues.dicom_listener import ListenerConfig, listen
    from queues.rules import DEFAULT_RULES, load_rules

    log_to_stderr()
    settings = get_settings()
    allowed = tuple(a.strip() for a in args.allow.split(",") if a.strip()) if args.allow else settings.dicom_allowed_aes
    host = args.host or settings.dicom_host
    # The allow-list of calling AE titles is what DICOM has for credentials; ListenerConfig
    # refuses an empty one on loopback too.
    check_listener("the DICOM listener", host, ",".join(allowed), "CARINA_DICOM_ALLOWED_AES")
    config = ListenerConfig(
        ae_title=args.ae_title or settings.dicom_ae_title, host=host,
        port=args.port or settings.dicom_port,
        allowed_aes=allowed, spool=(args.spool or settings.dicom_spool).absolute(),
        output_root=(args.output or settings.dicom_output).absolute(),
        stable_s=settings.dicom_stable_s if args.stable_s is None else args.stable_s,
        outbox=(args.outbox or settings.dicom_outbox).absolute(), resent=settings.dicom_resent,
        aborted=settings.dicom_aborted, fsync=settings.dicom_fsync, allowed_addresses=settings.dicom_allowed_addresses,
        max_associations=settings.dicom_max_associations, timeout_s=settings.dicom_timeout_s)
    rules_file = args.rules or settings.dicom_rules
    rules = load_rules(rules_file, settings) if rules_file else tuple(r for r in DEFAULT_RULES if r.kind == "dicom")
    listen(config, rules, settings)
    return 0


def health(args: argparse.Namespace) -> int:
    from monitoring.health import check_all
    from queues.app import app

    checks = check_all(get_settings(), app, args.timeout)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        for check in checks:
            print(f"{'ok ' if check.ok else 'BAD'} {check.name:8} {check.detail}")
    return 0 if all(c.ok for c in checks) else EXIT_FAILED


def metrics(args: argparse.Namespace) -> int:
    from monitoring.metrics import dumps, serve
    from queues.connection import connect

    log_to_stderr()
    settings = get_settings()
    if args.once:
        print(dumps(settings, connect(settings, socket_connect_timeout=2)), end="")
        return 0
    check_listener("the metrics", args.host, settings.metrics_token, "CARINA_METRICS_TOKEN")
    serve(settings, args.host, args.port or settings.metrics_port)
    return 0


def flower(args: argparse.Namespace) -> int:
    from monitoring.flower import FLOWER_CONFIG

    settings = get_settings()
    check_listener("Flower", args.address, settings.flower_auth, "CARINA_FLOWER_AUTH (user:password)")
    argv = [sys.executable, "-m", "celery", "-A", "queues.app", "flower", f"--conf={FLOWER_CONFIG}",
            f"--address={args.address}", f"--port={args.port or settings.flower_port}"]
    # Credentials by environment, never on a command line that `ps` shows.
    env = {**os.environ, **({"FLOWER_BASIC_AUTH": settings.flower_auth} if settings.flower_auth else {})}
    os.execve(sys.executable, argv, env)
    return 0
