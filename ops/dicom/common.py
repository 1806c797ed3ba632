"""What reading, writing and the HDF5 interface share: header accessors, geometry checks, atomic writes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ops.errors import InvalidParameter, OpsError

UNIT_TOLERANCE = 1e-3  # how far a direction cosine may be from unit length / orthogonality


def _atomic_write(path: Path, write: Callable[[Path], object], error: type[OpsError]) -> None:
    """Write through a temporary file beside ``path`` so a reader never sees half a file.

    ``write`` is given the temporary path. Any failure removes it and raises ``error``
    naming ``path``.
    """
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        os.replace(partial, path)
    except Exception as e:  # pydicom and h5py raise many types besides OSError
        partial.unlink(missing_ok=True)
        raise error(f"cannot write {path}: {_reason(e)}") from e


def _check_geometry(geometry: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(geometry, dict):
        raise InvalidParameter(f"geometry: a dict with spacing, origin, direction expected, "
                               f"got {type(geometry).__name__}")
    arrays = []
    for key, size in (("spacing", 3), ("origin", 3), ("direction", 9)):
        try:
            value = np.asarray(geometry[key], dtype=np.float64).ravel()
        except KeyError:
            raise InvalidParameter(f"geometry has no {key!r}") from None
        except (TypeError, ValueError) as e:
            raise InvalidParameter(f"geometry[{key!r}]={geometry[key]!r} is not numeric") from e
        if value.size != size or not np.isfinite(value).all():
            raise InvalidParameter(f"geometry[{key!r}]={geometry[key]!r}: {size} finite numbers expected")
        arrays.append(value)
    spacing, origin, direction = arrays[0], arrays[1], arrays[2].reshape(3, 3)
    if (spacing <= 0).any():
        raise InvalidParameter(f"geometry['spacing']={list(spacing)} must be positive")
    if np.abs(direction.T @ direction - np.eye(3)).max() > UNIT_TOLERANCE:
        raise InvalidParameter(f"geometry['direction']={list(arrays[2])}: its columns are not orthonormal")
    return spacing, origin, direction


def _str(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else str(value)


def _int(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else int(value)


def _float(ds: Any, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    return default if value is None or value == "" else float(value)


def _first_value(ds: Any, keyword: str) -> float | None:
    """WindowCenter/WindowWidth may hold several values; the first is the default window."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0]) if len(value) else None


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1].strip() if text else type(e).__name__
