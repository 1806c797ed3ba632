"""Nuclei segmentation of whole-slide tiles: read with a margin, feed the model, keep the centre, overlay.

The seed's per-tile work, as pure functions over a batch of tiles (the worker runs batches in
parallel with Dask and streams the results into :func:`ops.pyramid.write_pyramid`):

1. :func:`read_tiles`: each level-0 tile of ``tile_size`` pixels is read with ``overlap``
   pixels of the slide around it (white past the slide's edges), rounded up to a side the
   model takes (:data:`MODEL_SIDE_MULTIPLE`);
2. :func:`model_input`: the seed's pre-filter, colour to the model's layout: RGB channels first,
   uint8 (the model scales and normalises inside its graph, so the wire carries bytes);
3. the predictor (a :class:`Predictor`, e.g. :class:`ops.triton.TritonPredictor` on
   ``nuclei_unet``): ``(B, 3, S, S)`` uint8 in, ``(B, 1, S, S)`` float probabilities out;
4. :func:`segment_tiles` crops each probability map back to its tile (the margin only gave
   the model context across tile borders: a nucleus cut by a border is seen whole by both
   tiles) and overlays it on the tile's own pixels (:func:`ops.overlay.overlay_nuclei`).

Tiles without tissue skip the model and are written as read.
Conventions: positions are (y0, x0) level-0 pixels; images (y, x, channel) uint8 RGB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ops.errors import InvalidParameter, ModelShapeMismatch
from ops.overlay import overlay_nuclei
from ops.protocols import Predictor
from ops.tissue import tile_grid, tiles_with_tissue, tissue_mask, validate_tile_size
from ops.wsi import Slide

MODEL_SIDE_MULTIPLE = 8  # the UNet halves its input three times
DEFAULT_THRESHOLD = 0.5  # probability from which a pixel is a nucleus
INPUT_LAYOUTS = ("channels_first", "channels_last")  # (B, 3, S, S) or (B, S, S, 3), out (B, 1, S, S) or (B, S, S, 1)


def validate_overlap(overlap: int, tile_size: int) -> int:
    """``overlap`` if it is an int from 0 to half of ``tile_size``, else InvalidParameter."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap <= tile_size // 2:
        raise InvalidParameter(f"overlap {overlap!r} must be a whole number of pixels from 0 to "
                               f"{tile_size // 2} (half the {tile_size} px tile)")
    return int(overlap)


def tissue_tiles(slide: Slide, tile_size: int, pixel_count_limit: int) -> np.ndarray:
    """Which level-0 tiles of ``tile_size`` pixels hold tissue.

    The mask comes from the slide at no more than ``pixel_count_limit`` pixels (the seed's
    ``--mask-pixel-count-limit``; see :func:`ops.tissue.tissue_mask`).

    Returns:
        A new (rows, cols) bool array over the tile grid, row-major as :func:`ops.tissue.tile_grid`
        (partial tiles at the right and bottom edges included).

    Raises:
        InvalidParameter: a bad tile size or limit; SlideReadError from the slide.
    """
    grid = tile_grid(slide.levels[0].shape_yx, tile_size)
    height, width = slide.levels[0].shape_yx
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    kept = tiles_with_tissue(tissue_mask(slide, pixel_count_limit), grid, tile_size)
    out = np.zeros((rows, cols), bool)
    for y0, x0 in kept:
        out[y0 // tile_size, x0 // tile_size] = True
    return out


def model_side(tile_size: int, overlap: int) -> int:
    """The side of the square the model sees for a tile: the tile and its margins, rounded up
    to a multiple of :data:`MODEL_SIDE_MULTIPLE` (the extra pixels come from the slide too)."""
    return -(-(tile_size + 2 * overlap) // MODEL_SIDE_MULTIPLE) * MODEL_SIDE_MULTIPLE


def request_nbytes(batch_size: int, side: int) -> int:
    """Bytes one request of ``batch_size`` tiles of ``side`` pixels moves each way together:
    uint8 RGB in, one float32 probability per pixel out."""
    return batch_size * side * side * (3 * np.dtype(np.uint8).itemsize + np.dtype(np.float32).itemsize)


def read_tiles(slide: Slide, positions: Sequence[tuple[int, int]], tile_size: int, overlap: int) -> np.ndarray:
    """The tiles at ``positions`` with their margins, from level 0.

    Returns:
        A new (len(positions), S, S, 3) uint8 array, S = :func:`model_side`; tile ``i``'s own
        pixels are ``[i, overlap:overlap + tile_size, overlap:overlap + tile_size]``.

    Raises:
        InvalidParameter: a bad tile size or overlap; SlideReadError from the slide.
    """
    tile_size = validate_tile_size(tile_size)
    overlap = validate_overlap(overlap, tile_size)
    side = model_side(tile_size, overlap)
    out = np.empty((len(positions), side, side, 3), np.uint8)
    for i, (y0, x0) in enumerate(positions):
        out[i] = slide.read_region(0, y0 - overlap, x0 - overlap, side, side)
    return out


def model_input(regions: np.ndarray, input_layout: str = "channels_first") -> np.ndarray:
    """The pre-filter: (B, S, S, 3) uint8 RGB → a new C-contiguous uint8 array in the model's
    layout: (B, 3, S, S) for ``"channels_first"``, (B, S, S, 3) for ``"channels_last"``."""
    if regions.dtype != np.uint8 or regions.ndim != 4 or regions.shape[3] != 3:
        raise InvalidParameter(f"regions must be uint8 (B, S, S, 3), got {regions.dtype}{regions.shape}")
    if input_layout not in INPUT_LAYOUTS:
        raise InvalidParameter(f"input_layout {input_layout!r}: one of {', '.join(INPUT_LAYOUTS)}")
    if input_layout == "channels_last":
        return np.array(regions, order="C")
    return np.ascontiguousarray(regions.transpose(0, 3, 1, 2))


def segment_tiles(slide: Slide, positions: Sequence[tuple[int, int]], tissue: Sequence[bool], tile_size: int,
                  overlap: int, predictor: Predictor, threshold: float = DEFAULT_THRESHOLD,
                  input_layout: str = "channels_first") -> list[np.ndarray]:
    """Segment a batch of level-0 tiles and lay the nuclei over them.

    Args:
        slide: the open slide.
        positions: (y0, x0) of each tile, level-0 pixels.
        tissue: per tile, whether it holds tissue; only those go to the predictor.
        tile_size, overlap: see :func:`read_tiles`.
        predictor: the model (see :class:`ops.protocols.Predictor`): ``(B, 3, S, S)`` uint8 RGB in,
            ``(B, 1, S, S)`` float nucleus probabilities out (``(B, S, S, 3)`` and
            ``(B, S, S, 1)`` with ``input_layout="channels_last"``); called once with every
            tissue tile.
        threshold: the probability from which a pixel is a nucleus, above 0 and below 1.
        input_layout: ``"channels_first"`` or ``"channels_last"``, the model's.

    Returns:
        One new (h, w, 3) uint8 tile per position, cut to the slide's edge (h, w ≤ tile_size):
        the slide's pixels, with nuclei tinted and outlined on tissue tiles.

    Raises:
        InvalidParameter: bad sizes, or ``positions`` and ``tissue`` of different lengths.
        ModelShapeMismatch: the predictor's answer is not (B, 1, S, S).
        SlideReadError, and whatever the predictor raises (InferenceError), unchanged.
    """
    if len(positions) != len(tissue):
        raise InvalidParameter(f"{len(positions)} positions but {len(tissue)} tissue flags")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise InvalidParameter(f"threshold {threshold!r}: a probability above 0 and below 1")
    regions = read_tiles(slide, positions, tile_size, overlap)
    inside = slice(overlap, overlap + tile_size)
    tiles = [region[inside, inside] for region in regions]
    chosen = [i for i, flag in enumerate(tissue) if flag]
    if chosen:
        batch = model_input(regions[chosen], input_layout)
        probability = np.asarray(predictor(batch))
        side = regions.shape[1:3]
        last = input_layout == "channels_last"
        expected = (len(chosen), *side, 1) if last else (len(chosen), 1, *side)
        if probability.shape != expected:
            raise ModelShapeMismatch(f"the nuclei model returned {probability.shape} for a {batch.shape} batch; "
                                     f"expected {expected}")
        maps = probability[..., 0] if last else probability[:, 0]
        for i, tile_probability in zip(chosen, maps[:, inside, inside]):
            tiles[i] = overlay_nuclei(tiles[i], tile_probability, threshold=threshold)
    height, width = slide.levels[0].shape_yx
    return [tile[: min(tile_size, height - y0), : min(tile_size, width - x0)]
            for tile, (y0, x0) in zip(tiles, positions)]
