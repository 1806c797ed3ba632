"""Where the tissue is: a low-resolution mask of a slide, and the level-0 tiles that fall on it.

The mask skips glass before inference, as the seed's pre-processing does: tissue is stained,
so it is told from glass by colour saturation, thresholded by Otsu's method per slide.
Images are (y, x, channel) uint8 RGB; masks (y, x) bool; tile positions (y0, x0) in level-0
pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from ops.errors import InvalidParameter
from ops.pyramid import TILE_MULTIPLE as TILE_SIZE_MULTIPLE
from ops.wsi import Slide

DEFAULT_PIXEL_COUNT_LIMIT = 1024 * 1024  # the seed's --mask-pixel-count-limit
DEFAULT_MIN_OBJECT_FRACTION = 1e-4  # of the mask's pixels: smaller specks are dust, not tissue
# Otsu always splits something: on a blank slide it would split JPEG noise. Stained tissue is
# well above this (eosin about 0.3), glass below.
MIN_TISSUE_SATURATION = 0.05
GLASS_LEVEL = 220  # a pixel whose darkest channel is this bright or brighter is glass
THUMBNAIL_BLOCK = 2048  # level pixels per side read at once (12 MiB) when building a thumbnail
MAX_TILE_SIZE = 4096


class TissueMask(NamedTuple):
    """A (h, w) bool mask, True on tissue, and the level-0 pixels per mask pixel along (y, x)."""

    mask: np.ndarray
    downsample_yx: tuple[float, float]


def otsu_threshold(values: np.ndarray, bins: int = 256,
                   value_range: tuple[float, float] | None = None) -> float:
    """Otsu's threshold of ``values``: those ``>=`` it form the upper class.

    The histogram has ``bins`` equal bins over ``value_range`` (default: the values' min and
    max); the threshold is the bin edge that maximises the between-class variance (the lowest
    such edge on ties). Constant input gives its value, so nothing lies in a lower class.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    smallest, largest = float(values.min()), float(values.max())
    if largest == smallest:  # also within a value_range, where the histogram would say its first edge
        return smallest
    low, high = value_range if value_range is not None else (smallest, largest)
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    lower_count = np.cumsum(counts)[:-1]
    lower_sum = np.cumsum(counts * centres)[:-1]
    upper_count = counts.sum() - lower_count
    upper_sum = (counts * centres).sum() - lower_sum
    with np.errstate(divide="ignore", invalid="ignore"):
        between = lower_count * upper_count * (lower_sum / lower_count - upper_sum / upper_count) ** 2
    return float(edges[1 + np.argmax(np.nan_to_num(between))])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation, (max - min) / max over the channels of a (h, w, 3) uint8 image.

    Returns a new (h, w) float32 array in [0, 1]; black is 0.
    """
    high = rgb.max(axis=2).astype(np.float32)
    spread = high - rgb.min(axis=2)
    return np.divide(spread, high, out=np.zeros_like(high), where=high > 0)


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """A new (h, w) bool mask of the stained, non-glass pixels of a (h, w, 3) uint8 image."""
    sat = saturation(rgb)
    threshold = max(otsu_threshold(sat, value_range=(0.0, 1.0)), MIN_TISSUE_SATURATION)
    return (sat >= threshold) & (rgb.min(axis=2) < GLASS_LEVEL)


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """A new bool mask without the 8-connected objects of fewer than ``min_size`` pixels."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.zeros(mask.shape, bool)
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    return keep[labels]


def thumbnail(slide: Slide, level: int, factor: int, block: int = THUMBNAIL_BLOCK) -> np.ndarray:
    """``level`` shrunk ``factor`` times by box averaging, read a block at a time.

    Memory is the thumbnail plus one block of at most ``max(block, factor)`` level pixels per
    side, whatever the level's size. Thumbnail pixels on the right and bottom edges average in
    the white beyond the level.

    Returns:
        A new (ceil(h / factor), ceil(w / factor), 3) uint8 RGB array.

    Raises:
        InvalidParameter: factor or block below 1; SlideReadError from the slide.
    """
    if factor < 1 or block < 1:
        raise InvalidParameter(f"thumbnail factor {factor} and block {block} must be >= 1")
    height, width = slide.levels[level].shape_yx
    out = np.empty((-(-height // factor), -(-width // factor), 3), np.uint8)
    step = factor * max(1, block // factor)  # a whole number of thumbnail pixels per block
    for y in range(0, height, step):
        for x in range(0, width, step):
            region = slide.read_region(level, y, x, min(step, _round_up(height - y, factor)),
                                       min(step, _round_up(width - x, factor)))
            shrunk = _box_mean(region, factor)
            out[y // factor:y // factor + shrunk.shape[0], x // factor:x // factor + shrunk.shape[1]] = shrunk
    return out


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _box_mean(region: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor box of a (h, w, 3) uint8 array whose sides divide by factor."""
    h, w = region.shape[0] // factor, region.shape[1] // factor
    sums = region.reshape(h, factor, w, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((sums + factor * factor // 2) // (factor * factor)).astype(np.uint8)


def low_resolution_rgb(slide: Slide, pixel_count_limit: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The slide at no more than ``pixel_count_limit`` pixels, and its level-0 pixels per pixel.

    The largest level that fits is read whole; when none fits (single-level slides), the
    smallest level is shrunk by the smallest integer factor that fits, block by block.
    """
    full_h, full_w = slide.levels[0].shape_yx
    pixels = [lv.shape_yx[0] * lv.shape_yx[1] for lv in slide.levels]
    fitting = [number for number, count in enumerate(pixels) if count <= pixel_count_limit]
    if fitting:
        level = max(fitting, key=lambda number: pixels[number])
        height, width = slide.levels[level].shape_yx
        return slide.read_level(level, max_pixels=pixel_count_limit), (full_h / height, full_w / width)
    level = min(range(len(pixels)), key=lambda number: pixels[number])
    height, width = slide.levels[level].shape_yx
    factor = max(1, math.ceil(math.sqrt(pixels[level] / pixel_count_limit)))
    while -(-height // factor) * -(-width // factor) > pixel_count_limit:
        factor += 1
    return thumbnail(slide, level, factor), (full_h / height * factor, full_w / width * factor)


def tissue_mask(slide: Slide, pixel_count_limit: int = DEFAULT_PIXEL_COUNT_LIMIT,
                min_object_fraction: float = DEFAULT_MIN_OBJECT_FRACTION) -> TissueMask:
    """The slide's tissue at low resolution (at most ``pixel_count_limit`` mask pixels).

    Tissue is saturation at or above Otsu's threshold (and at least MIN_TISSUE_SATURATION)
    that is not near-white glass, without the objects smaller than ``min_object_fraction`` of
    the mask. A slide with no tissue gives an all-False mask.

    Raises:
        InvalidParameter: pixel_count_limit below 1 or min_object_fraction outside [0, 1].
        SlideReadError: from the slide.
    """
    if pixel_count_limit < 1:
        raise InvalidParameter(f"pixel_count_limit {pixel_count_limit} must be >= 1")
    if not 0.0 <= min_object_fraction <= 1.0:
        raise InvalidParameter(f"min_object_fraction {min_object_fraction} must be in [0, 1]")
    rgb, downsample_yx = low_resolution_rgb(slide, pixel_count_limit)
    min_size = math.ceil(min_object_fraction * rgb.shape[0] * rgb.shape[1])
    return TissueMask(remove_small_objects(tissue_pixels(rgb), min_size), downsample_yx)


def validate_tile_size(tile_size: int) -> int:
    """``tile_size`` if it is a positive multiple of TILE_SIZE_MULTIPLE (the pyramid writer's) up to
    MAX_TILE_SIZE; else InvalidParameter."""
    if (isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer))
            or not 0 < tile_size <= MAX_TILE_SIZE or tile_size % TILE_SIZE_MULTIPLE):
        raise InvalidParameter(f"tile_size {tile_size!r} must be a multiple of {TILE_SIZE_MULTIPLE} "
                               f"from {TILE_SIZE_MULTIPLE} to {MAX_TILE_SIZE}")
    return int(tile_size)


def tile_grid(shape_yx: tuple[int, int], tile_size: int) -> list[tuple[int, int]]:
    """Row-major (y0, x0) of the tile_size tiles covering a (height, width) image.

    The last row and column are partial where the size does not divide.

    Raises:
        InvalidParameter: a bad tile_size (see validate_tile_size) or an empty shape.
    """
    tile_size = validate_tile_size(tile_size)
    height, width = shape_yx
    if height < 1 or width < 1:
        raise InvalidParameter(f"shape {shape_yx} must be at least 1x1")
    return [(y, x) for y in range(0, height, tile_size) for x in range(0, width, tile_size)]


def tiles_with_tissue(mask: TissueMask, tiles: Sequence[tuple[int, int]], tile_size: int,
                      min_fraction: float = 0.0) -> list[tuple[int, int]]:
    """The tiles, in their order, whose footprint on the mask is tissue.

    A tile's footprint is every mask pixel it touches (at least one). It is kept when it holds
    tissue and the tissue is at least ``min_fraction`` of it (0: any tissue).

    Raises:
        InvalidParameter: a bad tile_size, or min_fraction outside [0, 1].
    """
    tile_size = validate_tile_size(tile_size)
    if not 0.0 <= min_fraction <= 1.0:
        raise InvalidParameter(f"min_fraction {min_fraction} must be in [0, 1]")
    if not tiles:
        return []
    corners = np.asarray(tiles, dtype=np.float64).reshape(-1, 2)
    tissue = mask.mask
    # A summed-area table counts each footprint's tissue in constant time.
    table = np.zeros((tissue.shape[0] + 1, tissue.shape[1] + 1), np.int64)
    table[1:, 1:] = tissue.cumsum(axis=0).cumsum(axis=1)
    (top, bottom), (left, right) = (_footprint(corners[:, axis], tile_size, mask.downsample_yx[axis], tissue.shape[axis])
                                    for axis in (0, 1))
    count = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    keep = (count > 0) & (count >= min_fraction * (bottom - top) * (right - left))
    return [tile for tile, kept in zip(tiles, keep) if kept]


def _footprint(starts: np.ndarray, tile_size: int, downsample: float, length: int) -> tuple[np.ndarray, np.ndarray]:
    """First and past-the-end mask indices along one axis of tiles starting at ``starts``."""
    first = np.clip(np.floor(starts / downsample), 0, length - 1).astype(np.int64)
    end = np.clip(np.ceil((starts + tile_size) / downsample), first + 1, length).astype(np.int64)
    return first, end
