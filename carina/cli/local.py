"""``carina redis``, ``triton`` and ``demo``: local services for one host, and the tour."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from carina.cli.common import EXIT_FAILED, EXIT_REFUSED
from queues.settings import get_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("redis", help="a local redis-server on CARINA_REDIS_URL's port, its password required, with "
                                     "the role users of CARINA_REDIS_WORKER_URL and CARINA_REDIS_FRONT_URL "
                                     "(append-only file in CARINA_REDIS_DIR, fsync'd every second)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; a private one for other hosts or containers)")
    p.add_argument("--acl", action="store_true",
                   help="print the role users' ACL lines (passwords hashed) for another Redis's aclfile, and exit")
    p.set_defaults(run=redis_server)

    p = sub.add_parser("triton", help="serve the project's model repository with a local Triton (loopback)")
    p.add_argument("--port", type=int, help="HTTP port (default: the port of CARINA_TRITON_URL, 8000)")
    p.add_argument("--models", type=Path, help="model repository (default: the project's models/)")
    p.set_defaults(run=triton)

    p = sub.add_parser("keys", help="make a signing key and certificate for this host, and a store trusting it")
    p.add_argument("folder", type=Path, help="where to write carina.key (0600), carina.pem and certs/")
    p.add_argument("--name", default="carina", help="the certificate's common name (default carina)")
    p.set_defaults(run=keys)

    p = sub.add_parser("demo", help="run the pipelines on generated data with the Procfile's services")
    p.add_argument("--output", default="demo-output", help="folder for the sample and the results")
    p.set_defaults(run=demo)


def keys(args: argparse.Namespace) -> int:
    from queues.signing import environment, make_keys

    key, cert, store = make_keys(args.folder, args.name)
    print(f"key {key}, certificate {cert}, store {store}; for this host:")
    for name, value in environment(args.folder).items():
        print(f"export {name}={value}")
    print("other hosts trust this one once carina.pem is copied into their store", file=sys.stderr)
    return 0


def redis_server(args: argparse.Namespace) -> int:
    from urllib.parse import unquote, urlparse

    from carina.local import redis_server_binary
    from queues.connection import parse_sentinel_url
    from queues.listeners import check_listener
    from queues.roles import deployment_rules

    settings = get_settings()
    if args.acl:
        print("\n".join(deployment_rules(settings)))
        return 0
    if parse_sentinel_url(settings.redis_url) is not None:
        print("carina redis: CARINA_REDIS_URL names sentinels; carina redis runs one server on "
              "redis://127.0.0.1:PORT (see the README's Redis Sentinel section)", file=sys.stderr)
        return EXIT_REFUSED
    url = urlparse(settings.redis_url)
    check_listener("carina redis", args.host, url.password or "", "a password in CARINA_REDIS_URL")
    if not url.password:
        print("carina redis: CARINA_REDIS_URL has no password; every client must give one, e.g. "
              "CARINA_REDIS_URL=redis://:$(openssl rand -hex 16)@127.0.0.1:6379/0", file=sys.stderr)
        return EXIT_REFUSED
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    binary = redis_server_binary()
    # The password through stdin ("-" reads the configuration there), not the command line,
    # which every local user can read.
    read_end, write_end = os.pipe()
    os.write(write_end, "".join(f"{line}\n" for line in [f"requirepass {unquote(url.password)}",
                                                          *deployment_rules(settings)]).encode())
    os.close(write_end)
    os.dup2(read_end, 0)
    os.umask(0o077)  # the append-only file holds job records: names of patients' files
    os.execv(binary, [binary, "-", "--port", str(url.port or 6379), "--bind", args.host, "--save", "",
                      "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(settings.redis_dir.absolute())])
    return 0  # not reached


def triton(args: argparse.Namespace) -> int:
    import signal
    import threading

    from carina.triton import MODEL_REPOSITORY, LocalTriton

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    port = args.port or int(get_settings().triton_url.rsplit(":", 1)[1])
    with LocalTriton(model_repository=args.models or MODEL_REPOSITORY, http_port=port) as server:
        print(f"Triton ready at {server.url} (log: {server.log}); Ctrl-C stops it", flush=True)
        while not stop.wait(1.0):
            if server.process is not None and server.process.poll() is not None:
                print(f"Triton exited:\n{server.log_summary()}", file=sys.stderr)
                return EXIT_FAILED
    return 0


def demo(args: argparse.Namespace) -> int:
    from carina.demo import run_demo

    return 0 if run_demo(Path(args.output).absolute()) else EXIT_FAILED
