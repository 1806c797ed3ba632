"""workers.tiling: Dask runs batches of tiles in parallel and hands them back in row-major order."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ops.errors import InferenceServerUnavailable
from ops.nuclei import segment_tiles
import tifffile

from ops.pyramid import JpegEncoding, downsample_2x, encode_tile, jpeg_header, write_pyramid
from ops.samples import render_he
from ops.wsi import open_slide
from tests.helpers import darkness, opened_test_slide, write_slide
from workers.tiling import plan_batches, segmented_tiles, stored_glass_header

SHAPE = (520, 650)
TILE = 64


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    yield from opened_test_slide(tmp_path_factory.mktemp("slide"), SHAPE, levels=1)


def test_batches_hold_a_request_of_tissue_and_a_bounded_run_of_glass():
    tissue = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], bool)
    batches = plan_batches(tissue, batch_size=2)
    # two tissue tiles close a batch; eight tiles (4 × batch_size) close one too
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18],
                                             [19]]
    assert np.concatenate(batches).tolist() == list(range(tissue.size))


def test_every_tile_comes_back_in_row_major_order_as_the_sequential_op_gives_it(slide):
    rows, cols = -(-SHAPE[0] // TILE), -(-SHAPE[1] // TILE)
    tissue = np.random.default_rng(3).random((rows, cols)) < 0.5
    threads_seen = set()

    def model(batch):
        threads_seen.add(threading.get_ident())
        return darkness(batch)

    reports = []
    out = list(segmented_tiles(slide, tissue, TILE, 8, model, threads=3, batch_size=4,
                               progress=lambda done, total: reports.append((done, total))))
    assert [(r, c) for r, c, _ in out] == [(r, c) for r in range(rows) for c in range(cols)]
    for row, col, rgb in out:
        [expected] = segment_tiles(slide, [(row * TILE, col * TILE)], [tissue[row, col]], TILE, 8, darkness)
        np.testing.assert_array_equal(rgb, expected)
    assert reports[-1] == (rows * cols, rows * cols) and reports == sorted(reports)
    assert len(threads_seen) > 1  # batches really ran on several Dask threads


def test_tiles_for_the_pyramid_come_encoded_as_the_writer_would_encode_them(slide):
    rows, cols = -(-SHAPE[0] // TILE), -(-SHAPE[1] // TILE)
    tissue = np.random.default_rng(4).random((rows, cols)) < 0.5
    encoding = JpegEncoding(TILE, quality=75)
    out = list(segmented_tiles(slide, tissue, TILE, 8, darkness, threads=2, batch_size=4, encoding=encoding))
    assert [(r, c) for r, c, _ in out] == [(r, c) for r in range(rows) for c in range(cols)]
    for row, col, encoded in out:
        [pixels] = segment_tiles(slide, [(row * TILE, col * TILE)], [tissue[row, col]], TILE, 8, darkness)
        expected = encode_tile(pixels, encoding)
        assert (encoded.jpeg, encoded.shape_yx, encoded.encoding) == (expected.jpeg, expected.shape_yx, encoding)
        np.testing.assert_array_equal(encoded.reduced, expected.reduced)


def test_glass_keeps_the_slide_s_own_jpeg_and_reads_back_as_it_was(tmp_path):
    path = write_slide(tmp_path / "jpeg.tif", SHAPE, tile_yx=(TILE, TILE), levels=1)
    rows, cols = -(-SHAPE[0] // TILE), -(-SHAPE[1] // TILE)
    tissue = np.random.default_rng(5).random((rows, cols)) < 0.5
    encoding = JpegEncoding(TILE, quality=75)
    with open_slide(path) as jpeg_slide:
        assert stored_glass_header(jpeg_slide, tissue, encoding) == jpeg_header(jpeg_slide.stored_jpeg(0, 0, 0))
        out = list(segmented_tiles(jpeg_slide, tissue, TILE, 8, darkness, threads=2, batch_size=4, encoding=encoding))
        for row, col, encoded in out:
            [pixels] = segment_tiles(jpeg_slide, [(row * TILE, col * TILE)], [tissue[row, col]], TILE, 8, darkness)
            kept = jpeg_slide.stored_jpeg(0, row, col) if not tissue[row, col] else encode_tile(pixels, encoding).jpeg
            assert encoded.jpeg == kept
            np.testing.assert_array_equal(encoded.reduced, downsample_2x(pixels))
        original = jpeg_slide.read_level(0)
        encoded = list(segmented_tiles(jpeg_slide, tissue, TILE, 8, darkness, threads=2, batch_size=4,
                                       encoding=encoding, keep_stored_glass=False))
        assert [tile.jpeg for _, _, tile in encoded] == [
            encode_tile(segment_tiles(jpeg_slide, [(r * TILE, c * TILE)], [tissue[r, c]], TILE, 8, darkness)[0],
                        encoding).jpeg for r, c, _ in encoded]
    write_pyramid(tmp_path / "out.tif", SHAPE, TILE, iter(out), quality=75)
    level0 = tifffile.imread(tmp_path / "out.tif", level=0)
    for row, col in np.argwhere(~tissue):
        inside = np.s_[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE]
        np.testing.assert_array_equal(level0[inside], original[inside])


def test_a_glass_tile_stored_unlike_the_checked_one_is_encoded(tmp_path):
    """One tile of the slide re-encoded at another quality (other tables): its header differs
    from the tile the slide was checked on, so it is encoded, while the rest stay as stored."""
    rows, cols = -(-SHAPE[0] // TILE), -(-SHAPE[1] // TILE)
    image, _ = render_he(0, 0, *SHAPE, seed=2)
    usual, other = JpegEncoding(TILE, quality=90), JpegEncoding(TILE, quality=50)
    streams = [(other if (r, c) == (2, 3) else usual).encode(image[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE])
               for r in range(rows) for c in range(cols)]
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tiff:
        tiff.write(iter(streams), shape=(*SHAPE, 3), dtype=np.uint8, metadata=None, **usual.tiff_arguments())
    glass = np.zeros((rows, cols), bool)
    encoding = JpegEncoding(TILE, quality=75)
    with open_slide(tmp_path / "mixed.tif") as mixed:
        assert stored_glass_header(mixed, glass, encoding) is not None
        out = {(r, c): tile for r, c, tile in segmented_tiles(mixed, glass, TILE, 0, darkness, threads=2,
                                                               batch_size=4, encoding=encoding)}
        assert out[2, 3].jpeg == encode_tile(mixed.read_region(0, 2 * TILE, 3 * TILE, TILE, TILE), encoding).jpeg
        assert all(tile.jpeg == mixed.stored_jpeg(0, *position) for position, tile in out.items() if position != (2, 3))


def test_glass_is_encoded_where_the_slide_s_tiles_cannot_stand_in(slide, tmp_path):
    rows, cols = -(-SHAPE[0] // TILE), -(-SHAPE[1] // TILE)
    some_glass = np.random.default_rng(6).random((rows, cols)) < 0.5
    assert not stored_glass_header(slide, some_glass, JpegEncoding(TILE))  # Deflate tiles
    path = write_slide(tmp_path / "jpeg.tif", SHAPE, tile_yx=(2 * TILE, 2 * TILE), levels=1)
    with open_slide(path) as other_tiles:
        assert not stored_glass_header(other_tiles, some_glass, JpegEncoding(TILE))  # another tile grid
        assert not stored_glass_header(other_tiles, np.ones((rows, cols), bool), JpegEncoding(2 * TILE))  # no glass


def test_a_failing_batch_stops_the_rest_and_waits_for_those_under_way(slide):
    tissue = np.ones((-(-SHAPE[0] // TILE), -(-SHAPE[1] // TILE)), bool)
    calls = []
    lock = threading.Lock()

    def flaky(batch):
        with lock:
            calls.append(len(batch))
            if len(calls) == 3:
                raise InferenceServerUnavailable("Triton went away")
        return darkness(batch)

    tiles = segmented_tiles(slide, tissue, TILE, 0, flaky, threads=2, batch_size=4)
    with pytest.raises(InferenceServerUnavailable, match="went away"):
        for _ in tiles:
            pass
    seen = len(calls)
    assert seen < tissue.size // 4  # the rest of the slide was never sent
    threading.Event().wait(0.3)
    assert len(calls) == seen  # nothing kept running behind the error


def peak_traced_bytes(run) -> int:
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_whatever_the_slide_height(tmp_path):
    """A slide four times taller needs no more memory: nothing slide-sized is ever held.

    The reader's tile cache is bounded by its own setting (64 MiB by default); it is kept
    small here so that what is measured is everything else."""
    from ops.pyramid import write_pyramid
    from workers.tiling import dask_pools

    dask_pools(2)  # made once per process, outside what is measured
    peaks = {}
    for height in (1536, 6144):
        path = write_slide(tmp_path / f"{height}.tif", (height, 4096), tile_yx=(256, 256), levels=1)
        with open_slide(path, cache_bytes=2 * 2**20) as opened:
            tissue = np.ones((height // 256, 16), bool)
            tiles = segmented_tiles(opened, tissue, 256, 16, darkness, threads=2, batch_size=4)
            peaks[height] = peak_traced_bytes(
                lambda: write_pyramid(tmp_path / f"out-{height}.tif", (height, 4096), 256, tiles))
    slide_bytes = 6144 * 4096 * 3  # 72 MiB of RGB
    assert peaks[6144] < slide_bytes / 3, peaks
    assert peaks[6144] < 1.25 * peaks[1536] + 4 * 2**20, peaks
