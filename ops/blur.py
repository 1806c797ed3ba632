"""A separable 3D Gaussian blur with its sigma in millimetres, on the CPU (numba) or a GPU (cupy).

The result is ``scipy.ndimage.gaussian_filter(volume.astype(np.float32), sigma=(sz, sy, sx),
mode="reflect", truncate=truncate)`` to float32 rounding, several times faster: one parallel
pass over the volume, each output slice built from its neighbours while they are in cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from ops.arrays import is_cupy
from ops.errors import InvalidParameter

REAL_KINDS = "buif"  # bool, unsigned, signed, float: the dtypes whose values are real numbers


def gaussian_blur(
    volume: np.ndarray,
    sigma_mm: float | Sequence[float],
    spacing_xyz: Sequence[float],
    truncate: float = 4.0,
) -> np.ndarray:
    """Blur a (z, y, x) volume with a Gaussian whose width is given in millimetres.

    Axis order: the array is (z, y, x), C-ordered, as ``itk.array_from_image`` returns it;
    ``spacing_xyz`` and a per-axis ``sigma_mm`` are physical parameters in ITK order
    (x, y, z), as the image's metadata stores them. The sigma along an axis, in voxels, is
    ``sigma_mm / spacing`` of that axis; the kernel's radius is ``int(truncate * sigma + 0.5)``
    voxels and the edges are extended by half-sample reflection (``d c b a | a b c d | d c b a``),
    repeatedly where the radius exceeds the axis, exactly as scipy's ``mode="reflect"``.

    Args:
        volume: a 3D numpy array of any real dtype (bool, integer or float), (z, y, x); or a
            cupy array, blurred on its device with ``cupyx.scipy.ndimage.gaussian_filter``.
        sigma_mm: the standard deviation in mm, one value for all axes or three (x, y, z).
        spacing_xyz: the voxel size in mm, (x, y, z).
        truncate: the kernel's half-width in standard deviations.

    Returns:
        A new C-contiguous float32 array of the input's shape (a cupy array for a cupy
        input). The input is never modified and never returned.

    Raises:
        InvalidParameter: ``volume`` is not a 3D array of a real dtype; ``sigma_mm`` is not one
            or three finite positive numbers; ``spacing_xyz`` is not three finite positive
            numbers; ``truncate`` is not finite and positive.
    """
    check_volume(volume)
    sigma_zyx = voxel_sigmas(sigma_mm, spacing_xyz)
    truncate = positive_float(truncate, "truncate")
    if is_cupy(volume):
        return gaussian_blur_cupy(volume, sigma_zyx, truncate)

    src = np.ascontiguousarray(volume, dtype=np.float32)
    dst = np.empty(src.shape, dtype=np.float32)
    if src.size == 0:
        return dst
    wz, wy, wx = (gaussian_kernel1d(s, truncate) for s in sigma_zyx)
    _blur_zyx(src, dst, wz, wy, wx, min(src.shape[0], numba.get_num_threads()))
    return dst


def check_volume(volume: Any) -> None:
    """Raise :class:`InvalidParameter` unless ``volume`` is a 3D numpy/cupy array of a real dtype."""
    if not (isinstance(volume, np.ndarray) or is_cupy(volume)):
        raise InvalidParameter(f"volume must be a numpy or cupy array, not {type(volume).__name__}")
    if volume.ndim != 3:
        raise InvalidParameter(f"volume must be 3D (z, y, x); got shape {tuple(volume.shape)}")
    if volume.dtype.kind not in REAL_KINDS:
        raise InvalidParameter(f"volume has dtype {volume.dtype}; a real (bool, integer or float) dtype is needed")


def voxel_sigmas(sigma_mm: float | Sequence[float], spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
    """The sigma per axis in voxels, in array order (z, y, x)."""
    sigma = three_positive(sigma_mm, "sigma_mm", scalar_ok=True)
    spacing = three_positive(spacing_xyz, "spacing_xyz", scalar_ok=False)
    sx, sy, sz = (s / d for s, d in zip(sigma, spacing, strict=True))
    if not all(np.isfinite(v) for v in (sx, sy, sz)):
        raise InvalidParameter(f"sigma_mm={sigma_mm!r} over spacing_xyz={spacing_xyz!r} overflows")
    return sz, sy, sx


def three_positive(value: Any, name: str, *, scalar_ok: bool) -> tuple[float, float, float]:
    """Three finite positive floats (x, y, z) from ``value``, or one repeated where ``scalar_ok``."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as e:  # ragged nesting and the like
        raise InvalidParameter(f"{name}={value!r} is not a number or a sequence of numbers") from e
    if raw.dtype.kind not in "iuf":  # bools, strings and None are mistakes, not numbers
        raise InvalidParameter(f"{name}={value!r} is not a number or a sequence of numbers")
    if raw.ndim == 0 and scalar_ok:
        raw = np.repeat(raw, 3)
    if raw.shape != (3,):
        what = "one value or three (x, y, z)" if scalar_ok else "three values (x, y, z)"
        raise InvalidParameter(f"{name}={value!r}: expected {what}")
    values = raw.astype(np.float64)
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise InvalidParameter(f"{name}={value!r}: every value must be finite and positive")
    return float(values[0]), float(values[1]), float(values[2])


def positive_float(value: Any, name: str) -> float:
    """``value`` as a float, if it is a finite positive real number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidParameter(f"{name}={value!r} is not a number")
    if not (np.isfinite(value) and value > 0):
        raise InvalidParameter(f"{name}={value!r} must be finite and positive")
    return float(value)


def gaussian_kernel1d(sigma: float, truncate: float) -> np.ndarray:
    """scipy's normalised Gaussian taps (radius ``int(truncate * sigma + 0.5)``), rounded to float32.

    Computed in float64 as scipy does and rounded once, so the taps are symmetric and sum to
    1 within float32 rounding.
    """
    radius = int(truncate * sigma + 0.5)
    if radius == 0:  # also spares exp(-0.5 / sigma**2 * 0) a NaN where sigma**2 underflows
        return np.ones(1, dtype=np.float32)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (phi / phi.sum()).astype(np.float32)


def gaussian_blur_cupy(volume: Any, sigma_zyx: tuple[float, float, float], truncate: float) -> Any:
    """The GPU path: cupyx's gaussian_filter, which mirrors scipy's, on a float32 copy."""
    import cupy
    from cupyx.scipy import ndimage as cupy_ndimage

    # cupyx casts its output to the input's dtype, so the float32 conversion must come first;
    # astype copies, which also keeps the caller's array untouched.
    src = volume.astype(cupy.float32, order="C", copy=True)
    return cupy_ndimage.gaussian_filter(src, sigma=sigma_zyx, mode="reflect", truncate=truncate)


@njit(cache=True)
def _reflect(index: int, n: int) -> int:
    """The voxel scipy's ``mode="reflect"`` reads at ``index`` on an axis of ``n`` voxels.

    Half-sample reflection (``d c b a | a b c d | d c b a``) is periodic with period ``2 n``,
    which also covers kernels wider than the axis, where scipy reflects again and again.
    """
    if 0 <= index < n:
        return index
    folded = index % (2 * n)  # numba keeps Python's sign rule: never negative
    return 2 * n - 1 - folded if folded >= n else folded


@njit(parallel=True, cache=True, fastmath=False)
def _blur_zyx(
    src: np.ndarray, dst: np.ndarray, wz: np.ndarray, wy: np.ndarray, wx: np.ndarray, chunks: int
) -> None:
    """One pass: for each output slice, z then x into a slice buffer, then y into ``dst``.

    Every inner loop runs along x, the contiguous axis, so it vectorises and reads whole
    rows; each thread takes a run of consecutive slices, so the 2 rz + 1 input slices a slice
    needs are mostly still in cache from the previous one. The symmetric taps are folded,
    ``w[k] * (a[-k] + a[+k])``, which halves the multiplications. Loops index views from 0
    rather than offsets such as ``rx + x - k``: numba checks a possibly negative index for
    wrap-around, and that check stops LLVM vectorising.
    """
    nz, ny, nx = src.shape
    rz = wz.size // 2
    ry = wy.size // 2
    rx = wx.size // 2
    for chunk in prange(chunks):
        z_start = chunk * nz // chunks
        z_stop = (chunk + 1) * nz // chunks
        plane = np.empty((ny, nx), dtype=np.float32)
        line = np.empty(nx + 2 * rx, dtype=np.float32)
        middle = line[rx : rx + nx]
        for z in range(z_start, z_stop):
            for y in range(ny):
                # z into the middle of a padded line, its edges reflected, then x into the plane.
                centre = src[z, y]
                w0 = wz[rz]
                for x in range(nx):
                    middle[x] = w0 * centre[x]
                for k in range(1, rz + 1):
                    below = src[_reflect(z - k, nz), y]
                    above = src[_reflect(z + k, nz), y]
                    w = wz[rz + k]
                    for x in range(nx):
                        middle[x] += w * (below[x] + above[x])
                for j in range(rx):
                    line[j] = middle[_reflect(j - rx, nx)]
                    line[rx + nx + j] = middle[_reflect(nx + j, nx)]
                row = plane[y]
                w0 = wx[rx]
                for x in range(nx):
                    row[x] = w0 * middle[x]
                for k in range(1, rx + 1):
                    left = line[rx - k : rx - k + nx]
                    right = line[rx + k : rx + k + nx]
                    w = wx[rx + k]
                    for x in range(nx):
                        row[x] += w * (left[x] + right[x])
            for y in range(ny):
                out = dst[z, y]
                centre = plane[y]
                w0 = wy[ry]
                for x in range(nx):
                    out[x] = w0 * centre[x]
                for k in range(1, ry + 1):
                    before = plane[_reflect(y - k, ny)]
                    after = plane[_reflect(y + k, ny)]
                    w = wy[ry + k]
                    for x in range(nx):
                        out[x] += w * (before[x] + after[x])
