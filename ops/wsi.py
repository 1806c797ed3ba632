"""Whole-slide images: the pyramid's levels, microns per pixel, and RGB regions of any level.

One :class:`Slide` hides two readers:

* **tifffile** (the fast path) for tiled TIFF and Aperio SVS pages in a compression and colour
  model held equal to OpenSlide's output (JPEG with or without JPEGTables, Aperio's RGB JPEG,
  YCbCr JPEG, none, LZW, Deflate, PackBits, LZMA, Zstd, WebP): each tile's bytes are read with
  ``os.pread`` (no shared file position, so threads read without a lock), decoded by
  imagecodecs (which releases the GIL) and kept in a small LRU of decoded tiles.
* **openslide** for everything else (MIRAX, NDPI, Philips, Leica, Ventana, JPEG 2000, strips).

Conventions of every function here: images are C-ordered uint8 arrays indexed
**(y, x, channel)**, channels RGB; positions and sizes are (y, x) in pixels of the level read;
whatever lies outside the level is white (255).

A Slide may be shared by any number of threads (tifffile path: no shared state but a locked
cache; OpenSlide documents ``openslide_t`` as safe to use concurrently), but must not be closed
while reads are in flight.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

from ops.errors import InvalidParameter, SlideOpenError, SlideReadError

BACKENDS = ("tifffile", "openslide")
WHITE = 255
DEFAULT_CACHE_BYTES = 64 * 2**20  # about 340 decoded 256x256 RGB tiles
DEFAULT_MAX_LEVEL_PIXELS = 16 * 2**20
# TIFF compressions whose decoded pixels need no colour handling beyond what tifffile does
# (JPEG's YCbCr and Aperio's RGB JPEG); JPEG 2000 (Aperio's YCbCr variant) goes to OpenSlide.
FAST_COMPRESSIONS = frozenset({1, 5, 7, 8, 32773, 32946, 34925, 50000, 50001})
# tifffile series kinds whose first series is the slide as OpenSlide sees it: vendor formats
# with their own layout rules (NDPI, SCN, BIF, Philips) go to OpenSlide.
FAST_SERIES_KINDS = frozenset({"generic", "uniform", "shaped", "svs", "ome"})
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR, _COMPRESSION_JPEG = 2, 6, 7
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_MICRONS_PER_UNIT = {2: 25400.0, 3: 10000.0}  # ResolutionUnit inch, centimetre
_X_RESOLUTION, _Y_RESOLUTION = 282, 283  # TIFF tag codes


class Level(NamedTuple):
    """One pyramid level: its (height, width), level-0 pixels per pixel, native tile (h, w)."""

    shape_yx: tuple[int, int]
    downsample: float
    tile_shape_yx: tuple[int, int] | None


class _Reader(Protocol):
    def read(self, level: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """A new (height, width, 3) uint8 RGB array; arguments already validated."""

    def stored_jpeg(self, level: int, row: int, col: int) -> bytes | None:
        """See :meth:`Slide.stored_jpeg`; arguments already validated."""

    def close(self) -> None:
        ...


class Slide:
    """An open whole-slide image; make one with :func:`open_slide`.

    Attributes:
        path: the file.
        levels: level 0 (full resolution) first.
        mpp_yx: microns per pixel of level 0 along (y, x), or None when the file does not say.
        backend: ``"tifffile"`` or ``"openslide"``, the reader in use.
    """

    def __init__(self, path: Path, levels: tuple[Level, ...], mpp_yx: tuple[float, float] | None,
                 backend: str, reader: _Reader) -> None:
        self.path = path
        self.levels = levels
        self.mpp_yx = mpp_yx
        self.backend = backend
        self._reader = reader

    def read_region(self, level: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Read a (height, width) region of ``level`` whose top-left pixel is (y0, x0).

        The region may reach past the level's edges (negative y0/x0 included): that part is
        white, so tiles with an overlap margin can be read anywhere.

        Returns:
            A new (height, width, 3) uint8 RGB array.

        Raises:
            InvalidParameter: no such level, or a size below 1.
            SlideReadError: the slide is closed, or a tile cannot be read or decoded.
        """
        level = self._level_number(level)
        y0, x0, height, width = (_integer(v, name) for v, name in zip((y0, x0, height, width),
                                                                       ("y0", "x0", "height", "width")))
        if height < 1 or width < 1:
            raise InvalidParameter(f"{self.path.name}: region size {height}x{width} must be at least 1x1")
        return self._reader.read(level, y0, x0, height, width)

    def read_level(self, level: int, max_pixels: int = DEFAULT_MAX_LEVEL_PIXELS) -> np.ndarray:
        """The whole of ``level`` as a new (height, width, 3) uint8 RGB array.

        Raises:
            InvalidParameter: no such level, or the level has more than ``max_pixels`` pixels
                (read it by regions instead).
            SlideReadError: as :meth:`read_region`.
        """
        height, width = self.levels[self._level_number(level)].shape_yx
        if height * width > max_pixels:
            raise InvalidParameter(f"{self.path.name}: level {level} is {height}x{width}, over the "
                                   f"{max_pixels} pixels that may be read whole; read it by regions")
        return self.read_region(level, 0, 0, height, width)

    def stored_jpeg(self, level: int, row: int, col: int) -> bytes | None:
        """Tile (``row``, ``col``) of ``level``'s own tile grid as the file stores it, when that is
        a JPEG: one whole JPEG stream (the level's shared tables, TIFF's JPEGTables, put back
        in), of the full tile, undecoded. None when the slide is read through OpenSlide, the
        level is not JPEG-compressed, or the file holds no such tile (glass left out).

        What the stream decodes to is the tile's pixels only under the level's own tags
        (photometric, subsampling): whoever stores it elsewhere checks that first.

        Raises:
            InvalidParameter: no such level or tile.
            SlideReadError: the slide is closed, or the tile's bytes cannot be read.
        """
        number = self._level_number(level)
        (height, width), tile = self.levels[number].shape_yx, self.levels[number].tile_shape_yx
        if tile is None:  # no tile grid the reader knows of
            return None
        row, col = _integer(row, "row"), _integer(col, "col")
        if not (0 <= row < -(-height // tile[0]) and 0 <= col < -(-width // tile[1])):
            raise InvalidParameter(f"{self.path.name}: level {level} has no tile ({row}, {col})")
        return self._reader.stored_jpeg(number, row, col)

    def _level_number(self, level: Any) -> int:
        number = _integer(level, "level")
        if not 0 <= number < len(self.levels):
            raise InvalidParameter(f"{self.path.name}: level {level} out of range (0..{len(self.levels) - 1})")
        return number

    def close(self) -> None:
        """Release the file; later reads raise SlideReadError. Idempotent."""
        self._reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What OpenSlide opens by name (a DICOM slide is a folder of .dcm files: give one of them).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")


def find_slide(path: str | Path) -> Path:
    """The input slide: the file itself, or the one slide file inside a folder (the seed's /input,
    which also holds config_render.json).

    Raises:
        SlideOpenError: the folder holds no slide file, or several.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES)
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or f"none of {', '.join(SLIDE_SUFFIXES)}"
        raise SlideOpenError(f"input folder {path} must hold one slide file; it holds {names}")
    return found[0]


def open_slide(path: str | Path, backend: str | None = None,
               cache_bytes: int = DEFAULT_CACHE_BYTES) -> Slide:
    """Open a whole-slide image with the fast tifffile reader where it applies, else OpenSlide.

    Args:
        path: the slide file (TIFF, SVS, or any format OpenSlide opens).
        backend: force ``"tifffile"`` or ``"openslide"``; None picks tifffile when it can.
        cache_bytes: bound on the decoded tiles kept by the tifffile reader (0: none kept).

    Raises:
        SlideOpenError: missing file, not a slide, no reader opens it, or its tile data runs
            past the end of the file (truncated).
        InvalidParameter: an unknown backend or a negative cache size.
    """
    path = Path(path)
    if backend not in (None, *BACKENDS):
        raise InvalidParameter(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if cache_bytes < 0:
        raise InvalidParameter(f"cache_bytes {cache_bytes} must be >= 0")
    if not path.is_file():
        raise SlideOpenError(f"slide {path} does not exist or is not a file")
    reasons = []
    if backend in (None, "tifffile"):
        try:
            return _open_with_tifffile(path, cache_bytes)
        except _Declined as e:
            reasons.append(f"tifffile: {e}")
    if backend in (None, "openslide"):
        try:
            return _open_with_openslide(path)
        except _Declined as e:
            reasons.append(f"openslide: {e}")
    raise SlideOpenError(f"{path}: not a slide any reader opens ({'; '.join(reasons)})")


class _Declined(Exception):
    """A reader declines the file; the message says why (gathered into the SlideOpenError)."""


def _integer(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):  # True is an int to Python, never a level or a size here
        raise InvalidParameter(f"{name} must be an integer, got {value!r}")
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise InvalidParameter(f"{name} must be an integer, got {value!r}") from None


# --------------------------------------------------------------------------- tifffile, fast path


@dataclass(frozen=True)
class _TiffLevel:
    shape_yx: tuple[int, int]
    tile_yx: tuple[int, int]
    columns: int  # tiles per row
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    decode: Callable[..., Any]  # tifffile's page.decode closure: pure, safe across threads
    jpegtables: bytes | None
    jpegheader: bytes | None
    jpeg: bool  # the tiles are JPEG streams (compression 7)


class TileCache:
    """A thread-safe LRU of decoded tiles bounded by their total bytes.

    Tiles are stored read-only, so a caller that copies out of them cannot corrupt the cache.
    Two threads missing the same tile both decode it: rarer and cheaper than holding a lock
    across a decode, which would serialise the threads.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        tile.flags.writeable = False
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = tile
            self.nbytes += tile.nbytes
            while self.nbytes > self.max_bytes:
                _, evicted = self._tiles.popitem(last=False)
                self.nbytes -= evicted.nbytes


class _TiffReader:
    """Regions assembled from natively decoded tiles; see the module docstring."""

    def __init__(self, path: Path, levels: list[_TiffLevel], cache_bytes: int) -> None:
        self._path = path
        self._levels = levels
        self._cache = TileCache(cache_bytes)
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, level: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        if self._fd < 0:  # checked here too: cached tiles would otherwise still be served
            raise SlideReadError(f"{self._path}: the slide is closed")
        tiff_level = self._levels[level]
        (level_h, level_w), (tile_h, tile_w) = tiff_level.shape_yx, tiff_level.tile_yx
        ya, yb = max(y0, 0), min(y0 + height, level_h)
        xa, xb = max(x0, 0), min(x0 + width, level_w)
        inside = (ya, yb, xa, xb) == (y0, y0 + height, x0, x0 + width)
        if inside and (height, width) == (tile_h, tile_w) and y0 % tile_h == x0 % tile_w == 0:
            return self._whole_tile(level, (y0 // tile_h) * tiff_level.columns + x0 // tile_w)
        out = np.empty((height, width, 3), np.uint8)
        if not inside:
            out.fill(WHITE)
        if ya >= yb or xa >= xb:
            return out
        for row in range(ya // tile_h, (yb - 1) // tile_h + 1):
            for col in range(xa // tile_w, (xb - 1) // tile_w + 1):
                ty, tx = row * tile_h, col * tile_w
                sy, ey = max(ya, ty), min(yb, ty + tile_h)
                sx, ex = max(xa, tx), min(xb, tx + tile_w)
                tile = self._tile(level, row * tiff_level.columns + col)
                target = out[sy - y0:ey - y0, sx - x0:ex - x0]
                if tile is None:
                    target.fill(WHITE)
                else:
                    target[...] = tile[sy - ty:ey - ty, sx - tx:ex - tx]
        return out

    def stored_jpeg(self, level: int, row: int, col: int) -> bytes | None:
        tiff_level = self._levels[level]
        index = row * tiff_level.columns + col
        if not tiff_level.jpeg or tiff_level.jpegheader or tiff_level.counts[index] == 0:
            return None
        data = self._stored(level, index)
        tables = tiff_level.jpegtables
        if not (data.startswith(_JPEG_SOI) and (not tables or (tables.startswith(_JPEG_SOI)
                                                               and tables.endswith(_JPEG_EOI)))):
            return None
        # The abbreviated tile after the tables' own markers: SOI, tables, then the tile's frame.
        return tables[:-2] + data[2:] if tables else data

    def _whole_tile(self, level: int, index: int) -> np.ndarray:
        """A new writable array of one whole tile inside the level, not cached: the decoder's
        own where it is writable (JPEG's), so the tile is not copied.

        A whole tile is what a stage without margins reads, each tile once: caching it would
        only copy it and push out the tiles that reads with margins share.
        """
        tile = self._tile(level, index, keep=False)
        if tile is None:
            return np.full(self._levels[level].tile_yx + (3,), WHITE, np.uint8)
        return tile if tile.flags.writeable else tile.copy()  # cached tiles are read-only

    def _tile(self, level: int, index: int, keep: bool = True) -> np.ndarray | None:
        """The decoded (tile_h, tile_w, 3) tile, or None for a tile absent from the file (glass);
        from the cache where it holds the tile, else decoded and, with ``keep``, cached."""
        if self._levels[level].counts[index] == 0:
            return None
        tile = self._cache.get((level, index))
        if tile is None:
            tile = self._decode(level, index)
            if keep:
                self._cache.put((level, index), tile)
        return tile

    def _stored(self, level: int, index: int) -> bytes:
        """The tile's bytes as the file holds them."""
        tiff_level = self._levels[level]
        where = f"{self._path}: level {level} tile {index}"
        if self._fd < 0:
            raise SlideReadError(f"{self._path}: the slide is closed")
        count, offset = tiff_level.counts[index], tiff_level.offsets[index]
        try:
            data = os.pread(self._fd, count, offset)
        except OSError as e:
            raise SlideReadError(f"{where}: cannot read {count} bytes at {offset}: {e}") from e
        if len(data) != count:
            raise SlideReadError(f"{where}: {len(data)} of {count} bytes at {offset} (file truncated)")
        return data

    def _decode(self, level: int, index: int) -> np.ndarray:
        tiff_level = self._levels[level]
        data = self._stored(level, index)
        try:
            segment = tiff_level.decode(data, index, jpegtables=tiff_level.jpegtables,
                                        jpegheader=tiff_level.jpegheader)[0]
        # imagecodecs' codec errors are RuntimeErrors, tifffile's are ValueErrors.
        except (RuntimeError, ValueError, NotImplementedError) as e:
            raise SlideReadError(f"{self._path}: level {level} tile {index}: cannot be decoded: {e}") from e
        return segment.reshape(tiff_level.tile_yx + (3,))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache = TileCache(0)  # drop the decoded tiles


def _open_with_tifffile(path: Path, cache_bytes: int) -> Slide:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            levels = _fast_levels(tif, path)
            mpp_yx = _tiff_mpp(tif)
    # struct.error: tifffile reading a header or IFD offset cut short by the end of the file.
    except (tifffile.TiffFileError, ValueError, OSError, struct.error) as e:
        raise _Declined(f"not a TIFF it can parse ({e})") from e
    full_h, full_w = levels[0].shape_yx
    pyramid = tuple(Level(lv.shape_yx, _downsample((full_h, full_w), lv.shape_yx), lv.tile_yx) for lv in levels)
    return Slide(path, pyramid, mpp_yx, "tifffile", _TiffReader(path, levels, cache_bytes))


def _fast_levels(tif: Any, path: Path) -> list[_TiffLevel]:
    """The first series' levels, each a single tiled page the fast path decodes.

    Raises:
        _Declined: the layout, pixel format or compression is not one the fast path takes.
        SlideOpenError: tile data lies past the end of the file (a truncated file).
    """
    if not tif.series or tif.series[0].kind not in FAST_SERIES_KINDS:
        raise _Declined(f"layout {tif.series[0].kind if tif.series else 'without images'!r} left to OpenSlide")
    size = path.stat().st_size
    _check_ifd_chain(tif, path, size)
    levels = []
    for number, level in enumerate(tif.series[0].levels):
        if len(level.pages) != 1:
            raise _Declined(f"level {number} has {len(level.pages)} pages (a stack, not one image)")
        page = level.keyframe
        _check_fast_page(page, number)
        if max(o + c for o, c in zip(page.dataoffsets, page.databytecounts)) > size:
            raise SlideOpenError(f"{path}: level {number} tile data runs past the end of the file "
                                 f"({size} bytes): truncated")
        levels.append(_TiffLevel(
            shape_yx=(page.imagelength, page.imagewidth), tile_yx=(page.tilelength, page.tilewidth),
            columns=-(-page.imagewidth // page.tilewidth), offsets=tuple(page.dataoffsets),
            counts=tuple(page.databytecounts), decode=page.decode,
            jpegtables=page.jpegtables, jpegheader=page.jpegheader, jpeg=page.compression == _COMPRESSION_JPEG))
    return levels


def _check_ifd_chain(tif: Any, path: Path, size: int) -> None:
    """Raise SlideOpenError unless the chain of IFDs ends with a 0 offset.

    tifffile stops (logging an error) at a next-IFD offset past the end of the file or at a
    corrupt IFD, and shows the pages before it: a file cut between two levels would open with
    levels missing.
    """
    where = tif.pages.next_page_offset  # walks the whole chain
    tif.filehandle.seek(where)
    data = tif.filehandle.read(tif.tiff.offsetsize)
    following = struct.unpack(tif.tiff.offsetformat, data)[0] if len(data) == tif.tiff.offsetsize else None
    if following != 0:
        raise SlideOpenError(f"{path}: the IFD after page {len(tif.pages) - 1} is missing or corrupt "
                             f"(offset {following} in a file of {size} bytes): truncated")


def _check_fast_page(page: Any, number: int) -> None:
    """Raise _Declined unless ``page`` is tiled 8-bit RGB in a compression decoded here."""
    if not page.is_tiled or page.tiledepth != 1 or page.imagedepth != 1:
        raise _Declined(f"level {number} is not tiled 2D")
    if page.dtype != np.uint8 or page.samplesperpixel != 3 or page.planarconfig != 1 or page.extrasamples:
        raise _Declined(f"level {number} is not interleaved 8-bit RGB "
                              f"({page.dtype}, {page.samplesperpixel} samples)")
    if page.compression not in FAST_COMPRESSIONS:
        raise _Declined(f"level {number} compression {page.compression!r} left to OpenSlide")
    jpeg = page.compression == _COMPRESSION_JPEG
    if page.photometric != _PHOTOMETRIC_RGB and not (jpeg and page.photometric == _PHOTOMETRIC_YCBCR):
        raise _Declined(f"level {number} photometric {page.photometric!r} with {page.compression!r}")
    if len(page.dataoffsets) != -(-page.imagelength // page.tilelength) * -(-page.imagewidth // page.tilewidth):
        raise _Declined(f"level {number} has {len(page.dataoffsets)} tiles, not one per grid cell")


def _tiff_mpp(tif: Any) -> tuple[float, float] | None:
    """Microns per pixel (y, x) of the first page: Aperio's MPP, else the resolution tags."""
    from tifffile.tifffile import svs_description_metadata

    page = tif.pages[0]
    if tif.is_svs:
        try:
            mpp = float(svs_description_metadata(page.description)["MPP"])
        except (ValueError, KeyError, TypeError):
            return None
        return (mpp, mpp) if mpp > 0 else None
    if _X_RESOLUTION not in page.tags or _Y_RESOLUTION not in page.tags:
        return None  # tifffile would report its default, 1 pixel per inch
    microns = _MICRONS_PER_UNIT.get(int(page.resolutionunit))
    xres, yres = page.get_resolution()
    if microns is None or xres <= 0 or yres <= 0:
        return None
    return microns / yres, microns / xres


def _downsample(full_yx: tuple[int, int], shape_yx: tuple[int, int]) -> float:
    """OpenSlide's definition: the mean of the two axes' size ratios."""
    return (full_yx[0] / shape_yx[0] + full_yx[1] / shape_yx[1]) / 2


# --------------------------------------------------------------------------- OpenSlide, fallback


class _OpenSlideReader:
    """Regions through ``openslide.OpenSlide.read_region``, transparent composited on white."""

    def __init__(self, path: Path, handle: Any, downsamples: tuple[float, ...]) -> None:
        self._path = path
        self._handle = handle
        self._downsamples = downsamples

    def read(self, level: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        import openslide

        if self._handle is None:
            raise SlideReadError(f"{self._path}: the slide is closed")
        downsample = self._downsamples[level]
        # OpenSlide places regions in level-0 coordinates, (x, y) and (width, height).
        location = (round(x0 * downsample), round(y0 * downsample))
        try:
            rgba = np.asarray(self._handle.read_region(location, level, (width, height)))
        except openslide.OpenSlideError as e:
            raise SlideReadError(f"{self._path}: level {level} region y={y0} x={x0} {height}x{width} "
                                 f"cannot be read: {e}") from e
        return rgba_on_white(rgba)

    def stored_jpeg(self, level: int, row: int, col: int) -> bytes | None:
        return None  # OpenSlide hands out pixels only

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite a (h, w, 4) uint8 RGBA array (straight alpha) over white; a new (h, w, 3) array."""
    alpha = rgba[..., 3:].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16)
    return ((rgb * alpha + WHITE * (WHITE - alpha) + WHITE // 2) // WHITE).astype(np.uint8)


def _open_with_openslide(path: Path) -> Slide:
    import openslide

    try:
        handle = openslide.OpenSlide(path)
    except openslide.OpenSlideError as e:
        raise _Declined(str(e) or type(e).__name__) from e
    props = handle.properties
    levels = tuple(
        Level((height, width), float(downsample), _openslide_tile(props, number))
        for number, ((width, height), downsample) in enumerate(zip(handle.level_dimensions, handle.level_downsamples)))
    mpp_x, mpp_y = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
    mpp_yx = (float(mpp_y), float(mpp_x)) if mpp_x and mpp_y else None
    reader = _OpenSlideReader(path, handle, tuple(level.downsample for level in levels))
    return Slide(path, levels, mpp_yx, "openslide", reader)


def _openslide_tile(props: Any, level: int) -> tuple[int, int] | None:
    height, width = props.get(f"openslide.level[{level}].tile-height"), props.get(f"openslide.level[{level}].tile-width")
    return (int(height), int(width)) if height and width else None
