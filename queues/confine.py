"""Every file a job opens lies inside the data roots: links are followed and the place they
lead to is checked, and so are the data files a header names.

The roots are ``CARINA_DATA_ROOT`` (several, separated by ``:``). The API resolves what a
caller names against them, the watch daemon checks each drop, and a job's first stage checks
its input, configuration and output again in the worker, since a path that was inside when
submitted may hold a link, or a header naming a file, that leads out.

A detached header (MetaImage ``ElementDataFile``, NRRD ``data file``) is followed the way
ITK follows it: relative to the header's folder, a ``LIST`` of names on the lines after it,
or a printf pattern whose folder is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from queues.errors import PathRefused
from queues.headers import DATA_FILE_KEYS, header_data_files

def real_roots(roots: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(Path(os.path.realpath(root)) for root in roots)


def inside(path: Path, roots: Sequence[Path], what: str) -> Path:
    """The real path of ``path`` (links followed), which lies inside one of ``roots`` (real
    paths themselves).

    Raises:
        PathRefused: it leads outside them; the message names ``what``, the path and where it leads.
    """
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(root) for root in roots):
        where = "" if real == Path(os.path.abspath(path)) else f" (it leads to {real})"
        raise PathRefused(f"{what} {path} is outside the data roots{where}")
    return real


def check_input(path: Path, roots: Sequence[Path], what: str = "input") -> None:
    """``path`` and, for a folder, every entry under it (a link is checked, not walked), and
    every data file a header among them names, lie inside ``roots``.

    Raises:
        PathRefused: the first that does not, named.
    """
    real = inside(path, roots, what)
    entries = [path]
    if real.is_dir():
        for folder, dirs, files in os.walk(path):
            entries += [Path(folder) / name for name in (*dirs, *files)]
    for entry in entries:
        inside(entry, roots, what if entry == path else f"{what} file")
        if entry.suffix.lower() in DATA_FILE_KEYS and entry.is_file():
            for data in header_data_files(entry):
                inside(data, roots, f"the data file named by {entry}:")


def check_output(path: Path, roots: Sequence[Path]) -> None:
    """The folder a job writes into (it need not exist yet) and the one beside which its
    results are staged lie inside ``roots``.

    Raises:
        PathRefused: either leads outside.
    """
    inside(path.parent, roots, "the folder of the output")
    if path.exists() or path.is_symlink():
        inside(path, roots, "output")


def check_job(input: str | Path, output: str | Path, config: str | Path | None, roots: Iterable[Path]) -> None:
    """A job's input, configuration folder and output, as its first stage sees them.

    Raises:
        PathRefused: any of them leads outside ``roots``, named.
    """
    real = real_roots(roots)
    check_input(Path(input), real)
    if config:
        check_input(Path(config), real, "configuration folder")
    check_output(Path(output), real)
