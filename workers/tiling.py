"""Dask inside a worker: a whole slide's tiles read, segmented and overlaid in parallel, handed
back in row-major order for the pyramid writer.

A batch of tiles is one Dask task (:func:`ops.nuclei.segment_tiles`: read with margins,
pre-filter, one Triton request for its tissue tiles, crop, overlay, and, given the pyramid's
encoding, each tile's JPEG and 2× reduction for the writer: :func:`ops.pyramid.encode_tile`;
glass keeps the slide's own JPEG where it may stand in the pyramid, :func:`stored_glass_header`),
so ``threads`` tasks run at once and as many requests are in flight, which keeps Triton's
dynamic batcher fed while other threads read and decode.

The tasks run on Dask's threaded scheduler over this process's pool of ``threads`` threads
(no extra processes: the tiles stay in this process's memory and its GPU pinning holds for
every thread). Batches are computed a window at a time, ``WINDOW_PER_THREAD × threads`` of
them, and :data:`WINDOWS_AHEAD` windows are under way beyond the one being written, so a
thread that finishes the last tasks of one window early starts on the next, and memory stays
bounded whatever the slide's size. An in-process ``distributed`` cluster did the same with
futures, but its scheduler and event loop cost about 0.1 ms of CPU per tile, an eighth of the
stage around a model (``bench/wsi.py``'s profile), for nothing these tasks need.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ops.nuclei import segment_tiles
from ops.protocols import Predictor, Progress
from ops.pyramid import (JPEG_QUALITY, EncodedTile, JpegEncoding, PyramidInfo, encode_tile, jpeg_header,
                         resumable_rows, stored_tile, write_pyramid)
from ops.wsi import Slide

WINDOW_PER_THREAD = 2  # batches per Dask computation, per thread
WINDOWS_AHEAD = 2  # computations under way beyond the one being written
GLASS_PER_BATCH = 4  # a batch holds at most this many times batch_size tiles in all

Tiles = list[np.ndarray] | list[EncodedTile]


@dataclass
class _TileWork:
    """One slide's work, shared by its Dask tasks; ``running`` counts the batches under way."""

    slide: Slide
    predictor: Predictor
    tile_size: int
    overlap: int
    recipe: dict[str, Any] = field(default_factory=dict)  # segment_tiles's threshold, input_layout
    encoding: JpegEncoding | None = None
    # glass tiles whose JPEG begins so keep it (:func:`stored_glass_header`); None: all are encoded
    stored_glass_header: bytes | None = None
    stopped: bool = False
    running: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def segment_batch(self, positions: list[tuple[int, int]], tissue: list[bool]) -> Tiles | None:
        """A Dask task: one batch of :func:`segmented_tiles`; None once the work has stopped."""
        with self.changed:
            if self.stopped:
                return None
            self.running += 1
        try:
            tiles = segment_tiles(self.slide, positions, tissue, self.tile_size, self.overlap, self.predictor,
                                  **self.recipe)
            if self.encoding is None:
                return tiles
            return [pyramid_tile(self.slide, tile, (y0 // self.tile_size, x0 // self.tile_size), flag, self.encoding,
                                 self.stored_glass_header) for tile, (y0, x0), flag in zip(tiles, positions, tissue)]
        finally:
            with self.changed:
                self.running -= 1
                self.changed.notify_all()

    def stop_and_wait(self) -> None:
        """Start no more batches and wait for those under way: the slide and the predictor's
        shared memory are released by the caller next, and no thread may still use them."""
        with self.changed:
            self.stopped = True
            self.changed.wait_for(lambda: self.running == 0)


@lru_cache(maxsize=None)
def dask_pools(threads: int) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
    """This process's pool of ``threads`` threads for Dask's tasks, and the threads that drive
    the windows' computations (waiting, mostly), both made on first use, with Dask imported
    (a third of a second, once per process rather than in the first slide's time)."""
    import dask.delayed  # noqa: F401
    import dask.threaded  # noqa: F401

    return (ThreadPoolExecutor(threads, thread_name_prefix="carina-dask"),
            ThreadPoolExecutor(WINDOWS_AHEAD + 1, thread_name_prefix="carina-window"))


def pyramid_tile(slide: Slide, rgb: np.ndarray, row_col: tuple[int, int], tissue: bool, encoding: JpegEncoding,
                 stored_glass_header: bytes | None) -> EncodedTile:
    """Level-0 tile ``row_col`` of ``slide``, its pixels ``rgb`` (cut to the image), made ready
    for the pyramid: a glass tile whose stored JPEG begins with ``stored_glass_header``
    (:func:`stored_glass_header`) as the slide stores it, any other JPEG-encoded."""
    if stored_glass_header is not None and not tissue:
        stored = slide.stored_jpeg(0, *row_col)
        if stored is not None and stored.startswith(stored_glass_header):
            return stored_tile(stored, rgb, encoding)
    return encode_tile(rgb, encoding)


def stored_glass_header(slide: Slide, tissue: np.ndarray, encoding: JpegEncoding) -> bytes | None:
    """Whether the slide's glass tiles (False in ``tissue``) may go into the pyramid as the slide
    stores them, sparing the JPEG encoding of pixels the stage does not change, and which.

    They may where level 0 is tiled in ``encoding``'s tiles and its first glass tile wholly
    inside the image is stored as ``encoding`` would keep it
    (:meth:`ops.pyramid.JpegEncoding.stores_as_is`: frame, sampling and colours read back
    alike). Returned is that tile's header (:func:`ops.pyramid.jpeg_header`: tables, frame,
    markers): the glass tiles whose stored JPEG begins with the same bytes decode as that one
    does and are kept; any other (a tile re-encoded by another hand) is encoded. None where no
    glass may be kept. Raises what the slide's reads raise (SlideReadError).
    """
    tile = encoding.tile_size
    if slide.levels[0].tile_shape_yx != (tile, tile):
        return None
    height, width = slide.levels[0].shape_yx
    glass = np.argwhere(~tissue[: height // tile, : width // tile])
    if not len(glass):
        return None
    row, col = (int(n) for n in glass[0])
    stored = slide.stored_jpeg(0, row, col)
    if stored is None or not encoding.stores_as_is(stored, slide.read_region(0, row * tile, col * tile, tile, tile)):
        return None
    return jpeg_header(stored)


def plan_batches(tissue: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row-major flat indices of the tile grid ``tissue`` (rows, cols) cut into batches.

    Each batch has at most ``batch_size`` tissue tiles (one model request) and at most
    ``GLASS_PER_BATCH × batch_size`` tiles in all, so glass between tissue costs little.
    """
    flags = tissue.ravel()
    batches, start, in_batch = [], 0, 0
    limit = GLASS_PER_BATCH * batch_size
    for index, flag in enumerate(flags):
        in_batch += bool(flag)
        if in_batch == batch_size or index + 1 - start == limit:
            batches.append(np.arange(start, index + 1))
            start, in_batch = index + 1, 0
    if start < len(flags):
        batches.append(np.arange(start, len(flags)))
    return batches


def _compute_window(work: _TileWork, pool: ThreadPoolExecutor, window: list[tuple[list, list]]) -> list[Tiles | None]:
    """One window of batches, each ``(positions, tissue flags)``, computed by Dask on ``pool``."""
    import dask

    tasks = [dask.delayed(work.segment_batch, pure=False)(positions, flags) for positions, flags in window]
    return list(dask.compute(*tasks, scheduler="threads", pool=pool))


def segmented_tiles(slide: Slide, tissue: np.ndarray, tile_size: int, overlap: int, predictor: Predictor, *,
                    threads: int, batch_size: int, encoding: JpegEncoding | None = None,
                    progress: Progress | None = None, first_row: int = 0, keep_stored_glass: bool = True,
                    **recipe: Any) -> Iterator[tuple[int, int, np.ndarray | EncodedTile]]:
    """Every level-0 tile of ``slide`` from row ``first_row`` on, segmented where ``tissue``
    says so, in row-major order.

    Args:
        slide: the open slide (read by ``threads`` threads at once).
        tissue: (rows, cols) bool over the tile grid (:func:`ops.nuclei.tissue_tiles`).
        tile_size, overlap: as :func:`ops.nuclei.segment_tiles`.
        predictor: the model; called from several threads at once.
        threads: Dask threads, hence batches (and model requests) in flight.
        batch_size: tissue tiles per model request.
        encoding: the pyramid's, when the tiles are for :func:`ops.pyramid.write_pyramid`:
            each is then encoded in its batch's task and yielded as an ``EncodedTile``; glass
            tiles keep the slide's own JPEG where :func:`stored_glass_header` says they may, unless
            ``keep_stored_glass`` is False (every tile encoded: ``bench/wsi.py``'s baseline).
        progress: called with (tiles done, tiles in all) after each batch; the rows before
            ``first_row`` count as done.
        first_row: the first row of tiles to segment (a resumed write holds those above).
        recipe: ``threshold`` and ``input_layout``, as :func:`ops.nuclei.segment_tiles` takes them.

    Yields:
        ``(row, col, rgb)`` per tile (``rgb`` an ``EncodedTile`` given ``encoding``), as
        :func:`ops.pyramid.write_pyramid` takes them.

    Raises:
        Whatever a batch raises (SlideReadError, InferenceError, ...), when its turn comes;
        the batches not yet started are not run.
    """
    rows, cols = tissue.shape
    total = rows * cols
    work = _TileWork(slide, predictor, tile_size, overlap, recipe, encoding,
                     stored_glass_header=(stored_glass_header(slide, tissue, encoding)
                                          if keep_stored_glass and encoding is not None else None))
    pool, driver = dask_pools(threads)
    skipped = first_row * cols
    batches = [batch + skipped for batch in plan_batches(tissue[first_row:], batch_size)]
    per_window = WINDOW_PER_THREAD * threads
    pending: deque[tuple[list[np.ndarray], Future]] = deque()
    done = skipped
    try:
        for start in range(0, len(batches), per_window):
            window = batches[start: start + per_window]
            described = [([(int(i // cols) * tile_size, int(i % cols) * tile_size) for i in batch],
                          [bool(f) for f in tissue.ravel()[batch]]) for batch in window]
            pending.append((window, driver.submit(_compute_window, work, pool, described)))
            while len(pending) > WINDOWS_AHEAD:
                done = yield from _drain(pending.popleft(), cols, done, total, progress)
        while pending:
            done = yield from _drain(pending.popleft(), cols, done, total, progress)
    finally:
        work.stop_and_wait()
        for _, future in pending:  # what they still ran, they ran as no-ops
            future.exception()


def write_segmented_pyramid(path: Path, slide: Slide, tissue: np.ndarray, tile_size: int, overlap: int,
                            predictor: Predictor, *, threads: int, batch_size: int, checkpoints: Path | None = None,
                            quality: int = JPEG_QUALITY, progress: Progress | None = None,
                            keep_stored_glass: bool = True, **recipe: Any) -> PyramidInfo:
    """The slide's tiles, segmented (:func:`segmented_tiles`), written as the pyramid ``path``
    (:func:`ops.pyramid.write_pyramid`, the slide's pixel size in it).

    With ``checkpoints`` (a folder) the write keeps checkpoints there and a write of the same
    slide and settings lost before the end is resumed: only the rows of tiles after its last
    checkpoint are segmented again. ``keep_stored_glass``: as :func:`segmented_tiles`.
    """
    shape, mpp_yx = slide.levels[0].shape_yx, slide.mpp_yx
    first_row = 0 if checkpoints is None else resumable_rows(checkpoints, shape, tile_size, mpp_yx=mpp_yx,
                                                               quality=quality)
    encoding = JpegEncoding(tile_size, quality)
    with closing(segmented_tiles(slide, tissue, tile_size, overlap, predictor, threads=threads, batch_size=batch_size,
                                 encoding=encoding, progress=progress, first_row=first_row,
                                 keep_stored_glass=keep_stored_glass, **recipe)) as tiles:
        return write_pyramid(path, shape, tile_size, tiles, mpp_yx=mpp_yx, quality=quality, checkpoints=checkpoints)


def _drain(entry: tuple[list[np.ndarray], Future], cols: int, done: int, total: int,
           progress: Progress | None) -> Iterator[tuple[int, int, np.ndarray | EncodedTile]]:
    window, future = entry
    for batch, tiles in zip(window, future.result()):
        for index, rgb in zip(batch, tiles):
            yield int(index // cols), int(index % cols), rgb
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return done
