"""Small generated whole-slide images for the tests: pink tissue blobs with dark nuclei on glass.

The pixels are a function of level-0 coordinates, so every level is drawn directly (no level is
held whole in memory) and a test can ask what any region should look like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

GLASS_RGB = (255, 255, 255)
TISSUE_RGB = (226, 150, 196)
NUCLEUS_RGB = (84, 44, 132)
# (centre y, centre x, radius y, radius x) as fractions of the slide's height and width.
BLOBS = ((0.30, 0.30, 0.18, 0.22), (0.68, 0.64, 0.20, 0.24))
NUCLEUS_PERIOD = 32  # level-0 pixels between nuclei
NUCLEUS_SIZE = 8


def tissue_at(shape0_yx: tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The (len(ys), len(xs)) bool truth: which level-0 points (ys x xs) lie inside a blob."""
    yy = ys[:, None] / shape0_yx[0]
    xx = xs[None, :] / shape0_yx[1]
    tissue = np.zeros((len(ys), len(xs)), bool)
    for cy, cx, ry, rx in BLOBS:
        tissue |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return tissue


def slide_pixels(shape0_yx: tuple[int, int], ys: np.ndarray, xs: np.ndarray, blank: bool = False) -> np.ndarray:
    """The (len(ys), len(xs), 3) uint8 RGB picture at level-0 rows ``ys`` and columns ``xs``."""
    tissue = tissue_at(shape0_yx, ys, xs) & (not blank)
    dots = ((ys[:, None] % NUCLEUS_PERIOD) < NUCLEUS_SIZE) & ((xs[None, :] % NUCLEUS_PERIOD) < NUCLEUS_SIZE)
    out = np.empty(tissue.shape + (3,), np.uint8)
    out[:] = GLASS_RGB
    out[tissue] = TISSUE_RGB
    out[tissue & dots] = NUCLEUS_RGB
    return out


def _level_tiles(shape0_yx: tuple[int, int], shape_yx: tuple[int, int], tile_yx: tuple[int, int],
                 downsample: int, blank: bool) -> Iterator[np.ndarray]:
    th, tw = tile_yx
    for y0 in range(0, shape_yx[0], th):
        for x0 in range(0, shape_yx[1], tw):
            ys = np.arange(y0, y0 + th) * downsample
            xs = np.arange(x0, x0 + tw) * downsample
            yield slide_pixels(shape0_yx, ys, xs, blank)


def write_slide(path: Path, shape0_yx: tuple[int, int], tile_yx: tuple[int, int] = (256, 256),
                levels: int = 3, compression: str = "jpeg", mpp: float | None = 0.5, blank: bool = False,
                resolution_unit: str = "CENTIMETER") -> Path:
    """Write a tiled pyramidal TIFF that OpenSlide reads as generic-tiff.

    Level ``l`` is level 0 downsampled by ``2**l`` (integer division of the shape), written as a
    reduced-resolution page (SubFileType 1) after level 0. ``mpp`` goes into the resolution
    tags in pixels per ``resolution_unit`` ("CENTIMETER" or "INCH"); None writes no unit.
    """
    import tifffile

    # RGB in; tifffile stores JPEG as YCbCr with 2x2 chroma subsampling, as scanners do.
    options = {"compression": compression, "photometric": "rgb", "metadata": None}
    if compression == "jpeg":
        options["compressionargs"] = {"level": 90}
    if mpp is None:
        options.update(resolution=(1, 1), resolutionunit="NONE")
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            shape = (shape0_yx[0] // 2 ** level, shape0_yx[1] // 2 ** level)
            if mpp is not None:
                per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}[resolution_unit] / (mpp * 2 ** level)
                options.update(resolution=(per_unit, per_unit), resolutionunit=resolution_unit)
            tif.write(_level_tiles(shape0_yx, shape, tile_yx, 2 ** level, blank), shape=shape + (3,),
                      dtype=np.uint8, tile=tile_yx, subfiletype=1 if level else 0, **options)
    return path
