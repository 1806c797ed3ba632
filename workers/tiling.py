"""Dask inside a worker: a whole slide's tiles read, segmented and overlaid in parallel, handed
back in row-major order for the pyramid writer.

Each worker process runs one in-process Dask cluster (threads, no extra processes: the tiles
stay in this process's memory and its GPU pinning holds for every thread). A batch of tiles is
one Dask task (:func:`ops.nuclei.segment_tiles`: read with margins, pre-filter, one Triton
request for its tissue tiles, crop, overlay, and, given the pyramid's encoding, each tile's
JPEG and 2× reduction for the writer: :func:`ops.pyramid.encode_tile`), so ``threads`` tasks run at once and as many
requests are in flight, which keeps Triton's dynamic batcher fed while other threads read and
decode. At most ``2 × threads`` batches are submitted ahead of the one being written, so memory
stays bounded whatever the slide's size.

Tasks name the slide and predictor by a token of this module's registry rather than carrying
them: Dask pickles task arguments even between threads, and an open slide (file descriptor,
tile cache) or a predictor holding shared memory must not be copied.
"""

from __future__ import annotations

import atexit
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ops.nuclei import segment_tiles
from ops.protocols import Predictor, Progress
from ops.pyramid import EncodedTile, JpegEncoding, encode_tile
from ops.wsi import Slide

AHEAD_PER_THREAD = 2  # batches submitted ahead of the one being written, per Dask thread
GLASS_PER_BATCH = 4  # a batch holds at most this many times batch_size tiles in all


@dataclass
class _TileWork:
    """One slide's work, shared by its Dask tasks; ``running`` counts the batches under way."""

    slide: Slide
    predictor: Predictor
    tile_size: int
    overlap: int
    recipe: dict[str, Any] = field(default_factory=dict)  # segment_tiles's threshold, input_layout
    encoding: JpegEncoding | None = None
    stopped: bool = False
    running: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def stop_and_wait(self) -> None:
        """Start no more batches and wait for those under way: the slide and the predictor's
        shared memory are released by the caller next, and no thread may still use them."""
        with self.changed:
            self.stopped = True
            self.changed.wait_for(lambda: self.running == 0)


_WORK: dict[str, _TileWork] = {}
_WORK_LOCK = threading.Lock()


@lru_cache(maxsize=None)
def dask_client(threads: int) -> Any:
    """This process's in-process Dask cluster of ``threads`` threads (started on first use)."""
    import dask
    from distributed import Client

    # Stack sampling would take CPU from the tiles; the cluster lives as long as the process. Its
    # HTTP server (health, dashboard where bokeh is installed) listens on loopback only, any port.
    dask.config.set({"distributed.worker.profile.enabled": False})
    client = Client(processes=False, n_workers=1, threads_per_worker=threads, dashboard_address="127.0.0.1:0",
                    worker_dashboard_address="127.0.0.1:0", set_as_default=False)
    # Closed while the interpreter still runs: left to Client.__del__, the close waits 60 s
    # for an event loop already gone.
    atexit.register(client.close)
    return client


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


def _segment_batch(token: str, positions: list[tuple[int, int]],
                   tissue: list[bool]) -> list[np.ndarray] | list[EncodedTile] | None:
    """A Dask task: one batch of :func:`segmented_tiles`; None once the slide's work has stopped."""
    with _WORK_LOCK:
        work = _WORK.get(token)
    if work is None:
        return None
    with work.changed:
        if work.stopped:
            return None
        work.running += 1
    try:
        tiles = segment_tiles(work.slide, positions, tissue, work.tile_size, work.overlap, work.predictor,
                              **work.recipe)
        return tiles if work.encoding is None else [encode_tile(tile, work.encoding) for tile in tiles]
    finally:
        with work.changed:
            work.running -= 1
            work.changed.notify_all()


def segmented_tiles(slide: Slide, tissue: np.ndarray, tile_size: int, overlap: int, predictor: Predictor, *,
                    threads: int, batch_size: int, encoding: JpegEncoding | None = None,
                    progress: Progress | None = None,
                    **recipe: Any) -> Iterator[tuple[int, int, np.ndarray | EncodedTile]]:
    """Every level-0 tile of ``slide``, segmented where ``tissue`` says so, in row-major order.

    Args:
        slide: the open slide (read by ``threads`` threads at once).
        tissue: (rows, cols) bool over the tile grid (:func:`ops.nuclei.tissue_tiles`).
        tile_size, overlap: as :func:`ops.nuclei.segment_tiles`.
        predictor: the model; called from several threads at once.
        threads: Dask threads, hence batches (and model requests) in flight.
        batch_size: tissue tiles per model request.
        encoding: the pyramid's, when the tiles are for :func:`ops.pyramid.write_pyramid`:
            each is then encoded in its batch's task and yielded as an ``EncodedTile``.
        progress: called with (tiles done, tiles in all) after each batch.
        recipe: ``threshold`` and ``input_layout``, as :func:`ops.nuclei.segment_tiles` takes them.

    Yields:
        ``(row, col, rgb)`` per tile (``rgb`` an ``EncodedTile`` given ``encoding``), as
        :func:`ops.pyramid.write_pyramid` takes them.

    Raises:
        Whatever a batch raises (SlideReadError, InferenceError, ...), when its turn comes;
        the batches still queued are cancelled.
    """
    rows, cols = tissue.shape
    total = rows * cols
    token = secrets.token_hex(8)
    work = _TileWork(slide, predictor, tile_size, overlap, recipe, encoding)
    with _WORK_LOCK:
        _WORK[token] = work
    client = dask_client(threads)
    pending: deque[tuple[np.ndarray, Any]] = deque()
    done = 0
    try:
        for batch in plan_batches(tissue, batch_size):
            positions = [(int(i // cols) * tile_size, int(i % cols) * tile_size) for i in batch]
            flags = [bool(f) for f in tissue.ravel()[batch]]
            pending.append((batch, client.submit(_segment_batch, token, positions, flags, pure=False)))
            while len(pending) > AHEAD_PER_THREAD * threads:
                done = yield from _drain(pending.popleft(), cols, done, total, progress)
        while pending:
            done = yield from _drain(pending.popleft(), cols, done, total, progress)
    finally:
        for _, future in pending:
            future.cancel()
        work.stop_and_wait()
        with _WORK_LOCK:
            del _WORK[token]


def _drain(entry: tuple[np.ndarray, Any], cols: int, done: int, total: int,
           progress: Progress | None) -> Iterator[tuple[int, int, np.ndarray | EncodedTile]]:
    batch, future = entry
    for index, rgb in zip(batch, future.result()):
        yield int(index // cols), int(index % cols), rgb
    done += len(batch)
    if progress is not None:
        progress(done, total)
    return done
