"""Synthetic H&E-stained tissue (nothing is downloaded): a virtual whole slide, rendered region by region.

What the nuclei-seg pipeline and its model (``models/train_nuclei.py``) are built and tested on:
eosin-pink stroma with a fibrous texture, white lumen holes, and dark purple haematoxylin
nuclei of varied size, shape, orientation, density and chromatin, some touching, at about 40×.
Colours follow Beer–Lambert: optical density ``OD = c_H·h + c_E·e + glass`` per channel,
``rgb = 255·exp(−OD)``, then a one-pixel blur and ±3 grey levels of noise.

Every pixel is a pure function of ``(seed, y, x)`` in level-0 coordinates (and of
``slide_shape`` where given), never of the region asked for: fields are hashed lattices
interpolated point by point, nuclei are hashed per cell of a coarse grid and each region draws
those of the cells within reach, the blur is a fixed 3×3 stencil over a one-pixel margin, and
the exponential is a lookup table. Rendering a region in tiles and stitching them is therefore
bit-identical to rendering it at once, nuclei crossing tile borders included.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ops.errors import InvalidParameter

# Macenko's reference stain vectors (optical density per R, G, B, unit length).
HAEMATOXYLIN_OD = (np.array([0.5626, 0.7201, 0.4062]) / np.linalg.norm([0.5626, 0.7201, 0.4062])).astype(np.float32)
EOSIN_OD = (np.array([0.2159, 0.8012, 0.5581]) / np.linalg.norm([0.2159, 0.8012, 0.5581])).astype(np.float32)
GLASS_OD = np.array([0.040, 0.045, 0.030], np.float32)  # empty glass ≈ (245, 244, 247) before noise
STAIN_STRENGTH_RANGE = ((0.8, 1.2), (0.75, 1.25))  # per-slide factors on haematoxylin and eosin
GLASS_STRENGTH_RANGE = (0.8, 1.25)
NOISE_LEVELS = 3  # ± grey levels of per-pixel, per-channel noise

OD_STEPS_PER_UNIT = 256  # lookup resolution: one step is < 1 grey level everywhere
OD_MAX = 6.0  # beyond any stain here
_EXP_TABLE = np.rint(255.0 * np.exp(-np.arange(int(OD_MAX * OD_STEPS_PER_UNIT) + 1) / OD_STEPS_PER_UNIT)).astype(np.int16)

CELL = 32  # pixels a side of the grid nuclei are hashed on
NUCLEI_PER_CELL = 4  # candidates per cell; the density field decides how many exist
SEMI_AXIS_RANGE = (3.0, 10.0)  # pixels: long axes of 6–20 at 40×
PATCH_REACHES = (6, 9, 12)  # half-sizes of the pixel patches nuclei are drawn on, by size
REACH = PATCH_REACHES[-1]  # how far any nucleus paints from its centre's pixel
BLUR_MARGIN = 1  # the 3×3 blur reads one pixel around the region

TISSUE_FRACTION_RANGE = (0.25, 0.45)  # of a slide's area, before holes
TISSUE_OCTAVES = ((1 / 3, 1.0), (1 / 7, 0.5), (1 / 16, 0.25))  # (spacing / slide's longer side, amplitude)
TISSUE_EDGE_OCTAVE = (160.0, 0.06)  # (spacing in pixels, amplitude): a ragged rim
SLIDE_MARGIN = 0.08  # of the longer side: tissue fades out towards the slide's edges
THRESHOLD_SAMPLES = 128  # per axis, to set the threshold that gives the tissue fraction
HOLE_SPACING, HOLE_LEVEL = 70.0, 0.78  # lumen and fat: where a field of this scale is above the level

# Streams: independent hash keys per field, so no two fields are correlated.
_TISSUE, _EDGE, _FIBRE_Y, _FIBRE_X, _FIBRE_MIX, _STROMA, _HOLES, _DENSITY, _CHROMATIN, _NUCLEI, _NOISE, _SLIDE = range(12)


def render_he(y0: int, x0: int, height: int, width: int, *, seed: int,
              slide_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render the region of a virtual H&E slide whose top-left level-0 pixel is ``(y0, x0)``.

    Args:
        y0, x0: the region's first row and column in level-0 pixels; with ``slide_shape``
            the region must lie inside the slide, without it any integers do.
        height, width: the region's size in pixels, ≥ 1.
        seed: the slide (≥ 0): the same seed is the same slide.
        slide_shape: ``(H, W)`` of the whole slide: tissue then covers a few large irregular
            blobs (25–45 % of the slide, fading out at its edges) and the rest is glass, about
            (245, 244, 247) with noise and no nuclei. ``None``: tissue everywhere.

    Returns:
        ``(rgb, nuclei)``: a new C-contiguous uint8 array of shape (height, width, 3), axes
        (y, x, channel) with channels R, G, B; and a bool (height, width) mask of nucleus pixels
        (inside a nucleus's ellipse, on tissue outside holes). Both are functions of the global
        coordinates only: tiles of a region stitch into exactly the region.

    Raises:
        InvalidParameter: a non-integer argument, a size < 1, a negative seed, a malformed
            ``slide_shape``, or a region outside it.
    """
    _check_region(y0, x0, height, width, seed, slide_shape)
    if slide_shape is not None:
        slide_shape = (int(slide_shape[0]), int(slide_shape[1]))  # hashable, for the threshold's cache
    ys = np.arange(y0 - BLUR_MARGIN, y0 + height + BLUR_MARGIN)
    xs = np.arange(x0 - BLUR_MARGIN, x0 + width + BLUR_MARGIN)
    noise = _pixel_noise(seed, ys[1:-1], xs[1:-1])
    glass_od = GLASS_OD * _slide_uniform(seed, 0, *GLASS_STRENGTH_RANGE)
    if slide_shape is not None and _certainly_glass(seed, slide_shape, ys, xs):
        rgb = _od_to_rgb(np.broadcast_to(glass_od, (height, width, 3)), noise)
        return rgb, np.zeros((height, width), bool)

    tissue = np.ones((len(ys), len(xs)), bool) if slide_shape is None else _tissue_mask(seed, slide_shape, ys, xs)
    tissue &= _value_noise(_key(seed, _HOLES), ys, xs, HOLE_SPACING, HOLE_SPACING) < HOLE_LEVEL  # lumen and fat: white holes
    haematoxylin, eosin = _stroma(seed, ys, xs)
    nuclear_h, coverage = _nuclei(seed, ys, xs, slide_shape)
    chromatin = 0.7 + 0.6 * _value_noise(_key(seed, _CHROMATIN), ys, xs, 2.5, 2.5)
    haematoxylin = np.where(tissue, haematoxylin * (1 - coverage) + nuclear_h * chromatin, 0.0)
    eosin = np.where(tissue, eosin * (1 - 0.65 * coverage), 0.0)
    (h_low, h_high), (e_low, e_high) = STAIN_STRENGTH_RANGE
    strength_h, strength_e = _slide_uniform(seed, 1, h_low, h_high), _slide_uniform(seed, 2, e_low, e_high)
    od = (glass_od + strength_h * _blur3(haematoxylin)[..., None] * HAEMATOXYLIN_OD
          + strength_e * _blur3(eosin)[..., None] * EOSIN_OD)
    inner = (slice(BLUR_MARGIN, -BLUR_MARGIN),) * 2
    return _od_to_rgb(od, noise), (coverage >= 0.5)[inner] & tissue[inner]


# --- arguments ----------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_region(y0, x0, height, width, seed, slide_shape) -> None:
    for name, value in (("y0", y0), ("x0", x0), ("height", height), ("width", width), ("seed", seed)):
        if not _is_int(value):
            raise InvalidParameter(f"{name} must be an integer, not {value!r}")
    if height < 1 or width < 1:
        raise InvalidParameter(f"height and width must be ≥ 1, not {height} × {width}")
    if not 0 <= seed < 2 ** 64:
        raise InvalidParameter(f"seed must be in [0, 2**64), not {seed}")
    if slide_shape is None:
        return
    try:
        well_formed = len(slide_shape) == 2 and all(_is_int(n) and n >= 1 for n in slide_shape)
    except TypeError:  # not a sequence at all
        well_formed = False
    if not well_formed:
        raise InvalidParameter(f"slide_shape must be two integers ≥ 1, not {slide_shape!r}")
    if y0 < 0 or x0 < 0 or y0 + height > slide_shape[0] or x0 + width > slide_shape[1]:
        raise InvalidParameter(f"region ({y0}, {x0}) + ({height}, {width}) is outside the slide {tuple(slide_shape)}")


# --- hashing: the only source of randomness -------------------------------------------------

def _mix(h: np.ndarray) -> np.ndarray:
    """Wellons' lowbias32 integer hash, elementwise on uint32 (wrapping arithmetic)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _key(seed: int, stream: int) -> np.uint32:
    """A hash key per (seed, stream); 0 ≤ seed < 2**64."""
    h = np.zeros(1, np.uint32)
    for word in (stream, int(seed) & 0xFFFFFFFF, int(seed) >> 32):
        h = _mix(h ^ np.uint32(word))
    return h[0]


def _hash(key: np.uint32, *coordinates: np.ndarray) -> np.ndarray:
    """uint32 hashes of integer coordinates (broadcast together), one stream per key."""
    h = np.asarray(key, np.uint32)
    for c in coordinates:
        h = _mix(h ^ _mix(np.asarray(c).astype(np.int64).astype(np.uint32) + np.uint32(0x9E3779B9)))
    return h


def _uniform(key: np.uint32, *coordinates: np.ndarray) -> np.ndarray:
    """float32 in [0, 1) from :func:`_hash`."""
    return (_hash(key, *coordinates) >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)


def _slide_uniform(seed: int, index: int, low: float, high: float) -> float:
    """One per-slide parameter in [low, high)."""
    # A one-element array, not a 0-d one: numpy warns of overflow in scalar arithmetic,
    # which the hash relies on (it wraps silently on arrays).
    return low + (high - low) * float(_uniform(_key(seed, _SLIDE), np.array([index]))[0])


def _pixel_noise(seed: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """int16 (len(ys), len(xs), 3) noise in ±NOISE_LEVELS, one hash a pixel (a byte a channel)."""
    h = _mix(_hash(_key(seed, _NOISE), ys)[:, None] ^ _mix(xs.astype(np.int64).astype(np.uint32))[None, :])
    channels = np.stack([(h >> np.uint32(8 * c)) & np.uint32(0xFF) for c in range(3)], axis=-1)
    return (channels % np.uint32(2 * NOISE_LEVELS + 1)).astype(np.int16) - NOISE_LEVELS


# --- smooth fields --------------------------------------------------------------------------

def _lattice(coordinates: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice cell index (int64) and smoothstep weight (float32) of each coordinate."""
    position = coordinates / spacing
    index = np.floor(position)
    t = (position - index).astype(np.float32)
    return index.astype(np.int64), t * t * (3 - 2 * t)


def _value_noise(key: np.uint32, ys: np.ndarray, xs: np.ndarray, spacing_y: float, spacing_x: float) -> np.ndarray:
    """float32 (len(ys), len(xs)) smooth noise in [0, 1] on the grid ``ys × xs`` (ascending
    coordinates): hashed lattice values ``spacing`` pixels apart, interpolated with smoothstep.

    Each value depends on its own coordinates only (elementwise operations, no reductions),
    so any grid through a point gives that point the same bits.
    """
    iy, ty = _lattice(ys, spacing_y)
    ix, tx = _lattice(xs, spacing_x)
    rows = np.arange(iy[0], iy[-1] + 2)
    columns = np.arange(ix[0], ix[-1] + 2)
    values = _uniform(key, rows[:, None], columns[None, :])
    jx = ix - columns[0]
    along_x = values[:, jx] + (values[:, jx + 1] - values[:, jx]) * tx
    jy = iy - rows[0]
    return along_x[jy] + (along_x[jy + 1] - along_x[jy]) * ty[:, None]


def _lattice_max(key: np.uint32, ys: np.ndarray, xs: np.ndarray, spacing: float) -> float:
    """An upper bound of :func:`_value_noise` over the grid: its largest lattice value there
    (smoothstep interpolation is a convex combination of the corners)."""
    iy, _ = _lattice(ys, spacing)
    ix, _ = _lattice(xs, spacing)
    rows = np.arange(iy[0], iy[-1] + 2)
    columns = np.arange(ix[0], ix[-1] + 2)
    return float(_uniform(key, rows[:, None], columns[None, :]).max())


def _edge_fade(coordinates: np.ndarray, length: int, longer_side: int) -> np.ndarray:
    """float32 penalty rising from 0 to 1.5 over the last SLIDE_MARGIN of the slide on each side."""
    distance = np.minimum(coordinates, length - 1 - coordinates) / (SLIDE_MARGIN * longer_side)
    return (1.5 * np.clip(1 - distance, 0, 1) ** 2).astype(np.float32)


def _tissue_field(seed: int, slide_shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The low-frequency field whose high part is tissue, in slide-relative coordinates."""
    longer = max(slide_shape)
    field = sum(amplitude * _value_noise(_key(seed, _TISSUE + 100 * i), ys, xs, longer * spacing, longer * spacing)
                for i, (spacing, amplitude) in enumerate(TISSUE_OCTAVES))
    spacing, amplitude = TISSUE_EDGE_OCTAVE
    field = field + amplitude * _value_noise(_key(seed, _EDGE), ys, xs, spacing, spacing)
    return field - _edge_fade(ys, slide_shape[0], longer)[:, None] - _edge_fade(xs, slide_shape[1], longer)[None, :]


@functools.lru_cache(maxsize=64)
def _tissue_threshold(seed: int, slide_shape: tuple[int, int]) -> float:
    """The field value above which the slide's tissue fraction (drawn per seed) lies."""
    fraction = _slide_uniform(seed, 3, *TISSUE_FRACTION_RANGE)
    ys, xs = ((np.arange(THRESHOLD_SAMPLES) + 0.5) * n / THRESHOLD_SAMPLES for n in slide_shape)
    return float(np.quantile(_tissue_field(seed, slide_shape, ys, xs), 1 - fraction))


def _tissue_mask(seed: int, slide_shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    return _tissue_field(seed, slide_shape, ys, xs) > _tissue_threshold(seed, tuple(slide_shape))


def _certainly_glass(seed: int, slide_shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> bool:
    """True only if no pixel of the grid is tissue: a cheap bound on :func:`_tissue_field`."""
    longer = max(slide_shape)
    bound = sum(amplitude * _lattice_max(_key(seed, _TISSUE + 100 * i), ys, xs, longer * spacing)
                for i, (spacing, amplitude) in enumerate(TISSUE_OCTAVES))
    spacing, amplitude = TISSUE_EDGE_OCTAVE
    bound += amplitude * _lattice_max(_key(seed, _EDGE), ys, xs, spacing)
    bound -= _edge_fade(ys, slide_shape[0], longer).min() + _edge_fade(xs, slide_shape[1], longer).min()
    # The margin covers float32 rounding in the interpolation, which the bound does not see.
    return bound + 1e-5 <= _tissue_threshold(seed, tuple(slide_shape))


def _stroma(seed: int, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentrations of the stroma: collagen fibres (noise stretched
    along y or x, blended by a slowly turning mix) over a slowly varying base."""
    fibres_y = _value_noise(_key(seed, _FIBRE_Y), ys, xs, 36.0, 2.5)
    fibres_x = _value_noise(_key(seed, _FIBRE_X), ys, xs, 2.5, 36.0)
    mix = np.clip(2.5 * _value_noise(_key(seed, _FIBRE_MIX), ys, xs, 220.0, 220.0) - 0.75, 0, 1)
    fibres = fibres_x + (fibres_y - fibres_x) * mix
    base = _value_noise(_key(seed, _STROMA), ys, xs, 90.0, 90.0)
    eosin = (0.22 + 0.3 * base) * (0.45 + 0.9 * fibres)
    haematoxylin = 0.06 + 0.1 * base * fibres
    return haematoxylin, eosin


# --- nuclei ---------------------------------------------------------------------------------

def _nuclei(seed: int, ys: np.ndarray, xs: np.ndarray, slide_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin of the nuclei and their coverage (float32 (len(ys), len(xs)), coverage in
    [0, 1], ≥ 0.5 inside an ellipse) on the contiguous grid ``ys × xs``.

    Each cell of a CELL-pixel grid holds NUCLEI_PER_CELL candidates hashed from (seed, cell,
    candidate); a smooth density field, sampled at the cell's centre, keeps 5–100 % of them,
    so nuclei cluster and touch in places. Cells out of tissue hold none.
    """
    cell_rows = np.arange((ys[0] - REACH) // CELL, (ys[-1] + REACH) // CELL + 1)
    cell_columns = np.arange((xs[0] - REACH) // CELL, (xs[-1] + REACH) // CELL + 1)
    centres_y, centres_x = cell_rows * CELL + CELL // 2, cell_columns * CELL + CELL // 2
    density = _value_noise(_key(seed, _DENSITY), centres_y, centres_x, 150.0, 150.0)
    keep_probability = np.clip(1.3 * density - 0.25, 0.05, 1.0)
    if slide_shape is not None:
        keep_probability = np.where(_tissue_mask(seed, slide_shape, centres_y, centres_x), keep_probability, 0.0)

    cy, cx, k = np.meshgrid(cell_rows, cell_columns, np.arange(NUCLEI_PER_CELL), indexing="ij")
    h = _hash(_key(seed, _NUCLEI), cy, cx, k)
    draws = _uniform(h, np.arange(10)[:, None, None, None])  # 10 draws per candidate
    kept = draws[0] < keep_probability[:, :, None]
    draws = draws[:, kept]
    centre_y = cy[kept] * CELL + draws[1] * CELL
    centre_x = cx[kept] * CELL + draws[2] * CELL
    lymphocyte = draws[3] < 0.25  # small, round, dark; the others larger, paler, elongated
    low, high = SEMI_AXIS_RANGE
    # d·√d, not d ** 1.5: numpy's float32 power has SIMD kernels (SVML on AVX-512) whose last
    # bit differs from its scalar path and from other CPUs; √ and × are correctly rounded everywhere.
    long_axis = np.where(lymphocyte, low + 1.5 * draws[4], low + 1 + (high - low - 1) * draws[4] * np.sqrt(draws[4]))
    short_axis = long_axis * np.where(lymphocyte, 0.85 + 0.15 * draws[5], 0.45 + 0.45 * draws[5])
    darkness = np.where(lymphocyte, 1.5 + 0.4 * draws[6], 0.8 + 0.6 * draws[6])
    # A direction from two uniforms without trigonometry, whose last bits could depend on the
    # array's length (SIMD tails) and so on the region.
    direction_y, direction_x = 2 * draws[7] - 1, 2 * draws[8] - 1 + 1e-3
    norm = np.sqrt(direction_y ** 2 + direction_x ** 2)
    direction_y, direction_x = direction_y / norm, direction_x / norm

    offsets = np.arange(-REACH, REACH + 1)
    pixel_y = np.floor(centre_y).astype(np.int64)[:, None] + offsets  # (n, 2·REACH + 1)
    pixel_x = np.floor(centre_x).astype(np.int64)[:, None] + offsets
    dy = (pixel_y - centre_y[:, None]).astype(np.float32)[:, :, None]
    dx = (pixel_x - centre_x[:, None]).astype(np.float32)[:, None, :]
    along = (dy * direction_y[:, None, None] + dx * direction_x[:, None, None]) / long_axis[:, None, None]
    across = (dx * direction_y[:, None, None] - dy * direction_x[:, None, None]) / short_axis[:, None, None]
    radius = np.sqrt(along ** 2 + across ** 2)
    # Half a pixel of anti-aliasing at the edge, measured across the short axis.
    coverage = np.clip(0.5 + (1 - radius) * short_axis[:, None, None], 0, 1)
    haematoxylin = coverage * darkness[:, None, None] * (0.8 + 0.35 * np.minimum(radius, 1) ** 2)  # a darker rim

    inside = ((pixel_y >= ys[0]) & (pixel_y <= ys[-1]))[:, :, None] & ((pixel_x >= xs[0]) & (pixel_x <= xs[-1]))[:, None, :]
    flat = ((pixel_y - ys[0])[:, :, None] * len(xs) + (pixel_x - xs[0])[:, None, :])[inside]
    nuclear_h = np.zeros(len(ys) * len(xs), np.float32)
    total_coverage = np.zeros(len(ys) * len(xs), np.float32)
    np.maximum.at(nuclear_h, flat, haematoxylin[inside].astype(np.float32))  # max: independent of order
    np.maximum.at(total_coverage, flat, coverage[inside].astype(np.float32))
    return nuclear_h.reshape(len(ys), len(xs)), total_coverage.reshape(len(ys), len(xs))


# --- composition ----------------------------------------------------------------------------

def _blur3(image: np.ndarray) -> np.ndarray:
    """The 3×3 binomial blur (1 2 1)/4 in y and x; the result is one pixel smaller on each side."""
    along_y = (image[:-2] + 2 * image[1:-1] + image[2:]) * np.float32(0.25)
    return (along_y[:, :-2] + 2 * along_y[:, 1:-1] + along_y[:, 2:]) * np.float32(0.25)


def _od_to_rgb(od: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """uint8 RGB of optical densities (…, 3) by the lookup table, plus noise."""
    index = np.minimum((od * OD_STEPS_PER_UNIT + 0.5).astype(np.int32), len(_EXP_TABLE) - 1)
    return np.clip(_EXP_TABLE[index] + noise, 0, 255).astype(np.uint8)


SLIDE_MPP = 0.25  # microns per pixel at level 0: a 40× scan


def he_slide(path: str | Path, shape_yx: tuple[int, int], seed: int = 0, tile_size: int = 256,
             mpp: float = SLIDE_MPP) -> Path:
    """Write a synthetic H&E whole-slide image (:func:`render_he`: tissue blobs
    on glass, nuclei at 40×) as a JPEG-tiled pyramidal TIFF (:func:`ops.pyramid.write_pyramid`),
    rendered and written tile by tile: memory does not grow with the slide. Returns ``path``.
    """
    from ops.pyramid import write_pyramid

    height, width = shape_yx

    def tiles():
        for row, y0 in enumerate(range(0, height, tile_size)):
            for col, x0 in enumerate(range(0, width, tile_size)):
                rgb, _ = render_he(y0, x0, min(tile_size, height - y0), min(tile_size, width - x0), seed=seed,
                                   slide_shape=(height, width))
                yield row, col, rgb

    return write_pyramid(path, (height, width), tile_size, tiles(), mpp_yx=(mpp, mpp)).path
