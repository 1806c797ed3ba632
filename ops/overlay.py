"""A segmentation laid over the image it came from: a tint over the mask, its outline drawn.

:func:`blend` is the one colour blend of the house (the CT previews of :mod:`ops.preview` use
it too); :func:`overlay_nuclei` lays a nuclei probability map over its pathology tile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ops.errors import InvalidParameter

NUCLEI_RGB = (0, 255, 0)
NUCLEI_ALPHA = 0.4


def _check_colour(colour: Sequence[int], alpha: float) -> None:
    """Raise InvalidParameter unless ``colour`` is three values in 0..255 and ``alpha`` in [0, 1]."""
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise InvalidParameter(f"colour must be three values in 0..255, got {colour}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidParameter(f"alpha must be within [0, 1], got {alpha}")


def blend(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int], alpha: float) -> np.ndarray:
    """``(1 - alpha) * rgb + alpha * colour`` where ``mask`` is true, ``rgb`` elsewhere.

    Args:
        rgb: (y, x, 3) uint8 image.
        mask: (y, x) bool, where to blend.
        colour: the (r, g, b) laid over, each 0..255.
        alpha: the colour's weight, 0 (image only) to 1 (colour only).

    Returns:
        A new (y, x, 3) uint8 array, blended values rounded to the nearest integer.
    """
    _check_colour(colour, alpha)
    out = rgb.copy()
    hit = rgb[mask].astype(np.float32)
    out[mask] = np.rint((1.0 - alpha) * hit + alpha * np.asarray(colour, np.float32)).astype(np.uint8)
    return out


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a (y, x) bool mask that touch, side by side, a pixel outside it.

    The array's border counts as inside: a region cut by a tile's edge gets no line along the
    cut, so tiles written side by side draw no grid through the nuclei they share.
    Returns a new (y, x) bool array.
    """
    inner = np.pad(mask, 1, mode="constant", constant_values=True)
    eroded = inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    return mask & ~eroded


def overlay_nuclei(rgb: np.ndarray, probability: np.ndarray, *, threshold: float = 0.5,
                   colour: Sequence[int] = NUCLEI_RGB, alpha: float = NUCLEI_ALPHA,
                   outline: bool = True) -> np.ndarray:
    """A pathology tile with the nuclei found in it tinted and outlined.

    The mask is ``probability >= threshold``. Inside it the tile is blended with ``colour``
    at ``alpha`` (``alpha=0`` leaves it untouched); with ``outline`` the mask's boundary
    (:func:`mask_outline`) is then drawn in ``colour`` at full strength, so a nucleus stays
    visible through a light tint.

    Args:
        rgb: the tile, (y, x, 3) uint8 (y, x, channel); read, never changed.
        probability: the model's nucleus probability, (y, x) floating point in [0, 1].
        threshold: the probability from which a pixel is a nucleus.
        colour: the (r, g, b) of tint and outline, each 0..255.
        alpha: the tint's weight, 0 to 1.
        outline: whether to draw the mask's boundary.

    Returns:
        A new (y, x, 3) uint8 array.

    Raises:
        InvalidParameter: the arrays' dtypes or shapes, ``threshold``, ``colour`` or ``alpha``.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidParameter(f"rgb must be uint8 (y, x, 3), got {rgb.dtype}{rgb.shape}")
    if not np.issubdtype(probability.dtype, np.floating) or probability.shape != rgb.shape[:2]:
        raise InvalidParameter(f"probability must be floating point {rgb.shape[:2]}, "
                               f"got {probability.dtype}{probability.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidParameter(f"threshold must be within [0, 1], got {threshold}")
    mask = probability >= threshold
    out = blend(rgb, mask, colour, alpha)
    if outline:
        out[mask_outline(mask)] = colour
    return out
