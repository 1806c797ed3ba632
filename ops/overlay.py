"""A segmentation laid over the image it came from: a tint over the mask, its outline drawn.

:func:`blend` is the one colour blend of the house (the CT previews of :mod:`ops.preview` use
it too); :func:`overlay_nuclei` lays a nuclei probability map over its pathology tile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

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
        A new (y, x, 3) uint8 array, blended values rounded to the nearest integer (computed
        in float32).
    """
    _check_colour(colour, alpha)
    return _painted(rgb, mask, colour, alpha, outline=False)


def _painted(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int], alpha: float, outline: bool) -> np.ndarray:
    """A copy of ``rgb`` with ``mask`` tinted (see :func:`blend`) and, with ``outline``, the
    mask's boundary drawn in ``colour``: the mask pixels that touch, side by side, a pixel
    outside it. The array's border counts as inside the mask, so a region cut by a tile's edge
    gets no line along the cut and tiles written side by side draw no grid through the nuclei
    they share."""
    out = rgb.copy()
    tint = np.float32(alpha) * np.asarray(colour, np.float32)
    _paint(rgb, mask, outline, np.asarray(colour, np.uint8), np.float32(1.0 - alpha), tint, out)
    return out


# Compiled at import for any strides (tiles are views of their margins), so no first call compiles.
@njit("void(uint8[:, :, :], boolean[:, :], boolean, uint8[:], float32, float32[:], uint8[:, :, :])",
      nogil=True, cache=True)
def _paint(rgb: np.ndarray, mask: np.ndarray, outline: bool, colour: np.ndarray, keep: np.float32,
           tint: np.ndarray, out: np.ndarray) -> None:
    """Write the mask's pixels of ``out`` (a copy of ``rgb``): the outline in ``colour``, the
    rest ``rint(keep * rgb + tint)`` in float32, as numpy computes the same expression.
    One pass, no temporaries, without the GIL: tiles overlaid on several threads run in
    parallel."""
    height, width = mask.shape
    for y in range(height):
        for x in range(width):
            if not mask[y, x]:
                continue
            if outline and ((y > 0 and not mask[y - 1, x]) or (y + 1 < height and not mask[y + 1, x])
                            or (x > 0 and not mask[y, x - 1]) or (x + 1 < width and not mask[y, x + 1])):
                for c in range(3):
                    out[y, x, c] = colour[c]
            else:
                for c in range(3):
                    out[y, x, c] = np.uint8(np.rint(keep * np.float32(rgb[y, x, c]) + tint[c]))


def overlay_nuclei(rgb: np.ndarray, probability: np.ndarray, *, threshold: float = 0.5,
                   colour: Sequence[int] = NUCLEI_RGB, alpha: float = NUCLEI_ALPHA,
                   outline: bool = True) -> np.ndarray:
    """A pathology tile with the nuclei found in it tinted and outlined.

    The mask is ``probability >= threshold``. Inside it the tile is blended with ``colour``
    at ``alpha`` (``alpha=0`` leaves it untouched); with ``outline`` the mask's boundary (the
    mask pixels that touch one outside it; the tile's border counts as inside) is then drawn
    in ``colour`` at full strength, so a nucleus stays visible through a light tint.

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
    _check_colour(colour, alpha)
    return _painted(rgb, probability >= threshold, colour, alpha, outline)
