"""``carina``: one command for every front door and service, one module per concern.

- :mod:`carina.cli.jobs`: submit, status, jobs, pipelines (and the seed's file interface);
- :mod:`carina.cli.services`: api, watch, flower, metrics, health;
- :mod:`carina.cli.workers`: worker, janitor;
- :mod:`carina.cli.local`: redis, triton, demo.

Every :class:`~queues.errors.CarinaError` is reported as one line and exit status 2. A
command run as a worker (worker, janitor, metrics, flower, health) or a front door (submit,
status, cancel, jobs, api, watch) reaches Redis as that role's user where its URL is set
(:func:`queues.settings.adopt_role`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from carina.cli import jobs, local, services, workers
from carina.cli.common import EXIT_REFUSED
from queues.errors import CarinaError
from queues.settings import adopt_role

FILE_INTERFACE = ("dicom-to-hdf5", "hdf5-to-dicom")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FILE_INTERFACE:
        # The seed's scripts are operators: run them in ops' own process, so this front door
        # never loads pydicom or numpy.
        os.execv(sys.executable, [sys.executable, "-m", "ops.dicom", *argv])
    args = parser().parse_args(argv)
    try:
        if getattr(args, "role", None):
            adopt_role(args.role)
        return args.run(args) or 0
    except CarinaError as e:
        print(f"carina: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="carina",
                                   description="Medical-imaging pipelines on Celery, Redis and shared memory.")
    sub = root.add_subparsers(required=True, metavar="COMMAND")
    jobs.register(sub)
    for name, text in (("dicom-to-hdf5", "a DICOM series → HDF5 volume + JSON (the seed's script; -h for options)"),
                       ("hdf5-to-dicom", "an HDF5 volume → DICOM series from a template (-h for options)")):
        sub.add_parser(name, help=text, add_help=False)
    workers.register(sub)
    services.register(sub)
    local.register(sub)
    return root


if __name__ == "__main__":
    sys.exit(main())
