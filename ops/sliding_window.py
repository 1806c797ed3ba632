"""Sliding-window inference on numpy arrays, equal to MONAI's ``sliding_window_inference``.

A model trained on fixed-size patches (the spleen model: 96³) is run over a whole volume by
cutting it into overlapping windows, predicting each, and blending the overlaps with a
weight (importance) map. This module does that in numpy, with the model behind the
:class:`ops.protocols.Predictor` protocol, so the same code runs against Triton in production and against
a plain function in the tests. The result equals ``monai.inferers.sliding_window_inference``
to float32 rounding, for the arguments both take (the tests check it against MONAI 1.6.1: the
same windows, batched the same way, the importance map bit for bit, the output to 1e-5).

What MONAI does, step by step, and what this module therefore does:

1. ``roi_size`` entries that are ``None`` or ≤ 0 take the image's size along that axis.
2. An axis shorter than the window is padded to the window's size: ``diff // 2`` before the
   image and the rest (one more where ``diff`` is odd) after it, with ``padding_mode``
   (``"constant"`` with ``cval``, ``"reflect"``, ``"replicate"``, ``"circular"``: torch's
   ``F.pad`` names). The output is cropped back to the input's size at the end.
3. The step between windows along an axis is ``int(roi * (1 - overlap))``, at least 1, except
   where the window is exactly as long as the (padded) axis: one window, whatever the overlap.
4. Window starts along an axis are ``0, step, 2 step, ...`` up to the first one whose window
   reaches the edge; that last one is pulled back to ``size - roi`` so it ends on the edge.
   Windows are the Cartesian product of the per-axis starts, the last axis varying fastest.
5. Every window of every image (images one after the other, windows in the order above) is
   fed to the predictor ``sw_batch_size`` at a time, so **a batch can hold windows of two
   different images** of ``inputs``. Each prediction is multiplied by the importance map and
   added into the output; the importance map is added into a count map; at the end the
   output is divided by the count map: a weighted mean of the raw predictions (logits, not
   labels: any argmax comes after).
6. The importance map is all ones (``"constant"``) or a separable Gaussian (``"gaussian"``)
   with sigma ``sigma_scale * roi`` per axis centred on the window, ``exp(-d² / (2 sigma²))``
   with ``d`` the distance from the window's centre in voxels — see :func:`importance_map` for
   two points where MONAI's map is not what its older versions (or intuition) suggest.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ops.errors import InvalidParameter
from ops.protocols import Predictor, Progress

BLEND_MODES = ("constant", "gaussian")
# torch.nn.functional.pad's names (MONAI's), each with numpy.pad's name for the same padding
PADDING_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
IMPORTANCE_FLOOR = 1e-3  # MONAI's smallest weight: keeps the blend's denominator away from 0



def sliding_window_inference(
    inputs: np.ndarray,
    roi_size: int | Sequence[int | None] | None,
    sw_batch_size: int,
    predictor: Predictor,
    overlap: float | Sequence[float] = 0.25,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    progress: Progress | None = None,
) -> np.ndarray:
    """Run ``predictor`` over ``inputs`` window by window and blend the windows' outputs.

    Equal to ``monai.inferers.sliding_window_inference`` with the same arguments (see the
    module's docstring for the algorithm), on numpy arrays and with a numpy predictor.

    Args:
        inputs: ``(N, C, *spatial)``, channel-first with a batch axis, any real dtype (it is
            converted to float32); 3D spatial ``(z, y, x)`` for volumes, 2D works too.
        roi_size: the window's size per spatial axis (array order), or one int for every axis;
            ``None`` or a value ≤ 0 means the image's full size along that axis.
        sw_batch_size: the most windows handed to ``predictor`` at once, ≥ 1.
        predictor: see :class:`Predictor`.
        overlap: the fraction of a window shared with its neighbour, in [0, 1), one value or
            one per spatial axis.
        mode: ``"constant"`` (every voxel of a window weighs 1) or ``"gaussian"`` (voxels near
            the window's edge weigh less).
        sigma_scale: the Gaussian's sigma as a fraction of the window's size, one value or
            one per spatial axis; used for ``"gaussian"`` only.
        padding_mode: how axes shorter than the window are padded: ``"constant"`` (with
            ``cval``), ``"reflect"`` (``d c b | a b c d``, the edge not repeated),
            ``"replicate"`` (the edge repeated) or ``"circular"`` (wrap around). Where the pad
            is wider than the axis, torch refuses ``"reflect"`` and ``"circular"``; numpy's
            repeated reflection or wrapping is used here instead.
        cval: the value for ``padding_mode="constant"``.
        progress: if given, called as ``progress(windows_done, windows_total)`` after each
            batch; ``windows_total`` counts the windows of all N images.

    Returns:
        A new C-contiguous float32 array ``(N, C_out, *spatial)``: the blended predictions,
        the input's spatial shape.

    Raises:
        InvalidParameter: a malformed argument (named in the message), or a predictor that
            breaks its contract (wrong batch size, spatial shape, or channel count, or an
            output that is not an array of real numbers); the message says what was expected
            and what came back.

    Memory: the float32 output over the padded image, one float32 count map over its
    spatial shape, and one batch of windows and predictions at a time (a few more where the
    predictor's ``predict_many`` keeps requests in flight).
    """
    inputs = _check_inputs(inputs)
    spatial = inputs.shape[2:]
    ndim = len(spatial)
    roi = _resolve_roi(roi_size, spatial)
    sw_batch_size = _positive_int(sw_batch_size, "sw_batch_size")
    overlaps = _per_axis(overlap, ndim, "overlap")
    if not all(0.0 <= o < 1.0 for o in overlaps):
        raise InvalidParameter(f"overlap={overlap!r}: every value must be in [0, 1)")
    if not callable(predictor):
        raise InvalidParameter(f"predictor={predictor!r} is not callable")
    if padding_mode not in PADDING_MODES:
        raise InvalidParameter(f"padding_mode={padding_mode!r}: expected one of {', '.join(PADDING_MODES)}")
    if isinstance(cval, bool) or not isinstance(cval, numbers.Real):
        raise InvalidParameter(f"cval={cval!r} is not a number")
    if progress is not None and not callable(progress):
        raise InvalidParameter(f"progress={progress!r} is not callable")
    weights = importance_map(roi, mode, sigma_scale)  # validates mode and sigma_scale

    pad = [(diff // 2, diff - diff // 2) for diff in (max(r - s, 0) for r, s in zip(roi, spatial))]
    image = _pad(inputs, pad, padding_mode, float(cval))
    padded = image.shape[2:]
    windows = window_slices(padded, roi, overlaps)
    total = len(windows) * inputs.shape[0]

    count = np.zeros(padded, dtype=np.float32)
    for window in windows:
        count[window] += weights

    batches = [[(i // len(windows), windows[i % len(windows)]) for i in range(first, min(first + sw_batch_size, total))]
               for first in range(0, total, sw_batch_size)]  # (image, window) pairs
    stacked = (np.stack([image[(n, slice(None), *window)] for n, window in members]) for members in batches)
    output: np.ndarray | None = None
    done = 0
    for members, raw in zip(batches, _predict_stream(predictor, stacked)):
        predicted = _check_prediction(raw, len(members), roi, None if output is None else output.shape[1])
        if output is None:
            output = np.zeros((inputs.shape[0], predicted.shape[1], *padded), dtype=np.float32)
        for (n, window), p in zip(members, predicted):
            output[(n, slice(None), *window)] += p * weights
        done += len(members)
        if progress is not None:
            progress(done, total)

    assert output is not None  # total >= 1: every axis has at least one voxel and one window
    output /= count
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pad, spatial))
    return np.ascontiguousarray(output[(slice(None), slice(None), *crop)])


def _predict_stream(predictor: Predictor, batches: Iterator[np.ndarray]) -> Iterator[Any]:
    """The predictions of ``batches`` in order: through ``predictor.predict_many`` where the
    predictor has one (a remote model keeps several batches in flight while the caller blends
    earlier ones), else one call per batch."""
    predict_many = getattr(predictor, "predict_many", None)
    if callable(predict_many):
        return iter(predict_many(batches))
    return map(predictor, batches)


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """The step between window starts per axis: ``int(roi * (1 - overlap))``, at least 1.

    An axis as long as the window gets the window's size as its step, hence one window,
    whatever the overlap (MONAI's ``_get_scan_interval``).
    """
    return tuple(
        r if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap, strict=True)
    )


def axis_starts(size: int, roi: int, step: int) -> list[int]:
    """Window starts along one axis: ``0, step, ...`` until a window reaches ``size``, the last clamped.

    ``roi <= size``. The last window is moved back to start at ``size - roi``, so it ends on
    the edge; it may then overlap its neighbour more than ``overlap`` asks (MONAI's
    ``dense_patch_slices``).
    """
    starts = []
    start = 0
    while True:
        starts.append(min(start, size - roi))
        if start + roi >= size:
            return starts
        start += step


def window_count(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> int:
    """How many windows :func:`sliding_window_inference` runs over one image of ``image_size``
    (an axis shorter than its window is padded to it), without listing them."""
    padded = [max(s, r) for s, r in zip(image_size, roi_size, strict=True)]
    steps = scan_interval(padded, roi_size, overlap)
    return math.prod(len(axis_starts(s, r, step)) for s, r, step in zip(padded, roi_size, steps))


def window_slices(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]
) -> list[tuple[slice, ...]]:
    """Every window over an image of ``image_size`` (each axis ≥ its ``roi_size``), in MONAI's order.

    The Cartesian product of :func:`axis_starts` per axis, the last axis varying fastest.
    """
    steps = scan_interval(image_size, roi_size, overlap)
    per_axis = [axis_starts(s, r, step) for s, r, step in zip(image_size, roi_size, steps)]
    return [tuple(slice(a, a + r) for a, r in zip(starts, roi_size)) for starts in itertools.product(*per_axis)]


def importance_map(
    roi_size: Sequence[int], mode: str = "constant", sigma_scale: float | Sequence[float] = 0.125
) -> np.ndarray:
    """The weight of each voxel of a window when windows are blended: MONAI's ``compute_importance_map``.

    ``"constant"``: ones. ``"gaussian"``: the product over axes of ``exp(-d² / (2 sigma²))``,
    ``d = i - (roi - 1) / 2`` the distance of voxel ``i`` from the window's centre and
    ``sigma = sigma_scale * roi``. Then every weight below ``1e-3`` is raised to ``1e-3``.

    Two things MONAI ≥ 1.1 does that one might not expect (and older MONAI did differently):

    * the map is **not** normalised to a maximum of 1: along an even-sized axis the centre
      lies between two voxels, so the largest weight is ``exp(-0.25 / (2 sigma²))`` per such
      axis, slightly below 1 (the blend is a ratio, so only the floor notices the scale);
    * the floor is the constant ``1e-3`` (``max(min(map), 1e-3)``), **not** the map's smallest
      nonzero value as in MONAI < 0.9, where the Gaussian was also normalised to peak at 1.
      With the default ``sigma_scale=0.125`` the corners of a window fall far below ``1e-3``
      (``exp(-16) ≈ 1e-7`` per axis at the edge), so the floor sets a whole shell of weights.

    Returns:
        A new float32 array of shape ``roi_size``.

    Raises:
        InvalidParameter: unknown ``mode``; ``sigma_scale`` not one finite positive number or
            one per axis (checked for ``"gaussian"`` only).
    """
    roi = tuple(int(r) for r in roi_size)
    if mode not in BLEND_MODES:
        raise InvalidParameter(f"mode={mode!r}: expected one of {', '.join(BLEND_MODES)}")
    if mode == "constant":
        weights = np.ones(roi, dtype=np.float32)
    else:
        scales = _per_axis(sigma_scale, len(roi), "sigma_scale")
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise InvalidParameter(f"sigma_scale={sigma_scale!r}: every value must be finite and positive")
        weights = np.ones((), dtype=np.float32)
        for r, scale in zip(roi, scales):
            # torch's arithmetic: the exponent in float32, exp correctly rounded to float32 (as
            # float64 then rounded); this gives MONAI's weights bit for bit
            d = np.arange(r, dtype=np.float32) - np.float32((r - 1) / 2.0)
            sigma = r * scale
            exponent = d * d / np.float32(-2 * sigma**2)
            g = np.exp(exponent.astype(np.float64)).astype(np.float32)
            weights = weights[..., None] * g
    floor = np.float32(max(float(weights.min()), IMPORTANCE_FLOOR))
    return np.maximum(weights, floor).astype(np.float32, copy=False)


def _check_inputs(inputs: Any) -> np.ndarray:
    if not isinstance(inputs, np.ndarray):
        raise InvalidParameter(f"inputs must be a numpy array, not {type(inputs).__name__}")
    if inputs.ndim < 3:
        raise InvalidParameter(
            f"inputs must be (N, C, *spatial) with at least one spatial axis; got shape {inputs.shape}"
        )
    if inputs.dtype.kind not in "buif":
        raise InvalidParameter(f"inputs has dtype {inputs.dtype}; a real (bool, integer or float) dtype is needed")
    if 0 in inputs.shape:
        raise InvalidParameter(f"inputs is empty: shape {inputs.shape}")
    return np.asarray(inputs, dtype=np.float32)


def _resolve_roi(roi_size: Any, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """``roi_size`` as one positive int per spatial axis, ``None``/≤ 0 replaced by the image's size."""
    if roi_size is None or isinstance(roi_size, numbers.Integral):
        roi_size = (roi_size,) * len(spatial)
    elif not isinstance(roi_size, Sequence) or isinstance(roi_size, str):
        raise InvalidParameter(f"roi_size={roi_size!r} is not an int or a sequence of ints")
    if len(roi_size) != len(spatial):
        raise InvalidParameter(
            f"roi_size={tuple(roi_size)!r} has {len(roi_size)} values; "
            f"inputs have {len(spatial)} spatial axes {spatial}"
        )
    roi = []
    for r, s in zip(roi_size, spatial):
        if r is not None and (isinstance(r, bool) or not isinstance(r, numbers.Integral)):
            raise InvalidParameter(f"roi_size={tuple(roi_size)!r}: {r!r} is not an int or None")
        roi.append(int(r) if r is not None and r > 0 else s)
    return tuple(roi)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidParameter(f"{name}={value!r} must be an int ≥ 1")
    return int(value)


def _per_axis(value: Any, ndim: int, name: str) -> tuple[float, ...]:
    """One real number repeated ``ndim`` times, or a sequence of ``ndim`` real numbers."""
    values = (value,) * ndim if isinstance(value, numbers.Real) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != ndim:
        raise InvalidParameter(f"{name}={value!r}: expected one number or {ndim} (one per spatial axis)")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
        raise InvalidParameter(f"{name}={value!r} is not a number or a sequence of numbers")
    return tuple(float(v) for v in values)


def _pad(inputs: np.ndarray, pad: list[tuple[int, int]], padding_mode: str, cval: float) -> np.ndarray:
    if not any(before or after for before, after in pad):
        return inputs
    widths = [(0, 0), (0, 0), *pad]
    if padding_mode == "constant":
        return np.pad(inputs, widths, mode="constant", constant_values=cval)
    return np.pad(inputs, widths, mode=PADDING_MODES[padding_mode])


def _check_prediction(raw: Any, batch: int, roi: tuple[int, ...], channels: int | None) -> np.ndarray:
    """The predictor's output as float32, if it keeps the contract of :class:`Predictor`."""
    try:
        predicted = np.asarray(raw)
    except (TypeError, ValueError) as e:
        raise InvalidParameter(f"predictor returned {type(raw).__name__}, not an array") from e
    if predicted.dtype.kind not in "buif":
        raise InvalidParameter(f"predictor returned dtype {predicted.dtype}; real numbers are expected")
    expected = f"(B={batch}, C_out, {', '.join(map(str, roi))})"
    if predicted.ndim != 2 + len(roi):
        raise InvalidParameter(f"predictor returned shape {predicted.shape}; expected {expected}")
    if predicted.shape[0] != batch:
        raise InvalidParameter(
            f"predictor returned a batch of {predicted.shape[0]} for {batch} windows: "
            f"shape {predicted.shape}, expected {expected}"
        )
    if predicted.shape[2:] != roi:
        raise InvalidParameter(
            f"predictor returned spatial shape {predicted.shape[2:]}; expected the window's {roi} (shape {expected})"
        )
    if predicted.shape[1] == 0:
        raise InvalidParameter(f"predictor returned shape {predicted.shape}: no channels")
    if channels is not None and predicted.shape[1] != channels:
        raise InvalidParameter(
            f"predictor returned {predicted.shape[1]} channels; earlier batches had {channels}"
        )
    return predicted.astype(np.float32, copy=False)
