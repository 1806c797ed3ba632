"""What the front door reads of a volume's header without decoding a voxel: the data files a
detached header names (for confinement) and the volume's size (to check a crop at submit).

Formats: MetaImage (``.mhd``, ``.mha``), NRRD (``.nhdr``, ``.nrrd``) and NIfTI-1/2 (``.nii``,
``.nii.gz``). Nothing here imports numpy or ITK.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

from queues.errors import PathRefused

# Header suffix → the separator of its key/value lines and the keys naming its data files.
DATA_FILE_KEYS = {
    ".mhd": ("=", ("elementdatafile",)),
    ".mha": ("=", ("elementdatafile",)),
    ".nhdr": (":", ("data file", "datafile")),
    ".nrrd": (":", ("data file", "datafile")),
}
SIZE_KEYS = {".mhd": "dimsize", ".mha": "dimsize", ".nhdr": "sizes", ".nrrd": "sizes"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
HEADER_BYTES = 65536  # headers are short; the pixels after an attached one are not read
NIFTI1_BYTES, NIFTI2_BYTES = 348, 540  # each header's sizeof_hdr, its first field


def _text_lines(header: Path) -> list[str]:
    """The first lines of a text header (MetaImage, NRRD).

    Raises:
        OSError: it cannot be read.
    """
    with open(header, "rb") as f:
        return f.read(HEADER_BYTES).decode("latin-1").splitlines()


def _fields(lines: list[str], separator: str) -> list[tuple[int, str, str]]:
    """``(line number, lower-case key, value)`` of each key/value line of the header."""
    found = []
    for n, line in enumerate(lines):
        if separator == ":" and not line.strip():
            break  # an attached NRRD's pixels follow the blank line that ends its header
        key, present, value = line.partition(separator)
        if present:
            found.append((n, key.strip().lower(), value.strip()))
    return found


def header_data_files(header: Path) -> list[Path]:
    """The data files (or, for a pattern, the folder of them) that a detached header names,
    as paths relative to its folder; none for pixels held in the header itself (``LOCAL``).

    Raises:
        PathRefused: a pattern that puts a placeholder in a folder name (no folder to check).
    """
    separator, keys = DATA_FILE_KEYS[header.suffix.lower()]
    try:
        lines = _text_lines(header)
    except OSError:
        return []
    for n, key, value in _fields(lines, separator):
        if key not in keys:
            continue
        if value.upper() == "LOCAL" or not value:
            return []
        if value.upper().startswith("LIST"):
            return [header.parent / name.strip() for name in lines[n + 1:] if name.strip()]
        if "%" in value:
            pattern = value.split()[0]
            if "%" in os.path.dirname(pattern):
                raise PathRefused(f"{header}: the data-file pattern {pattern!r} has a placeholder in a folder name")
            return [header.parent / (os.path.dirname(pattern) or ".")]
        return [header.parent / value]
    return []


def volume_file(path: Path) -> Path | None:
    """The volume a job's input names: the file itself, or the one volume file in a folder;
    None when that is not one file of a format read here (a DICOM folder, several volumes)."""
    suffixes = (*DATA_FILE_KEYS, *NIFTI_SUFFIXES)
    if path.is_dir():
        found = [f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(suffixes)]
        return found[0] if len(found) == 1 else None
    return path if path.is_file() and path.name.lower().endswith(suffixes) else None


def volume_size(path: Path) -> tuple[int, ...] | None:
    """The number of voxels along each axis, in ITK's order (x, y, z, …), that ``path``'s
    header declares, with trailing axes of size 1 beyond the third dropped; None when the
    header cannot be read or declares no size (the reader in the worker says why).
    """
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            return _nifti_size(path)
        separator = DATA_FILE_KEYS[path.suffix.lower()][0]
        values = [value for _, key, value in _fields(_text_lines(path), separator)
                  if key == SIZE_KEYS[path.suffix.lower()]]
        size = tuple(int(v) for v in values[0].split()) if values else None
    except (OSError, EOFError, ValueError, KeyError, struct.error, zlib.error, gzip.BadGzipFile):
        return None
    return _drop_trailing_ones(size) if size else None


def _nifti_size(path: Path) -> tuple[int, ...] | None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(NIFTI2_BYTES)
    for order in "<>":
        (sizeof_hdr,) = struct.unpack_from(f"{order}i", head, 0)
        if sizeof_hdr == NIFTI1_BYTES:
            dims = struct.unpack_from(f"{order}8h", head, 40)
        elif sizeof_hdr == NIFTI2_BYTES:
            dims = struct.unpack_from(f"{order}8q", head, 16)
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        return _drop_trailing_ones(tuple(int(d) for d in dims[1:1 + dims[0]]))
    return None


def _drop_trailing_ones(size: tuple[int, ...]) -> tuple[int, ...]:
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    return size
