"""A volume's axes flipped and reordered to point along named anatomical directions.

Models trained by MONAI (its bundles' ``Orientationd(axcodes="RAS")``) see every image with
its first index axis pointing towards the patient's Right, the second Anterior, the third
Superior, whatever the scanner wrote. :func:`orient` does that to a (z, y, x) volume: it only
flips and transposes (no voxel is interpolated), so :func:`restore` undoes it exactly.

The codes are three letters, one per index axis in ITK's (x, y, z) order, each the direction
in which that axis *increases* (nibabel's and MONAI's convention): ``R``/``L``, ``A``/``P``,
``S``/``I``. Geometry dicts are ITK's (LPS world; see :mod:`ops.volume`): ``direction`` is 3×3
row-major, its columns the directions of the index axes. Each index axis is matched to the
world axis it runs most nearly along, the most decisive axes first, as nibabel's
``io_orientation`` (which MONAI's ``Orientation`` uses) matches them; an oblique image keeps
its obliquity, only its axes are relabelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ops.errors import InvalidParameter

# Each code: (world axis in RAS, sign). ITK's world is LPS: x and y are negated to compare.
CODES = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Reorientation:
    """What :func:`orient` did: ``axes[t]`` is the source index axis (x=0, y=1, z=2) that
    became index axis ``t``; ``flipped[t]`` whether it was reversed."""

    axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    def array_axes(self) -> tuple[int, int, int]:
        """The ``numpy.transpose`` axes from a source (z, y, x) array to the oriented one."""
        return tuple(2 - self.axes[t] for t in (2, 1, 0))  # type: ignore[return-value]


def check_codes(codes: Any) -> str:
    """``codes`` upper-cased if it names each world axis once (``"RAS"``, ``"lps"``, ``"PIR"``...).

    Raises: InvalidParameter: anything else."""
    if not isinstance(codes, str) or len(codes) != 3 or any(c not in CODES for c in codes.upper()):
        raise InvalidParameter(f"orientation {codes!r}: expected three letters of R/L, A/P, S/I (e.g. 'RAS')")
    codes = codes.upper()
    if len({CODES[c][0] for c in codes}) != 3:
        raise InvalidParameter(f"orientation {codes!r} names a world axis twice")
    return codes


def reorientation(direction: Any, codes: str) -> Reorientation:
    """How to reach ``codes`` from an image whose ``direction`` (3×3 row-major, LPS, columns
    the index axes) is given. Raises InvalidParameter: bad ``codes`` or ``direction``."""
    codes = check_codes(codes)
    try:
        matrix = LPS_TO_RAS @ np.asarray(direction, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError) as e:
        raise InvalidParameter(f"direction {direction!r}: expected nine numbers (3×3)") from e
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        raise InvalidParameter(f"direction {direction!r} is not an invertible 3×3 matrix")
    remaining = matrix.copy()
    world_of = [0, 0, 0]
    sign_of = [1, 1, 1]
    for axis in np.argsort(-(matrix**2).max(axis=0), kind="stable"):  # most decisive first
        world = int(np.argmax(np.abs(remaining[:, axis])))
        world_of[axis], sign_of[axis] = world, 1 if remaining[world, axis] > 0 else -1
        remaining[world, :] = 0.0
    axes, flipped = [], []
    for code in codes:
        world, sign = CODES[code]
        source = world_of.index(world)
        axes.append(source)
        flipped.append(sign_of[source] != sign)
    return Reorientation(tuple(axes), tuple(flipped))  # type: ignore[arg-type]


def orient(volume: np.ndarray, geometry: dict[str, Any],
           codes: str) -> tuple[np.ndarray, dict[str, Any], Reorientation]:
    """The volume with its axes along ``codes``, its geometry, and how to undo it.

    Args:
        volume: (z, y, x), any dtype; numpy or cupy.
        geometry: its geometry (``spacing``, ``origin``, ``direction``; x, y, z order, LPS).
        codes: the target orientation, e.g. ``"RAS"``.

    Returns:
        ``(view, geometry, reorientation)``: a view of ``volume`` (no copy: flipped and
        transposed strides), the geometry of the same voxels seen through it (its origin is
        the physical point of the view's voxel 0), and what :func:`restore` needs.

    Raises:
        InvalidParameter: ``volume`` is not 3D, ``codes`` or the geometry is malformed.
    """
    if getattr(volume, "ndim", None) != 3:
        raise InvalidParameter(f"a 3D volume (z, y, x) is needed; got {getattr(volume, 'shape', type(volume))}")
    try:
        spacing = np.asarray(geometry["spacing"], dtype=np.float64)
        origin = np.asarray(geometry["origin"], dtype=np.float64)
        direction = np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3)
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidParameter(f"geometry must give spacing, origin and direction (x, y, z); {e}") from e
    if spacing.shape != (3,) or origin.shape != (3,):
        raise InvalidParameter("geometry: spacing and origin must be three numbers each (x, y, z)")
    how = reorientation(direction, codes)
    size_xyz = volume.shape[::-1]
    new_origin = origin.copy()
    columns = []
    for source, flip in zip(how.axes, how.flipped):
        column = direction[:, source]
        if flip:
            new_origin += column * spacing[source] * (size_xyz[source] - 1)
        columns.append(-column if flip else column)
    view = volume.transpose(how.array_axes())
    view = view[tuple(slice(None, None, -1) if how.flipped[2 - a] else slice(None) for a in range(3))]
    oriented = {
        **geometry,
        "spacing": [float(spacing[s]) for s in how.axes],
        "origin": [float(v) for v in new_origin],
        "direction": [float(v) for v in np.stack(columns, axis=1).ravel()],
    }
    return view, oriented, how


def restore(array: np.ndarray, how: Reorientation) -> np.ndarray:
    """``array``, on the grid :func:`orient` made, back on the source's grid: a view (no copy).
    Its leading axes, if it has more than three, are kept (channels first)."""
    lead = array.ndim - 3
    unflipped = array[(slice(None),) * lead + tuple(
        slice(None, None, -1) if how.flipped[2 - a] else slice(None) for a in range(3))]
    inverse = np.argsort(how.array_axes())
    return unflipped.transpose(*range(lead), *(lead + int(a) for a in inverse))
