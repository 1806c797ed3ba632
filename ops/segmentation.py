"""Sliding-window segmentation of a CT (or any one-channel volume) around a predictor: the
pre- and post-processing of a 3D model and the whole of it, each model's recipe its arguments.

The defaults are the spleen model's, the numbers of MONAI's ``spleen_ct_segmentation`` bundle
(a 3D UNet, one CT channel in, two channels out: background and spleen): resample to
1.5 × 1.5 × 2.0 mm (x, y, z) with linear interpolation, window -57..164 HU onto [0, 1] with
clipping, infer 96³ windows, and take the argmax of the blended logits (softmax first, as the
bundle does, changes no argmax). Other models give their own window, spacing, intensity
scaling or normalisation, orientation, blending and label resampling (``abdomen-seg`` and
imported MONAI bundles do, through their definitions).

Conventions: volumes are (z, y, x) numpy arrays; geometry dicts are in ITK's (x, y, z) order
(``spacing`` mm, ``origin`` mm: the physical point of index 0, ``direction``: 3×3 row-major,
its columns the directions of the index axes), as :mod:`ops.volume` reads them.
:func:`preprocess` and :func:`postprocess` take numpy or cupy arrays and return the same kind
(cupyx's ndimage mirrors scipy's); :func:`segment` runs them on the GPU when asked.

The resampling grid is MONAI's ``Spacing`` (``Spacingd`` in the bundle) with its defaults,
which the tests check against MONAI itself: the new grid keeps the **origin** (the centre of
voxel 0 stays where it was) and the **direction**, takes the target spacing exactly, and has
``round((n - 1) * spacing / target + 1)`` voxels per axis, so its last voxel centre lies
within half a new voxel of the old last centre. Samples past the old last centre repeat the
edge (MONAI's ``padding_mode="border"``). By default no reorientation is done: the predictor
sees windows in the array's (z, y, x) order and the image's own direction, as the project's
models were trained. ``orientation="RAS"`` turns the volume first, as a bundle's
``Orientationd`` does (:mod:`ops.orientation`); a bundle's network, which takes (x, y, z)
windows, gets a transpose at each end of its graph at import (:mod:`carina.bundles`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ops.arrays import array_module, is_cupy, ndimage_for, to_device, to_host
from ops.errors import InvalidParameter
from ops.orientation import orient, reorientation, restore
from ops.protocols import Predictor, Progress
from ops import sliding_window
from ops.sliding_window import sliding_window_inference

TARGET_SPACING_XYZ = (1.5, 1.5, 2.0)  # mm
NORMALIZATIONS = (None, "all", "nonzero")
LABEL_RESAMPLINGS = ("nearest", "linear")
HU_WINDOW = (-57.0, 164.0)  # HU mapped to 0 and 1
ROI_SIZE = (96, 96, 96)  # voxels, (z, y, x)
OUTPUT_CHANNELS = 2  # background and spleen logits

Geometry = dict[str, Any]


def preprocess(
    volume: np.ndarray,
    geometry: Geometry,
    target_spacing_xyz: Sequence[float] = TARGET_SPACING_XYZ,
    hu_window: Sequence[float] = HU_WINDOW,
    intensity_range: Sequence[float] = (0.0, 1.0),
    intensity_clip: bool = True,
    normalize_intensity: str | None = None,
) -> tuple[np.ndarray, Geometry]:
    """Resample a CT volume to the model's spacing, then scale its intensities.

    Args:
        volume: (z, y, x), any real dtype, in HU; numpy or cupy.
        geometry: the volume's geometry (x, y, z order; see the module's docstring).
        target_spacing_xyz: the model's voxel size in mm, (x, y, z).
        hu_window: ``(a_min, a_max)``: ``a_min`` maps to the first of ``intensity_range``,
            ``a_max`` to the second (MONAI's ``ScaleIntensityRange``).
        intensity_range: ``(b_min, b_max)``, (0, 1) by default.
        intensity_clip: clip the scaled values to ``intensity_range``.
        normalize_intensity: instead of the window, ``"all"`` subtracts the resampled volume's
            mean and divides by its standard deviation (1 where that is 0); ``"nonzero"`` does
            so over the voxels that are not 0 and leaves the zeros (MONAI's
            ``NormalizeIntensity``, with ``nonzero`` False or True).

    Returns:
        ``(array, geometry)``: a new C-contiguous float32 (z, y, x) array (numpy or cupy, as
        ``volume``), linearly interpolated on the grid described in the module's docstring,
        and that grid's geometry (the input's origin and direction, the target spacing) as
        lists of floats.

    Raises:
        InvalidParameter: ``volume`` is not a non-empty 3D real array; ``geometry`` lacks a key
            or has a non-positive spacing or a singular direction; ``target_spacing_xyz`` is
            not three finite positive numbers; ``hu_window`` or ``intensity_range`` is not two
            finite numbers, the first below the second; ``normalize_intensity`` is not None,
            ``"all"`` or ``"nonzero"``.
    """
    volume = _check_volume(volume)
    ndimage, xp = ndimage_for(volume), array_module(volume)
    spacing, origin, direction = _check_geometry(geometry, "geometry")
    target = np.asarray(_three_positive(target_spacing_xyz, "target_spacing_xyz"))
    a_min, a_max = _hu_window(hu_window)
    b_min, b_max = _hu_window(intensity_range, "intensity_range")
    if normalize_intensity not in NORMALIZATIONS:
        raise InvalidParameter(f"normalize_intensity={normalize_intensity!r}: expected one of {NORMALIZATIONS}")

    shape_xyz = _resampled_shape_xyz(volume.shape, spacing, target)
    resampled_geometry = {
        "spacing": [float(v) for v in target],
        "origin": [float(v) for v in origin],
        "direction": [float(v) for v in direction.ravel()],
    }
    source = volume.astype(np.uint8) if volume.dtype == np.bool_ else volume
    matrix, offset = _pull_transform((spacing, origin, direction), (target, origin, direction))
    out = ndimage.affine_transform(
        source, xp.asarray(matrix), xp.asarray(offset), output_shape=tuple(shape_xyz[::-1]), output=np.float32,
        order=1, mode="nearest",
    )
    if normalize_intensity is not None:
        _normalize(out, xp, nonzero=normalize_intensity == "nonzero")
        return out, resampled_geometry
    out -= np.float32(a_min)
    out /= np.float32(a_max - a_min)
    if (b_min, b_max) != (0.0, 1.0):
        out *= np.float32(b_max - b_min)
        out += np.float32(b_min)
    if intensity_clip:
        out.clip(b_min, b_max, out=out)
    return out, resampled_geometry


def _normalize(out: Any, xp: Any, nonzero: bool) -> None:
    """``out`` (float32) minus its mean, over its standard deviation, in place; over the
    nonzero voxels only if ``nonzero``."""
    selected = out != 0 if nonzero else None
    values = out[selected] if nonzero else out
    if values.size == 0:
        return
    mean, std = values.mean(dtype=np.float64), values.std(dtype=np.float64)
    scaled = (values - np.float32(mean)) / np.float32(std if std != 0 else 1.0)
    if nonzero:
        out[selected] = scaled
    else:
        out[...] = scaled


def _resampled_shape_xyz(shape_zyx: Sequence[int], spacing: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.round((np.asarray(shape_zyx[::-1]) - 1) * spacing / target + 1.0).astype(int)


def window_count(shape_zyx: Sequence[int], geometry: Geometry, overlap: float, roi_size: Sequence[int] = ROI_SIZE,
                 target_spacing_xyz: Sequence[float] = TARGET_SPACING_XYZ,
                 orientation: str | None = None) -> tuple[int, tuple[int, ...]]:
    """The windows :func:`segment` runs on a volume of ``shape_zyx`` and ``geometry``, and the
    (z, y, x) shape they slide over (the volume turned to ``orientation`` and resampled to
    ``target_spacing_xyz``), known before any voxel is read. Raises InvalidParameter as
    :func:`preprocess`."""
    spacing, _, direction = _check_geometry(geometry, "geometry")
    if orientation is not None:
        axes = reorientation(direction, orientation).axes
        spacing = spacing[list(axes)]
        shape_zyx = [shape_zyx[2 - a] for a in axes][::-1]
    target = np.asarray(_three_positive(target_spacing_xyz, "target_spacing_xyz"))
    resampled = tuple(int(n) for n in _resampled_shape_xyz(shape_zyx, spacing, target)[::-1])
    return sliding_window.window_count(resampled, roi_size, [overlap] * len(roi_size)), resampled


def postprocess(
    logits: np.ndarray,
    resampled_geometry: Geometry,
    original_shape_zyx: Sequence[int],
    original_geometry: Geometry,
    label_resampling: str = "nearest",
) -> np.ndarray:
    """Labels from the model's output, on the input volume's own grid.

    ``"nearest"``: the argmax over channels (the lowest channel wins a tie, as numpy's and
    torch's argmax), then nearest-neighbour resampling: each voxel of the original grid takes
    the label of the resampled voxel whose centre is nearest (in index space; voxels past the
    resampled grid's edge take the edge's label). An original centre exactly halfway between
    two resampled ones, common where the spacings are in a simple ratio (2.5 mm slices onto
    2.0 mm: every other slice), takes the higher index: scipy rounds ``floor(i + 0.5)``. So a
    label survives the round trip to within one resampled voxel of its boundary, not better.

    ``"linear"``: the softmax over channels, each channel's probabilities resampled linearly
    onto the original grid (the edge repeated past it), then the argmax: what a MONAI bundle
    does with ``Activationsd(softmax=True)``, ``Invertd(nearest_interp=False)`` and
    ``AsDiscreted(argmax=True)``. Smoother boundaries; C float32 volumes of the original's
    size in memory.

    Args:
        logits: (C, z, y, x) on the resampled grid, any real dtype; C ≤ 256; numpy or cupy.
        resampled_geometry: the geometry :func:`preprocess` returned.
        original_shape_zyx: the input volume's shape.
        original_geometry: the input volume's geometry.

    Returns:
        A new C-contiguous uint8 array of shape ``original_shape_zyx`` (numpy or cupy, as
        ``logits``): the channel index per voxel.

    Raises:
        InvalidParameter: ``logits`` is not a non-empty 4D real array with 1 to 256 channels;
            a geometry is malformed; ``original_shape_zyx`` is not three positive ints.
    """
    if not _is_array(logits) or logits.ndim != 4 or logits.dtype.kind not in "buif" or 0 in logits.shape:
        if _is_array(logits):
            what = f"shape {logits.shape}, dtype {logits.dtype}"
        else:
            what = type(logits).__name__
        raise InvalidParameter(f"logits must be a non-empty real (C, z, y, x) array; got {what}")
    if logits.shape[0] > 256:
        raise InvalidParameter(f"logits has {logits.shape[0]} channels; uint8 labels allow at most 256")
    shape = original_shape_zyx
    if (
        not isinstance(shape, Sequence)
        or len(shape) != 3
        or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape)
    ):
        raise InvalidParameter(f"original_shape_zyx={shape!r}: expected three positive ints (z, y, x)")
    resampled = _check_geometry(resampled_geometry, "resampled_geometry")
    original = _check_geometry(original_geometry, "original_geometry")
    if label_resampling not in LABEL_RESAMPLINGS:
        raise InvalidParameter(f"label_resampling={label_resampling!r}: expected one of {LABEL_RESAMPLINGS}")

    ndimage, xp = ndimage_for(logits), array_module(logits)
    matrix, offset = _pull_transform(resampled, original)
    matrix, offset, shape = xp.asarray(matrix), xp.asarray(offset), tuple(int(n) for n in shape)
    if label_resampling == "linear":
        scores = logits.astype(np.float32)
        scores -= scores.max(axis=0, keepdims=True)
        xp.exp(scores, out=scores)
        scores /= scores.sum(axis=0, keepdims=True)
        resampled_scores = xp.stack([ndimage.affine_transform(channel, matrix, offset, output_shape=shape,
                                                              output=np.float32, order=1, mode="nearest")
                                     for channel in scores])
        return resampled_scores.argmax(axis=0).astype(np.uint8)
    labels = logits.argmax(axis=0).astype(np.uint8)
    return ndimage.affine_transform(labels, matrix, offset, output_shape=shape, output=np.uint8, order=0,
                                    mode="nearest")


def segment(
    volume: np.ndarray,
    geometry: Geometry,
    predictor: Predictor,
    roi_size: Sequence[int] = ROI_SIZE,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: str = "gaussian",
    progress: Progress | None = None,
    use_gpu: bool = False,
    target_spacing_xyz: Sequence[float] = TARGET_SPACING_XYZ,
    intensity_window: Sequence[float] = HU_WINDOW,
    intensity_range: Sequence[float] = (0.0, 1.0),
    intensity_clip: bool = True,
    normalize_intensity: str | None = None,
    orientation: str | None = None,
    label_resampling: str = "nearest",
) -> np.ndarray:
    """Segment a CT volume: :func:`preprocess`, sliding-window inference, :func:`postprocess`.

    Args:
        volume: (z, y, x) in HU, any real dtype.
        geometry: its geometry (x, y, z order).
        predictor: the model (see :class:`ops.protocols.Predictor`): float32 windows
            ``(B, 1, *roi_size)`` in, ``(B, C, *roi_size)`` logits out (C = 2 for the spleen).
        roi_size: the window, (z, y, x) voxels.
        sw_batch_size, overlap, mode, progress: as for
            :func:`ops.sliding_window.sliding_window_inference` (the bundle itself uses
            ``overlap=0.5``; 0.25 is MONAI's default and the seed's).
        use_gpu: run pre- and post-processing with cupy on the current device (the windows
            still go to the predictor as numpy arrays). Needs cupy and a GPU.
        target_spacing_xyz, intensity_window, intensity_range, intensity_clip,
            normalize_intensity: the model's recipe, as :func:`preprocess` takes them
            (``intensity_window`` is its ``hu_window``); the spleen model's by default.
        orientation: None to keep the image's own axes (the project's models), or codes such
            as ``"RAS"``: the volume is first turned that way (:func:`ops.orientation.orient`,
            flips and transposes only), as a MONAI bundle's ``Orientationd`` turns it, and the
            labels are turned back.
        label_resampling: how labels return to the input's grid (:func:`postprocess`).

    Returns:
        A new uint8 (z, y, x) label volume on the input's grid (its geometry is ``geometry``):
        the channel index per voxel (for the spleen model: 0 background, 1 spleen).

    Raises:
        InvalidParameter: as :func:`preprocess`, :func:`postprocess` and
            :func:`ops.sliding_window.sliding_window_inference` raise it.
        ImportError: ``use_gpu`` without cupy installed.
    """
    volume = _check_volume(volume)
    source, source_geometry, turned = volume, geometry, None
    if orientation is not None:
        source, source_geometry, turned = orient(volume, geometry, orientation)
    resampled, resampled_geometry = preprocess(
        to_device(np.ascontiguousarray(source)) if use_gpu else source, source_geometry, target_spacing_xyz,
        intensity_window, intensity_range, intensity_clip, normalize_intensity)
    logits = sliding_window_inference(
        to_host(resampled)[None, None], roi_size, sw_batch_size, predictor, overlap=overlap, mode=mode,
        progress=progress,
    )
    labels = postprocess(to_device(logits[0]) if use_gpu else logits[0], resampled_geometry, source.shape,
                         source_geometry, label_resampling)
    if turned is not None:
        labels = restore(labels, turned)
    return np.ascontiguousarray(to_host(labels))


def request_nbytes(sw_batch_size: int, roi_size: Sequence[int] = ROI_SIZE,
                   output_channels: int = OUTPUT_CHANNELS) -> int:
    """Bytes of one batch of windows and of its logits (float32): what a request to the model
    moves each way together."""
    return sw_batch_size * (1 + output_channels) * math.prod(roi_size) * np.dtype(np.float32).itemsize


def _pull_transform(
    source: tuple[np.ndarray, np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """scipy's ``affine_transform`` (matrix, offset) in (z, y, x) index space, from target to source.

    A target voxel ``j`` (x, y, z) lies at ``o_t + D_t (s_t * j)``; that point is the source's
    continuous index ``(D_s^-1 (o_t + D_t (s_t * j) - o_s)) / s_s``. A diagonal matrix comes
    back as its diagonal, which scipy applies on its faster zoom-and-shift path.
    """
    (s_s, o_s, d_s), (s_t, o_t, d_t) = source, target
    inverse = np.linalg.inv(d_s)
    matrix = (inverse @ d_t) * s_t[None, :] / s_s[:, None]
    offset = inverse @ (o_t - o_s) / s_s
    matrix, offset = matrix[::-1, ::-1], offset[::-1]  # (x, y, z) → (z, y, x)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    if np.all(np.abs(off_diagonal) <= 1e-12 * np.abs(matrix).max()):
        return np.ascontiguousarray(np.diag(matrix)), np.ascontiguousarray(offset)
    return np.ascontiguousarray(matrix), np.ascontiguousarray(offset)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or is_cupy(value)


def _check_volume(volume: Any) -> Any:
    if not _is_array(volume):
        raise InvalidParameter(f"volume must be a numpy or cupy array, not {type(volume).__name__}")
    if volume.ndim != 3:
        raise InvalidParameter(f"a 3D volume (z, y, x) is needed; got shape {volume.shape}")
    if volume.dtype.kind not in "buif":
        raise InvalidParameter(f"volume has dtype {volume.dtype}; a real (bool, integer or float) dtype is needed")
    if 0 in volume.shape:
        raise InvalidParameter(f"volume is empty: shape {volume.shape}")
    return volume


def _check_geometry(geometry: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, origin, direction) as float64 arrays, (x, y, z) order, if ``geometry`` is well formed."""
    if not isinstance(geometry, dict):
        raise InvalidParameter(
            f"{name} must be a dict with spacing, origin and direction, not {type(geometry).__name__}"
        )
    missing = [key for key in ("spacing", "origin", "direction") if key not in geometry]
    if missing:
        raise InvalidParameter(f"{name} lacks {', '.join(missing)}")
    spacing = np.asarray(_three_positive(geometry["spacing"], f"{name}['spacing']"))
    try:
        origin = np.asarray(geometry["origin"], dtype=np.float64)
        direction = np.asarray(geometry["direction"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidParameter(f"{name}: origin and direction must be numbers") from e
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise InvalidParameter(f"{name}['origin']={geometry['origin']!r}: expected three finite numbers (x, y, z)")
    if direction.size != 9 or not np.all(np.isfinite(direction)):
        raise InvalidParameter(f"{name}['direction']={geometry['direction']!r}: expected nine finite numbers (3×3)")
    direction = direction.reshape(3, 3)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InvalidParameter(f"{name}['direction']={geometry['direction']!r} is singular")
    return spacing, origin, direction


def _three_positive(value: Any, name: str) -> tuple[float, float, float]:
    is_sequence = isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes))
    if not is_sequence or len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value):
        raise InvalidParameter(f"{name}={value!r}: expected three finite positive numbers (x, y, z)")
    if not all(math.isfinite(v) and v > 0 for v in value):
        raise InvalidParameter(f"{name}={value!r}: every value must be finite and positive")
    return float(value[0]), float(value[1]), float(value[2])


def _hu_window(hu_window: Any, name: str = "hu_window") -> tuple[float, float]:
    if (
        isinstance(hu_window, (str, bytes))
        or not isinstance(hu_window, Sequence)
        or len(hu_window) != 2
        or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) for v in hu_window)
    ):
        raise InvalidParameter(f"{name}={hu_window!r}: expected two finite numbers (low, high)")
    low, high = float(hu_window[0]), float(hu_window[1])
    if not low < high:
        raise InvalidParameter(f"{name}={hu_window!r}: the first must be below the second")
    return low, high
