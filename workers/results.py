"""Results appear whole or not at all: every stage writes into a staging folder beside the
job's output folder, and the job's end moves it into place (done) or removes it (failed,
cancelled). Beside, so that both lie on one filesystem: a rename, never a copy, and a disk
that fills up fails the stage before anything reaches the output folder."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def staging_path(output: str | Path, job_id: str) -> Path:
    """The staging folder of ``job_id``'s results for ``output`` (a hidden name beside it)."""
    output = Path(output)
    return output.with_name(f".{output.name}.{job_id}.partial")


def publish(staging: Path, output: Path) -> None:
    """Move what ``staging`` holds into ``output``: the folder renamed when ``output`` does not
    exist (or is empty), else each file renamed into it, replacing a file of the same name
    (a result written again). ``staging`` is gone afterwards; a missing one (moved already:
    an end completed twice) is no error."""
    if not staging.is_dir():
        return
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if not output.exists():
        os.replace(staging, output)
        return
    for source in sorted(staging.rglob("*"), key=lambda p: len(p.parts)):
        target = output / source.relative_to(staging)
        if source.is_dir():
            target.mkdir(exist_ok=True)
        else:
            os.replace(source, target)
    shutil.rmtree(staging, ignore_errors=True)


def discard(staging: Path) -> None:
    """Remove a staging folder: what a failed or cancelled job had written."""
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
        log.info("removed the partial results in %s", staging)
