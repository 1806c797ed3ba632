"""A multi-resolution tiled TIFF (a pyramid) written tile by tile, in bounded memory.

:func:`write_pyramid` takes the level-0 tiles of an RGB slide in row-major order and writes
one TIFF that OpenSlide's generic-tiff driver and tifffile read as a pyramid:

- level 0, then reduced levels each half the previous (sides rounded up, pixels the mean of
  2×2 blocks) until both sides are at most ``min_level_size``; every level JPEG-compressed in
  ``tile_size`` square tiles (YCbCr, chroma subsampled 2×2 unless told otherwise); the reduced
  levels are marked ``subfiletype=1`` (reduced-resolution image), which is what OpenSlide
  looks for to count them as levels;
- the pixel size in the resolution tags (pixels per centimetre, each level its own), from
  which OpenSlide 4 reports ``openslide.mpp-x``/``openslide.mpp-y``: no ImageDescription or
  vendor metadata is needed;
- BigTIFF when the uncompressed pyramid exceeds :data:`BIGTIFF_ABOVE_BYTES`.

Memory: nothing slide-sized is held. Level-0 tiles are encoded and handed to tifffile one at
a time, straight into the file. Each reduced level is built one strip (``tile_size`` rows)
at a time from 2× reductions of the tiles of the level above; a finished strip is cut into
tiles, each JPEG-encoded into a spool (an anonymous temporary file beside the output) and
reduced once more into the next level's strip. After level 0, each reduced level is copied
from the spool into the TIFF, already compressed. The strips together hold about
``tile_size × width × 3`` bytes (the widths of the reduced levels sum to the slide's width),
so memory grows with the slide's width, never with its height or area: a 40000 × 30000 slide
with 256-pixel tiles needs about 31 MB of strips, where its first reduced level alone is
900 MB. Beyond them: the spool's and the file's write buffers (:data:`WRITE_BUFFER_BYTES` each).

Resuming: given a folder for ``checkpoints``, the writer spools level 0 too and, every few
rows of tiles, makes the spool durable and saves where each reduced level stands (its row and
the top half of a half-filled strip, a few MB) with a ``state.json`` replaced atomically. A
write killed mid-slide resumes from the last checkpoint (:func:`resumable_rows` tells the
caller where its tiles must start) and makes the same file, byte for byte.

Threads: the writer runs on its caller's thread, but most of its work per tile (the level-0
JPEG and the first 2× reduction, two thirds of it all) can be done where the tiles are made:
:func:`encode_tile` does it on any thread without the GIL, and the writer takes the
:class:`EncodedTile` in place of the pixels.

Needs tifffile ≥ 2025.6.1 (writing an iterator of already-encoded tiles).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import struct
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from numba import njit

from ops.errors import InvalidParameter, SlideWriteError

log = logging.getLogger(__name__)

MIN_LEVEL_SIZE = 1024  # px: reduced levels stop once both sides are at most this
JPEG_QUALITY = 90  # libjpeg quality, 1..100
CHROMA_SUBSAMPLING = (2, 2)  # YCbCr 4:2:0, what scanners write; (1, 1) keeps thin colour lines sharp
TILE_MULTIPLE = 16  # JPEG MCUs at 2×2 chroma subsampling are 16 px square
# Beyond this many uncompressed pyramid bytes the file is BigTIFF: a JPEG tile is never twice
# its raw size, so a classic TIFF below it stays clear of its 4 GiB offset limit.
BIGTIFF_ABOVE_BYTES = 2**31
# A resumable write takes this many checkpoints over the slide: a write lost mid-slide does at
# most 1/32 of it again beyond the row it was in, and 32 checkpoints cost a slide little.
CHECKPOINTS_PER_SLIDE = 32
# The spool's and the TIFF's write buffers: a tile is a few KB, so the default 8 KB made a write
# system call per tile (two per level-0 tile with checkpoints: spooled, then copied into the file).
WRITE_BUFFER_BYTES = 1 << 18

_CM_PER_UM = 1e-4


class PyramidInfo(NamedTuple):
    """What :func:`write_pyramid` wrote.

    Attributes:
        path: the TIFF file.
        level_shapes: (height, width) of each level, level 0 first.
        tile_size: side of the square tiles, in pixels, on every level.
        mpp_yx: level-0 pixel size (y, x) in micrometres, or None when none was recorded.
        bigtiff: whether the file is BigTIFF.
        nbytes: size of the file in bytes.
    """

    path: Path
    level_shapes: tuple[tuple[int, int], ...]
    tile_size: int
    mpp_yx: tuple[float, float] | None
    bigtiff: bool
    nbytes: int


def level_shapes(shape_yx: tuple[int, int], min_level_size: int = MIN_LEVEL_SIZE) -> tuple[tuple[int, int], ...]:
    """The (height, width) of every pyramid level, level 0 first.

    Each level halves the previous one, rounding up, until both sides are at most
    ``min_level_size``; an image already that small has level 0 only.
    """
    shapes = [(int(shape_yx[0]), int(shape_yx[1]))]
    while max(shapes[-1]) > min_level_size:
        height, width = shapes[-1]
        shapes.append(((height + 1) // 2, (width + 1) // 2))
    return tuple(shapes)


def downsample_2x(rgb: np.ndarray) -> np.ndarray:
    """Halve a (y, x, 3) uint8 RGB image by the mean of 2×2 blocks, rounding half up.

    An odd last row or column is averaged with itself (edge replicated), so the output is
    (ceil(h / 2), ceil(w / 2), 3) and its last pixels are the mean of what the input has
    there. Returns a new uint8 array; runs without the GIL, so threads reduce in parallel.
    A view of other strides is copied first (the kernel reads whole rows).
    """
    height, width = rgb.shape[:2]
    out = np.empty(((height + 1) // 2, (width + 1) // 2, 3), np.uint8)
    _mean_2x2(np.ascontiguousarray(rgb).reshape(height, width * 3), out.reshape(out.shape[0], -1))
    return out


# Compiled at import, for rows of interleaved RGB: the three channels written out let LLVM
# vectorise the loop (a loop over channels ran at a third of the speed).
@njit("void(uint8[:, ::1], uint8[:, ::1])", nogil=True, cache=True)
def _mean_2x2(rows: np.ndarray, out: np.ndarray) -> None:
    """``out[y, 3x + c] = (sum of the 2×2 block's channel c, edges replicated, + 2) >> 2``.

    ``rows`` is an (h, w × 3) image of RGB pixels, ``out`` its (ceil(h / 2), ceil(w / 2) × 3)
    reduction. An odd last row or column reads its own pixels twice.
    """
    height = rows.shape[0]
    pairs = rows.shape[1] // 6
    for y in range(out.shape[0]):
        top = rows[2 * y]
        bottom = rows[min(2 * y + 1, height - 1)]
        row = out[y]
        for x in range(pairs):
            i, o = 6 * x, 3 * x
            row[o] = (np.uint16(top[i]) + top[i + 3] + bottom[i] + bottom[i + 3] + 2) >> 2
            row[o + 1] = (np.uint16(top[i + 1]) + top[i + 4] + bottom[i + 1] + bottom[i + 4] + 2) >> 2
            row[o + 2] = (np.uint16(top[i + 2]) + top[i + 5] + bottom[i + 2] + bottom[i + 5] + 2) >> 2
        if rows.shape[1] % 6:
            i, o = 6 * pairs, 3 * pairs
            for c in range(3):
                row[o + c] = (2 * (np.uint16(top[i + c]) + bottom[i + c]) + 2) >> 2


@dataclass(frozen=True)
class JpegEncoding:
    """How a pyramid's tiles are encoded, the way the TIFF's tags declare them: RGB in, YCbCr
    JPEG out, in square tiles of ``tile_size``.

    Raises InvalidParameter when ``tile_size`` is not a positive multiple of
    :data:`TILE_MULTIPLE`, ``quality`` not within 1..100 or ``subsampling`` not (1, 1) or (2, 2).
    """

    tile_size: int
    quality: int = JPEG_QUALITY
    subsampling: tuple[int, int] = CHROMA_SUBSAMPLING

    def __post_init__(self) -> None:
        if int(self.tile_size) != self.tile_size or self.tile_size < TILE_MULTIPLE or self.tile_size % TILE_MULTIPLE:
            raise InvalidParameter(f"tile_size must be a positive multiple of {TILE_MULTIPLE}, got {self.tile_size}")
        if not 1 <= self.quality <= 100:
            raise InvalidParameter(f"quality must be within 1..100, got {self.quality}")
        if tuple(self.subsampling) not in {(1, 1), (2, 2)}:
            raise InvalidParameter(f"subsampling must be (1, 1) or (2, 2), got {self.subsampling}")
        object.__setattr__(self, "tile_size", int(self.tile_size))
        object.__setattr__(self, "quality", int(self.quality))
        object.__setattr__(self, "subsampling", tuple(self.subsampling))

    def encode(self, block: np.ndarray) -> bytes:
        """JPEG bytes of a (h ≤ tile, w ≤ tile, 3) uint8 block, padded out to a whole tile.

        The padding repeats the block's last row and column rather than black, so no edge
        between image and padding rings into the image's own pixels.
        """
        import imagecodecs

        height, width = block.shape[:2]
        if (height, width) != (self.tile_size, self.tile_size):
            block = np.pad(block, ((0, self.tile_size - height), (0, self.tile_size - width), (0, 0)), mode="edge")
        return imagecodecs.jpeg_encode(np.ascontiguousarray(block), level=self.quality, colorspace="RGB",
                                       outcolorspace="YCBCR", subsampling=self.subsampling)

    def tiff_arguments(self) -> dict:
        """The ``TiffWriter.write`` arguments that tag tiles from :meth:`encode` correctly."""
        return {"tile": (self.tile_size, self.tile_size), "photometric": "rgb", "compression": "jpeg",
                "subsampling": self.subsampling}

    def stores_as_is(self, jpeg: bytes, rgb: np.ndarray) -> bool:
        """Whether ``jpeg``, a JPEG made elsewhere (a slide's own tile), may stand in this
        pyramid for :meth:`encode`'s: a baseline or extended frame of one whole tile, three
        8-bit components sampled as this encoding's, that read back from a TIFF tagged as
        this encoding tags its tiles is exactly ``rgb``, the (tile, tile, 3) uint8 pixels the
        stream is meant to hold. Its quality may differ.

        One tile answers for a whole slide level (one encoder made them all); the read-back is
        what catches a colour model other than the tags say (Aperio's RGB JPEG).
        """
        import io

        import tifffile

        if _jpeg_frame(jpeg) != (self.tile_size, self.tile_size, _sampling_factors(self.subsampling)):
            return False
        buffer = io.BytesIO()
        try:
            with tifffile.TiffWriter(buffer) as tiff:
                tiff.write(iter([jpeg]), shape=(self.tile_size, self.tile_size, 3), dtype=np.uint8, metadata=None,
                           **self.tiff_arguments())
            buffer.seek(0)
            pixels = tifffile.imread(buffer)
        except (RuntimeError, ValueError):  # imagecodecs' and tifffile's errors: not a usable stream
            return False
        return pixels.shape == rgb.shape and np.array_equal(pixels, rgb)


class EncodedTile(NamedTuple):
    """A level-0 tile made ready for :func:`write_pyramid` by :func:`encode_tile`, on any thread.

    Attributes:
        jpeg: the tile encoded as ``encoding`` says, padded out to a whole tile; or, for a tile
            left as the slide has it, the slide's own JPEG of it (:func:`stored_tile`).
        reduced: the 2× reduction of its pixels (:func:`downsample_2x`), for the first reduced level.
        shape_yx: (h, w) of its pixels, the part of the tile inside the image.
        encoding: how ``jpeg`` was encoded; the writer's must be the same.
    """

    jpeg: bytes
    reduced: np.ndarray
    shape_yx: tuple[int, int]
    encoding: JpegEncoding


def encode_tile(rgb: np.ndarray, encoding: JpegEncoding) -> EncodedTile:
    """What the pyramid writer does with each level-0 tile before it reaches the file: JPEG
    encoding and the first 2× reduction, done here by the caller, so that tiles made in
    parallel are encoded in parallel too (both release the GIL) and the writer's one thread
    only builds the reduced levels, a third as much work.

    Args:
        rgb: the tile's pixels inside the image, (h ≤ tile, w ≤ tile, 3) uint8; read, never kept.
        encoding: the writer's encoding.

    Raises:
        InvalidParameter: ``rgb`` is not uint8 (h, w, 3) within a tile.
    """
    _check_tile(rgb, encoding)
    return _encoded(rgb, encoding)


def stored_tile(jpeg: bytes, rgb: np.ndarray, encoding: JpegEncoding) -> EncodedTile:
    """A level-0 tile whose JPEG is kept as the slide stores it, for a tile the stage leaves as
    it is (glass): no encoding, only the 2× reduction of ``rgb``, its pixels inside the image
    ((h ≤ tile, w ≤ tile, 3) uint8, read, never kept). ``jpeg`` must be one that
    :meth:`JpegEncoding.stores_as_is` accepted for this slide level; it is not checked again.

    Raises:
        InvalidParameter: ``rgb`` is not uint8 (h, w, 3) within a tile.
    """
    _check_tile(rgb, encoding)
    return EncodedTile(jpeg, downsample_2x(rgb), rgb.shape[:2], encoding)


def _check_tile(rgb: np.ndarray, encoding: JpegEncoding) -> None:
    """Raise InvalidParameter unless ``rgb`` is uint8 (h, w, 3) within one of ``encoding``'s tiles."""
    if (got := _not_rgb(rgb)) is not None:
        raise InvalidParameter(f"expected a uint8 (h, w, 3) RGB tile, got {got}")
    if max(rgb.shape[:2]) > encoding.tile_size:
        raise InvalidParameter(f"a {rgb.shape[:2]} tile is larger than {encoding.tile_size} px")


def jpeg_header(jpeg: bytes) -> bytes | None:
    """The bytes of a JPEG stream before its first scan (its tables, frame and application
    segments: everything that says how the scan decodes), or None when it has no scan.
    Two streams with the same header decode alike but for their scans' data."""
    for marker, at, _ in _segments(jpeg):
        if marker == 0xDA:
            return jpeg[:at]
    return None


def _jpeg_frame(jpeg: bytes) -> tuple[int, int, tuple[int, ...]] | None:
    """(height, width, each component's sampling factors byte) of a JPEG stream's 8-bit
    baseline or extended sequential frame; None for any other stream, or no stream at all."""
    for marker, at, length in _segments(jpeg):
        if marker in (0xC0, 0xC1):
            frame = jpeg[at + 4:at + 2 + length]
            if len(frame) < 6 or frame[0] != 8 or len(frame) < 6 + 3 * frame[5]:
                return None
            return (int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"),
                    tuple(frame[7 + 3 * i] for i in range(frame[5])))
        if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xDA:
            return None  # progressive, lossless or arithmetic; or the scan before any frame
    return None


def _segments(jpeg: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset of its 0xFF, length field) of each marker segment of a JPEG stream from
    the one after SOI up to and including the first scan's; nothing for a stream without SOI,
    and no more once the bytes stop looking like segments."""
    if not jpeg.startswith(b"\xff\xd8"):
        return
    at = 2
    while at + 4 <= len(jpeg) and jpeg[at] == 0xFF:
        marker = jpeg[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(jpeg[at + 2:at + 4], "big")
        yield marker, at, length
        if marker == 0xDA:
            return
        at += 2 + length


def _sampling_factors(subsampling: tuple[int, int]) -> tuple[int, ...]:
    """The three sampling-factor bytes (horizontal << 4 | vertical) of a YCbCr frame whose
    chroma is subsampled ``subsampling`` (horizontal, vertical)."""
    horizontal, vertical = subsampling
    return (horizontal << 4 | vertical, 0x11, 0x11)


def _not_rgb(rgb: object) -> str | None:
    """What ``rgb`` is, when it is not a uint8 (h, w, 3) array; None when it is."""
    if isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3:
        return None
    return f"{rgb.dtype}{rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__


def _encoded(rgb: np.ndarray, encoding: JpegEncoding) -> EncodedTile:
    """:func:`encode_tile` of a tile already checked."""
    return EncodedTile(encoding.encode(rgb), downsample_2x(rgb), rgb.shape[:2], encoding)


class _Spool:
    """Encoded tiles, appended to a file as they are made: the reduced levels' (an anonymous
    file), or every level's when the write keeps checkpoints (a file among them, with an
    ``index`` file beside it: (level, offset, length) per tile, so that a checkpoint records
    two lengths, not every tile so far)."""

    ENTRY = struct.Struct("<3q")  # per tile: level, offset and length

    def __init__(self, file: IO[bytes], levels: int, index: IO[bytes] | None = None) -> None:
        self._file = file
        self._index_file = index
        self._end = 0
        self._entries = 0
        self._index: list[list[tuple[int, int]]] = [[] for _ in range(levels)]

    def add(self, level: int, data: bytes) -> None:
        """Append one tile of ``level``; tiles of a level must come in row-major order."""
        self._file.write(data)
        self._index[level].append((self._end, len(data)))
        if self._index_file is not None:
            self._index_file.write(self.ENTRY.pack(level, self._end, len(data)))
            self._entries += 1
        self._end += len(data)

    def tiles(self, level: int) -> Iterator[bytes]:
        """The tiles of ``level`` in the order they were added, read back one at a time."""
        self._file.flush()
        fd = self._file.fileno()
        for offset, length in self._index[level]:
            yield os.pread(fd, length, offset)

    def state(self) -> dict:
        """Where the spool ends, once on disk (flushed and fsync'd): what :meth:`restore` takes."""
        for file in (self._file, self._index_file):
            file.flush()
            os.fsync(file.fileno())
        return {"spool_bytes": self._end, "entries": self._entries}

    def restore(self, state: dict) -> None:
        """Go back to a :meth:`state`: what was appended after it is cut off both files.

        Raises ValueError when the index holds fewer entries than ``state`` says.
        """
        self._end, self._entries = int(state["spool_bytes"]), int(state["entries"])
        size = self._entries * self.ENTRY.size
        self._index_file.seek(0)
        entries = self._index_file.read(size)
        if len(entries) != size:
            raise ValueError(f"the spool's index holds {len(entries) // self.ENTRY.size} tiles, not {self._entries}")
        for level, offset, length in self.ENTRY.iter_unpack(entries):
            self._index[level].append((offset, length))
        for file, length in ((self._file, self._end), (self._index_file, size)):
            file.truncate(length)
            file.seek(length)


class _ReducedLevel:
    """A reduced level under construction, one strip of ``tile_size`` rows at a time.

    The level above hands in each of its tiles (:meth:`take`) and says when a row of its
    tiles is complete (:meth:`row_done`); two rows above make one strip here, which is then
    encoded into the spool and handed on, tile by tile, to the next coarser level.
    """

    def __init__(self, index: int, shape: tuple[int, int], encoder: JpegEncoding, spool: _Spool,
                 coarser: _ReducedLevel | None) -> None:
        self.index = index
        self.shape = shape
        self.encoder = encoder
        self.spool = spool
        self.coarser = coarser
        self.rows = math.ceil(shape[0] / encoder.tile_size)
        self._strip = np.empty((encoder.tile_size, shape[1], 3), np.uint8)
        self._row = 0
        self.half_filled = False  # the strip's top half holds a row from above, not yet encoded

    def take(self, small: np.ndarray, source_row: int, source_x: int) -> None:
        """Lay the 2× reduction of a tile of the level above into the current strip.

        Args:
            small: :func:`downsample_2x` of the tile's pixels inside the image.
            source_row: the tile's row in the level above; even rows fill the strip's top half.
            source_x: the tile's first column in the level above, in pixels.
        """
        top = (source_row % 2) * (self.encoder.tile_size // 2)
        left = source_x // 2
        self._strip[top: top + small.shape[0], left: left + small.shape[1]] = small

    def row_done(self, source_row: int, last: bool) -> None:
        """Close row ``source_row`` of the level above; ``last`` when it is that level's last.

        A strip is finished by an odd row above, or by the last one (an image whose rows of
        tiles above are odd in number ends on a half-filled strip, which is all there is).
        """
        self.half_filled = source_row % 2 == 0 and not last
        if self.half_filled:
            return
        tile = self.encoder.tile_size
        strip = self._strip[: min(tile, self.shape[0] - self._row * tile)]
        for left in range(0, self.shape[1], tile):
            block = strip[:, left: left + tile]
            self.spool.add(self.index, self.encoder.encode(block))
            if self.coarser is not None:
                self.coarser.take(downsample_2x(block), self._row, left)
        if self.coarser is not None:
            self.coarser.row_done(self._row, last=self._row == self.rows - 1)
        self._row += 1

    def state(self) -> tuple[dict, np.ndarray | None]:
        """Where this level stands between two rows of level 0, and the top half of its strip
        when that holds pixels not yet encoded: what :meth:`restore` takes."""
        top = self._strip[: self.encoder.tile_size // 2] if self.half_filled else None
        return {"row": self._row, "half_filled": self.half_filled}, top

    def restore(self, state: dict, top: np.ndarray | None) -> None:
        """Go back to a :meth:`state`."""
        self._row, self.half_filled = int(state["row"]), bool(state["half_filled"])
        if self.half_filled:
            self._strip[: self.encoder.tile_size // 2] = top


class _Checkpoints:
    """A write's checkpoints in a folder of their own: the spool of every level's tiles, the
    top halves of the reduced levels' half-filled strips and ``state.json``, which says how
    many rows of level 0 they hold. A checkpoint is taken every ``every_rows`` rows; ``state.json``
    is replaced last and atomically, so a write killed at any point leaves the previous one
    whole (what the spool holds beyond it is cut off when the write resumes).
    """

    STATE = "state.json"
    SPOOL = "tiles.spool"
    INDEX = "tiles.index"

    def __init__(self, folder: Path, identity: dict, every_rows: int) -> None:
        self.folder = folder
        self.identity = identity
        self.every_rows = every_rows
        self._generation = 0

    def load(self) -> dict | None:
        """The last checkpoint, or None when there is none or it is of another write (other
        shape, tiles, encoding or pixel size) or unreadable: that write starts over."""
        try:
            state = json.loads((self.folder / self.STATE).read_text())
            whole = ((self.folder / self.SPOOL).stat().st_size >= state["spool_bytes"]
                     and (self.folder / self.INDEX).stat().st_size >= _Spool.ENTRY.size * state["entries"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("pyramid checkpoint in %s unreadable (%s): starting over", self.folder, e)
            return None
        if state.get("identity") != self.identity or not whole:
            log.warning("pyramid checkpoint in %s is of another write or cut short: starting over", self.folder)
            return None
        return state

    def open_spool(self, resuming: bool) -> tuple[IO[bytes], IO[bytes]]:
        """The spool and its index, opened for reading and writing (made, owner-only, when
        missing; emptied unless ``resuming``, which :meth:`restore` then cuts to the checkpoint)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | (0 if resuming else os.O_TRUNC)
        spool, index = (os.open(self.folder / name, flags, 0o600) for name in (self.SPOOL, self.INDEX))
        return os.fdopen(spool, "r+b", buffering=WRITE_BUFFER_BYTES), os.fdopen(index, "r+b")

    def restore(self, state: dict, spool: _Spool, levels: list[_ReducedLevel]) -> int:
        """Put the spool and the reduced levels back as ``state`` has them; the rows it holds."""
        self._generation = int(state["generation"])
        spool.restore(state)
        for level, saved in zip(levels, state["levels"], strict=True):
            top = np.load(self._strip_path(level.index)) if saved["half_filled"] else None
            level.restore(saved, top)
        log.info("pyramid resumed from %s: %d rows of tiles already written", self.folder, state["rows_done"])
        return int(state["rows_done"])

    def row_written(self, rows_done: int, spool: _Spool, levels: list[_ReducedLevel]) -> None:
        """Take a checkpoint if ``rows_done`` rows of level 0 call for one."""
        if rows_done % self.every_rows:
            return
        self._generation += 1
        saved = []
        for level in levels:
            state, top = level.state()
            if top is not None:
                with open(self._strip_path(level.index), "wb", opener=_owner_only) as fh:
                    np.save(fh, top)
                    fh.flush()
                    os.fsync(fh.fileno())
            saved.append(state)
        state = {"identity": self.identity, "generation": self._generation, "rows_done": rows_done,
                 "levels": saved, **spool.state()}
        partial = self.folder / f".{self.STATE}.part"
        with open(partial, "w", opener=_owner_only) as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, self.folder / self.STATE)
        for stale in self.folder.glob(f"strip-{self._generation - 1}-*.npy"):
            stale.unlink()

    def remove(self) -> None:
        """Remove the checkpoints, and the folder if that leaves it empty: the write is done."""
        for name in (self.STATE, self.SPOOL, self.INDEX):
            (self.folder / name).unlink(missing_ok=True)
        for strip in self.folder.glob("strip-*.npy"):
            strip.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            pass

    def _strip_path(self, level: int) -> Path:
        return self.folder / f"strip-{self._generation}-{level}.npy"


def _owner_only(path: str, flags: int) -> int:
    """``open``'s opener for files only their owner reads: they hold patient pixels."""
    return os.open(path, flags, 0o600)


def _checked_tile(item: object, expected: tuple[int, int], inside: tuple[int, int],
                  encoder: JpegEncoding) -> EncodedTile:
    """A level-0 tile from the caller, checked, encoded as ``encoder`` says unless it came so.

    Raises InvalidParameter naming the tile when it is not ``(row, col, rgb)`` with the
    expected position, or ``rgb`` is neither uint8 (h, w, 3) covering ``inside`` within a tile
    nor an :class:`EncodedTile` of exactly ``inside`` and the writer's encoding.
    """
    try:
        row, col, rgb = item  # type: ignore[misc]
    except (TypeError, ValueError):
        raise InvalidParameter(f"tile {expected}: expected (tile_row, tile_col, rgb), got {type(item).__name__}") from None
    if (row, col) != expected:
        raise InvalidParameter(f"tile ({row}, {col}) out of order: expected tile {expected} (row-major order)")
    if isinstance(rgb, EncodedTile):
        if rgb.encoding != encoder or tuple(rgb.shape_yx) != inside:
            raise InvalidParameter(f"tile {expected}: encoded as {rgb.encoding} for {tuple(rgb.shape_yx)} px; "
                                   f"the pyramid is {encoder} and the tile's image part {inside}")
        return rgb
    if (got := _not_rgb(rgb)) is not None:
        raise InvalidParameter(f"tile {expected}: expected uint8 (h, w, 3) RGB, got {got}")
    if not (inside[0] <= rgb.shape[0] <= encoder.tile_size and inside[1] <= rgb.shape[1] <= encoder.tile_size):
        raise InvalidParameter(f"tile {expected}: {rgb.shape[:2]} does not cover the image's {inside} "
                               f"within a {encoder.tile_size} px tile")
    return _encoded(rgb[: inside[0], : inside[1]], encoder)


def _level0_tiles(tiles: Iterator[object], shape: tuple[int, int], encoder: JpegEncoding,
                  coarser: _ReducedLevel | None, first_row: int) -> Iterator[bytes]:
    """Encoded level-0 tiles in row-major order from row ``first_row``, each also handed to the
    first reduced level."""
    tile = encoder.tile_size
    rows, cols = math.ceil(shape[0] / tile), math.ceil(shape[1] / tile)
    for row in range(first_row, rows):
        for col in range(cols):
            item = next(tiles, None)
            if item is None:
                raise InvalidParameter(f"tiles ended before tile ({row}, {col}) of {rows}×{cols}")
            inside = (min(tile, shape[0] - row * tile), min(tile, shape[1] - col * tile))
            encoded = _checked_tile(item, (row, col), inside, encoder)
            if coarser is not None:
                coarser.take(encoded.reduced, row, col * tile)
                if col == cols - 1:
                    # Before the yield: after the last tile tifffile stops asking for more.
                    coarser.row_done(row, last=row == rows - 1)
            yield encoded.jpeg


def _validate(shape_yx: tuple[int, int], mpp_yx: tuple[float, float] | None, min_level_size: int) -> None:
    """Raise InvalidParameter naming the first argument of :func:`write_pyramid` out of range
    (the encoding's are :class:`JpegEncoding`'s to check)."""
    if len(shape_yx) != 2 or any(int(n) != n or n < 1 for n in shape_yx):
        raise InvalidParameter(f"shape_yx must be two positive whole numbers, got {shape_yx}")
    if mpp_yx is not None and (len(mpp_yx) != 2 or not all(math.isfinite(m) and m > 0 for m in mpp_yx)):
        raise InvalidParameter(f"mpp_yx must be two positive micrometre sizes or None, got {mpp_yx}")
    if min_level_size < 1:
        raise InvalidParameter(f"min_level_size must be at least 1, got {min_level_size}")


def _resolution(mpp_yx: tuple[float, float] | None, level0: tuple[int, int], level: tuple[int, int]) -> dict:
    """Resolution-tag arguments of a level: pixels per centimetre, (x, y) as TIFF orders them."""
    if mpp_yx is None:
        return {}
    per_cm_y = level[0] / level0[0] / (mpp_yx[0] * _CM_PER_UM)
    per_cm_x = level[1] / level0[1] / (mpp_yx[1] * _CM_PER_UM)
    return {"resolution": (per_cm_x, per_cm_y), "resolutionunit": "CENTIMETER"}


def _write_levels(fh: IO[bytes], spool_dir: Path, shapes: tuple[tuple[int, int], ...], tiles: Iterable[object],
                  encoder: JpegEncoding, mpp_yx: tuple[float, float] | None, bigtiff: bool,
                  checkpoints: _Checkpoints | None) -> None:
    """Write every level into the open file ``fh``, spooling the reduced levels in ``spool_dir``,
    or every level among the ``checkpoints``, resuming from the last one."""
    import tempfile

    import tifffile

    source = iter(tiles)
    saved = checkpoints.load() if checkpoints else None
    with ExitStack() as opened:
        if checkpoints is None:
            spool = _Spool(opened.enter_context(tempfile.TemporaryFile(dir=spool_dir, prefix=".pyramid-spool-",
                                                                   buffering=WRITE_BUFFER_BYTES)),
                           len(shapes))
        else:
            spool_file, index_file = (opened.enter_context(f) for f in checkpoints.open_spool(saved is not None))
            spool = _Spool(spool_file, len(shapes), index_file)
        levels: list[_ReducedLevel] = []
        for index in range(len(shapes) - 1, 0, -1):
            levels.insert(0, _ReducedLevel(index, shapes[index], encoder, spool, levels[0] if levels else None))
        first_row = checkpoints.restore(saved, spool, levels) if checkpoints and saved else 0
        level0 = _level0_tiles(source, shapes[0], encoder, levels[0] if levels else None, first_row)
        common = {"dtype": np.uint8, "metadata": None, **encoder.tiff_arguments()}
        # Not a with-block: on failure the file is thrown away, and TiffWriter.close() would
        # first try to finish it, raising over the error that matters.
        tiff = tifffile.TiffWriter(fh, bigtiff=bigtiff)
        if checkpoints is not None:  # level 0 to the spool, checkpointed, then copied from it
            cols = math.ceil(shapes[0][1] / encoder.tile_size)
            for written, data in enumerate(level0, start=first_row * cols + 1):
                spool.add(0, data)
                if written % cols == 0:
                    checkpoints.row_written(written // cols, spool, levels)
            level0 = spool.tiles(0)
        tiff.write(level0, shape=(*shapes[0], 3), **common, **_resolution(mpp_yx, shapes[0], shapes[0]))
        if next(source, None) is not None:
            raise InvalidParameter(f"more tiles than the {shapes[0]} image holds in {encoder.tile_size} px tiles")
        for index, shape in enumerate(shapes[1:], start=1):
            tiff.write(spool.tiles(index), shape=(*shape, 3), subfiletype=1,
                       **common, **_resolution(mpp_yx, shapes[0], shape))
        tiff.close()
    fh.flush()
    os.fsync(fh.fileno())


def default_checkpoint_rows(rows: int) -> int:
    """Rows of tiles between checkpoints over ``rows``: about :data:`CHECKPOINTS_PER_SLIDE`
    of them, a power of two and at least 2, so that at a checkpoint the first reduced levels'
    strips are all encoded and only the small strips of coarser levels need saving."""
    return max(2, 1 << max(0, math.ceil(math.log2(max(1, rows / CHECKPOINTS_PER_SLIDE)))))


def _identity(shapes: tuple[tuple[int, int], ...], encoder: JpegEncoding, mpp_yx: tuple[float, float] | None) -> dict:
    """What a checkpoint must match to be resumed: the write it was taken of (JSON values)."""
    return {"levels": [list(shape) for shape in shapes], "tile_size": encoder.tile_size, "quality": encoder.quality,
            "subsampling": list(encoder.subsampling), "mpp_yx": None if mpp_yx is None else [float(m) for m in mpp_yx]}


def resumable_rows(checkpoints: str | Path, shape_yx: tuple[int, int], tile_size: int, *,
                   mpp_yx: tuple[float, float] | None = None, quality: int = JPEG_QUALITY,
                   min_level_size: int = MIN_LEVEL_SIZE, subsampling: tuple[int, int] = CHROMA_SUBSAMPLING) -> int:
    """The rows of level-0 tiles that :func:`write_pyramid`, given the same arguments and
    ``checkpoints``, already holds: its ``tiles`` must begin at this row (0 when there is no
    checkpoint of that write)."""
    encoder, shapes = _checked_arguments(shape_yx, tile_size, mpp_yx, quality, min_level_size, subsampling)
    # every_rows matters only to a write: this one only reads
    state = _Checkpoints(Path(checkpoints), _identity(shapes, encoder, mpp_yx), every_rows=1).load()
    return 0 if state is None else int(state["rows_done"])


def _checked_arguments(shape_yx: tuple[int, int], tile_size: int, mpp_yx: tuple[float, float] | None, quality: int,
                       min_level_size: int,
                       subsampling: tuple[int, int]) -> tuple[JpegEncoding, tuple[tuple[int, int], ...]]:
    """The encoding and level shapes of a :func:`write_pyramid` with these arguments, after
    checking them (InvalidParameter naming the first out of range)."""
    _validate(shape_yx, mpp_yx, min_level_size)
    return JpegEncoding(tile_size, quality, subsampling), level_shapes(shape_yx, min_level_size)


def write_pyramid(path: str | Path, shape_yx: tuple[int, int], tile_size: int,
                  tiles: Iterable[tuple[int, int, np.ndarray | EncodedTile]], *,
                  mpp_yx: tuple[float, float] | None = None,
                  quality: int = JPEG_QUALITY, min_level_size: int = MIN_LEVEL_SIZE,
                  subsampling: tuple[int, int] = CHROMA_SUBSAMPLING, checkpoints: Path | None = None,
                  checkpoint_rows: int | None = None) -> PyramidInfo:
    """Write an RGB slide, given tile by tile, as a multi-resolution tiled JPEG TIFF.

    The file is written under a hidden temporary name beside ``path`` and renamed to ``path``
    only once complete, so a failure leaves no partial file and nothing else is touched
    (an existing ``path`` is replaced only on success).

    Args:
        path: the TIFF to write; its folder must exist.
        shape_yx: (height, width) of level 0 in pixels.
        tile_size: side of the square tiles, a positive multiple of :data:`TILE_MULTIPLE`.
        tiles: level-0 tiles in row-major order (row 0 left to right, then row 1, ...), each
            ``(tile_row, tile_col, rgb)`` with ``rgb`` a uint8 (h, w, 3) array (y, x, channel)
            of the pixels from ``(tile_row * tile_size, tile_col * tile_size)``. Tiles at the
            right and bottom edges may be cut to the image or be whole tiles (what lies
            outside the image is ignored). Arrays are read, never kept or changed. ``rgb`` may
            instead be the :func:`encode_tile` of the tile's pixels inside the image, with this
            pyramid's encoding: what a caller making tiles on several threads hands over.
        mpp_yx: level-0 pixel size (y, x) in micrometres, written to the resolution tags.
        quality: JPEG quality, 1..100.
        min_level_size: reduced levels are added until both sides are at most this.
        subsampling: JPEG chroma subsampling, (2, 2) or (1, 1).
        checkpoints: a folder for this write's checkpoints, taken every ``checkpoint_rows``
            rows of tiles. A write killed or failed leaves them there, and a write with the same
            arguments resumes from the last: ``tiles`` must then begin at row
            :func:`resumable_rows`, and the file is byte for byte the one an uninterrupted write
            makes. The checkpoints are removed once the file is in place. Every level's tiles
            are then spooled beside the checkpoints (a JPEG copy of the pyramid) until the end.
        checkpoint_rows: rows of tiles between checkpoints, at least 1; by default
            :func:`default_checkpoint_rows`.

    Returns:
        A :class:`PyramidInfo` describing the file.

    Raises:
        InvalidParameter: an argument out of range; a tile out of order, of the wrong dtype or
            shape, missing, or one too many (the message names the tile).
        SlideWriteError: the file cannot be written (the message names ``path``).
        Whatever the ``tiles`` iterable raises, unchanged (the output is cleaned up first).
    """
    encoder, shapes = _checked_arguments(shape_yx, tile_size, mpp_yx, quality, min_level_size, subsampling)
    if checkpoint_rows is not None and checkpoint_rows < 1:
        raise InvalidParameter(f"checkpoint_rows must be at least 1, got {checkpoint_rows}")
    path = Path(path)
    if checkpoint_rows is None:
        checkpoint_rows = default_checkpoint_rows(math.ceil(shapes[0][0] / encoder.tile_size))
    kept = None if checkpoints is None else _Checkpoints(Path(checkpoints), _identity(shapes, encoder, mpp_yx),
                                                         checkpoint_rows)
    bigtiff = sum(h * w * 3 for h, w in shapes) > BIGTIFF_ABOVE_BYTES
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(partial, "xb", buffering=WRITE_BUFFER_BYTES) as fh:
            _write_levels(fh, path.parent, shapes, tiles, encoder, mpp_yx, bigtiff, kept)
        nbytes = partial.stat().st_size
        os.replace(partial, path)
        if kept is not None:
            kept.remove()
    except BaseException as e:
        partial.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SlideWriteError(f"cannot write {path}: {e}") from e
        raise
    info = PyramidInfo(path, shapes, int(tile_size), mpp_yx, bigtiff, nbytes)
    log.info("pyramid %s: levels %s, %d px tiles, %d bytes", path, shapes, tile_size, info.nbytes)
    return info
