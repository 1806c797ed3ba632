"""ops.pyramid: the file tifffile and OpenSlide read back, bounded memory, and the failures."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ops import pyramid
from ops.errors import InvalidParameter, SlideWriteError
from ops.pyramid import (WRITE_BUFFER_BYTES, JpegEncoding, downsample_2x, encode_tile, level_shapes, stored_tile,
                         write_pyramid)
from ops.wsi import open_slide
from tests import real_he
from tests.helpers import write_slide

TILE = 256
MPP_YX = (0.5, 0.25)
# 1000 x 1300 in 256 px tiles: 4 x 6 tiles, cut at the bottom and the right; halved down to
# both sides <= 256: 1000x1300, 500x650, 250x325, 125x163.
SHAPE = (1000, 1300)
SHAPES = ((1000, 1300), (500, 650), (250, 325), (125, 163))
# JPEG at quality 90 on smooth content stays well within this mean absolute error.
JPEG_MAE = 3.0


def smooth_rgb(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]]
    return np.stack([xx * 255 // shape[1], yy * 255 // shape[0], (xx // 3 + yy // 5) % 256], -1).astype(np.uint8)


def tiles_of(image: np.ndarray, tile: int = TILE, whole_edges: bool = False):
    """Row-major tiles of ``image``; with ``whole_edges`` edge tiles are whole, white outside."""
    for row in range(math.ceil(image.shape[0] / tile)):
        for col in range(math.ceil(image.shape[1] / tile)):
            block = image[row * tile: (row + 1) * tile, col * tile: (col + 1) * tile]
            if whole_edges:
                whole = np.full((tile, tile, 3), 255, np.uint8)
                whole[: block.shape[0], : block.shape[1]] = block
                block = whole
            yield row, col, block


def reference_half(image: np.ndarray) -> np.ndarray:
    """The 2x2 area mean in floating point, odd edges averaged with themselves."""
    padded = np.pad(image.astype(np.float64), ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)), mode="edge")
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 3).mean(axis=(1, 3))


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    image = smooth_rgb(SHAPE)
    path = tmp_path_factory.mktemp("pyramid") / "image.tif"
    info = write_pyramid(path, SHAPE, TILE, tiles_of(image), mpp_yx=MPP_YX, min_level_size=256)
    return image, info


def test_info_says_what_was_written(written):
    _, info = written
    assert info.level_shapes == SHAPES
    assert (info.tile_size, info.mpp_yx, info.bigtiff) == (TILE, MPP_YX, False)
    assert info.nbytes == info.path.stat().st_size
    assert sorted(p.name for p in info.path.parent.iterdir()) == ["image.tif"]  # no spool or temp left


def test_tifffile_reads_a_jpeg_pyramid(written):
    import tifffile

    _, info = written
    with tifffile.TiffFile(info.path) as tif:
        series = tif.series[0]
        assert series.is_pyramidal
        assert [level.shape for level in series.levels] == [(*s, 3) for s in SHAPES]
        assert [int(page.subfiletype) for page in tif.pages] == [0, 1, 1, 1]
        for page, (height, width) in zip(tif.pages, SHAPES):
            assert (page.tilelength, page.tilewidth) == (TILE, TILE)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            x_per_cm, y_per_cm = page.resolution
            # Each level's own pixel size: level 0's scaled by the level's downsample.
            assert 1e4 / y_per_cm == pytest.approx(MPP_YX[0] * SHAPE[0] / height, rel=1e-6)
            assert 1e4 / x_per_cm == pytest.approx(MPP_YX[1] * SHAPE[1] / width, rel=1e-6)


def test_openslide_reads_levels_mpp_and_pixels(written):
    import openslide

    image, info = written
    with openslide.OpenSlide(info.path) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count == 4
        assert slide.level_dimensions == tuple((w, h) for h, w in SHAPES)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(MPP_YX[0])
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP_YX[1])
        reference = image
        for level, (height, width) in enumerate(SHAPES):
            read = np.asarray(slide.read_region((0, 0), level, (width, height)))[..., :3]
            assert mae(read, reference) < JPEG_MAE, f"level {level}"
            reference = reference_half(reference)


def test_edge_tiles_may_be_whole_tiles(tmp_path):
    import tifffile

    image = smooth_rgb(SHAPE)
    cut = write_pyramid(tmp_path / "cut.tif", SHAPE, TILE, tiles_of(image))
    whole = write_pyramid(tmp_path / "whole.tif", SHAPE, TILE, tiles_of(image, whole_edges=True))
    with tifffile.TiffFile(cut.path) as a, tifffile.TiffFile(whole.path) as b:
        assert len(a.pages) == len(b.pages) == 2
        for page_a, page_b in zip(a.pages, b.pages):
            np.testing.assert_array_equal(page_a.asarray(), page_b.asarray())


@pytest.mark.parametrize(("shape", "min_level_size", "expected"), [
    ((1000, 1300), 1024, ((1000, 1300), (500, 650))),
    ((1024, 1024), 1024, ((1024, 1024),)),
    ((100, 70), 1024, ((100, 70),)),
    ((5, 3), 1, ((5, 3), (3, 2), (2, 1), (1, 1))),
])
def test_level_shapes_halve_rounding_up(shape, min_level_size, expected):
    assert level_shapes(shape, min_level_size) == expected


def test_a_slide_smaller_than_one_tile_is_a_single_level(tmp_path):
    import openslide

    image = smooth_rgb((100, 70))
    info = write_pyramid(tmp_path / "small.tif", (100, 70), TILE, tiles_of(image), mpp_yx=(0.25, 0.25))
    assert info.level_shapes == ((100, 70),)
    with openslide.OpenSlide(info.path) as slide:
        assert (slide.level_count, slide.level_dimensions) == (1, ((70, 100),))
        assert mae(np.asarray(slide.read_region((0, 0), 0, (70, 100)))[..., :3], image) < JPEG_MAE


def test_downsample_is_the_2x2_mean_rounded_half_up():
    grey = np.array([[0, 2, 7, 1, 1, 1],
                     [4, 6, 9, 0, 0, 0]], np.uint8)
    odd = np.array([[0, 2, 7],
                    [4, 6, 9],
                    [1, 1, 2]], np.uint8)
    # 12/4 = 3, 17/4 = 4.25, 2/4 = 0.5 rounded up
    np.testing.assert_array_equal(downsample_2x(np.repeat(grey[..., None], 3, -1))[..., 1], [[3, 4, 1]])
    # the odd column and row count twice: (7+7+9+9)/4, (1+1+1+1)/4, (2+2+2+2)/4
    np.testing.assert_array_equal(downsample_2x(np.repeat(odd[..., None], 3, -1))[..., 2], [[3, 8], [1, 2]])


@pytest.mark.parametrize("shape", [(256, 256, 3), (255, 256, 3), (256, 131, 3), (1, 1, 3), (7, 5, 3)])
def test_downsample_matches_the_padded_block_mean(shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    padded = np.pad(image, ((0, shape[0] % 2), (0, shape[1] % 2), (0, 0)), mode="edge").astype(np.uint16)
    expected = (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] + 2) >> 2
    np.testing.assert_array_equal(downsample_2x(image), expected.astype(np.uint8))
    # a view with strides of its own (a crop of a larger tile) reads the same pixels
    np.testing.assert_array_equal(downsample_2x(np.pad(image, ((0, 3), (0, 3), (0, 0)))[: shape[0], : shape[1]]),
                                  expected.astype(np.uint8))


def test_tiles_encoded_by_the_caller_make_the_same_file(tmp_path):
    image = smooth_rgb(SHAPE)
    plain = write_pyramid(tmp_path / "plain.tif", SHAPE, TILE, tiles_of(image), mpp_yx=MPP_YX, quality=80)
    encoding = JpegEncoding(TILE, quality=80)
    encoded = write_pyramid(tmp_path / "encoded.tif", SHAPE, TILE,
                            ((r, c, encode_tile(block, encoding)) for r, c, block in tiles_of(image)),
                            mpp_yx=MPP_YX, quality=80)
    assert encoded.path.read_bytes() == plain.path.read_bytes()


@pytest.mark.parametrize(("encoding", "cut", "match"), [
    (JpegEncoding(TILE, quality=80), None, r"tile \(0, 0\): encoded as .*quality=80.* the pyramid is .*quality=90"),
    (JpegEncoding(TILE), (200, 256), r"tile \(0, 0\): encoded as .* for \(200, 256\) px.* image part \(256, 256\)"),
])
def test_tiles_encoded_otherwise_than_the_pyramid_are_refused(tmp_path, encoding, cut, match):
    def encoded(item):
        row, col, block = item
        return row, col, encode_tile(block[: cut[0], : cut[1]] if cut else block, encoding)

    with pytest.raises(InvalidParameter, match=match):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, with_tile(tiles_of(smooth_rgb(SHAPE)), 0, encoded))
    assert list(tmp_path.iterdir()) == []


def test_bigtiff_past_the_threshold(tmp_path, monkeypatch):
    import openslide
    import tifffile

    monkeypatch.setattr(pyramid, "BIGTIFF_ABOVE_BYTES", 0)
    info = write_pyramid(tmp_path / "big.tif", SHAPE, TILE, tiles_of(smooth_rgb(SHAPE)))
    assert info.bigtiff
    with tifffile.TiffFile(info.path) as tif:
        assert tif.is_bigtiff
    with openslide.OpenSlide(info.path) as slide:
        assert slide.level_count == 2


def test_full_chroma_keeps_a_thin_green_line(tmp_path):
    import tifffile

    image = np.full((256, 256, 3), 128, np.uint8)
    image[:, 101] = (0, 255, 0)  # an outline, one pixel wide
    errors = {}
    for subsampling in [(1, 1), (2, 2)]:
        info = write_pyramid(tmp_path / f"{subsampling}.tif", (256, 256), TILE, tiles_of(image), subsampling=subsampling)
        errors[subsampling] = mae(tifffile.imread(info.path)[:, 101], image[:, 101])
    assert errors[(1, 1)] < 10 < errors[(2, 2)]


def peak_bytes_of_a_write(path, shape: tuple[int, int]) -> int:
    """Peak traced allocation (numpy buffers included) while writing a ``shape`` slide."""
    import imagecodecs  # noqa: F401  loaded before tracing: a module's first import is not the writer's memory
    import tifffile  # noqa: F401

    tiles = [np.roll(smooth_rgb((TILE, TILE)), k * 37, axis=1) for k in range(4)]
    cols = math.ceil(shape[1] / TILE)
    # One of four prepared tiles each time: the source allocates nothing while traced.
    source = ((r, c, tiles[(r + c) % 4]) for r in range(math.ceil(shape[0] / TILE)) for c in range(cols))
    tracemalloc.start()
    try:
        write_pyramid(path, shape, TILE, source)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_slide(tmp_path):
    width = 4096
    square, tall = (4096, width), (16384, width)  # the tall one: 4x the pixels, 5 levels not 3
    peaks = {shape: peak_bytes_of_a_write(tmp_path / f"{shape[0]}.tif", shape) for shape in (square, tall)}
    for shape, peak in peaks.items():
        # The reduced levels' strips, TILE rows each, sum to less than TILE x width x 3 bytes;
        # beyond them the writer holds a few tiles and two write buffers (the spool's, the
        # file's), however many rows the slide has.
        strips = sum(TILE * w * 3 for _, w in level_shapes(shape)[1:])
        assert strips < TILE * width * 3
        assert peak - strips - 2 * WRITE_BUFFER_BYTES < 1e6, f"{shape}: peak {peak}, strips {strips}"
    assert peaks[tall] < (16384 // 2) * (width // 2) * 3 / 10  # a tenth of its first reduced level


def test_tiles_out_of_order_fail_and_leave_nothing(tmp_path):
    existing = tmp_path / "image.tif"
    existing.write_bytes(b"the previous result")
    swapped = list(tiles_of(smooth_rgb(SHAPE)))
    swapped[7], swapped[8] = swapped[8], swapped[7]
    with pytest.raises(InvalidParameter, match=r"tile \(1, 2\) out of order: expected tile \(1, 1\)"):
        write_pyramid(existing, SHAPE, TILE, swapped)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif"]
    assert existing.read_bytes() == b"the previous result"


def with_tile(tiles, index: int, replacement):
    for i, item in enumerate(tiles):
        yield replacement(item) if i == index else item


@pytest.mark.parametrize(("replacement", "match"), [
    (lambda t: (t[0], t[1], t[2].astype(np.float32)), r"tile \(1, 2\): expected uint8 \(h, w, 3\) RGB, got float32"),
    (lambda t: (t[0], t[1], t[2][..., :1]), r"tile \(1, 2\): expected uint8 \(h, w, 3\) RGB, got uint8\(256, 256, 1\)"),
    (lambda t: (t[0], t[1], t[2][:200]), r"tile \(1, 2\): \(200, 256\) does not cover"),
    (lambda t: t[2], r"tile \(1, 2\): expected \(tile_row, tile_col, rgb\)"),
])
def test_bad_tiles_are_named(tmp_path, replacement, match):
    with pytest.raises(InvalidParameter, match=match):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, with_tile(tiles_of(smooth_rgb(SHAPE)), 8, replacement))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("count", "match"), [(23, r"tiles ended before tile \(3, 5\) of 4×6"), (25, "more tiles")])
def test_too_few_or_too_many_tiles(tmp_path, count, match):
    tiles = list(tiles_of(smooth_rgb(SHAPE)))
    tiles = tiles[:count] + [(4, 0, tiles[0][2])] * (count - len(tiles))
    with pytest.raises(InvalidParameter, match=match):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, tiles)
    assert list(tmp_path.iterdir()) == []


def test_an_error_from_the_tile_source_passes_through(tmp_path):
    def failing():
        yield 0, 0, np.zeros((TILE, TILE, 3), np.uint8)
        raise RuntimeError("inference failed")

    with pytest.raises(RuntimeError, match="inference failed"):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, failing())
    assert list(tmp_path.iterdir()) == []


def test_unwritable_paths_raise_slide_write_error(tmp_path):
    with pytest.raises(SlideWriteError, match="no-such-folder/image.tif"):
        write_pyramid(tmp_path / "no-such-folder" / "image.tif", SHAPE, TILE, tiles_of(smooth_rgb(SHAPE)))
    (tmp_path / "image.tif").mkdir()  # the rename onto a folder fails after the whole write
    with pytest.raises(SlideWriteError, match="image.tif"):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, tiles_of(smooth_rgb(SHAPE)))
    assert [p.name for p in tmp_path.iterdir()] == ["image.tif"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"tile_size": 100}, "tile_size"),
    ({"tile_size": 0}, "tile_size"),
    ({"shape_yx": (0, 10)}, "shape_yx"),
    ({"mpp_yx": (0.25, -1.0)}, "mpp_yx"),
    ({"quality": 0}, "quality"),
    ({"min_level_size": 0}, "min_level_size"),
    ({"subsampling": (4, 1)}, "subsampling"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    arguments = {"shape_yx": SHAPE, "tile_size": TILE, **kwargs}
    with pytest.raises(InvalidParameter, match=match):
        write_pyramid(tmp_path / "image.tif", tiles=iter(()), **arguments)
    assert list(tmp_path.iterdir()) == []


def interrupted_after(tiles, count: int):
    """The tiles, then a failure where the ``count``-th would come: a stage killed mid-slide."""
    for i, item in enumerate(tiles):
        if i == count:
            raise RuntimeError("worker lost")
        yield item


def killed_after_two_rows(tmp_path, image, **options) -> Path:
    """Checkpoints of a write of ``image`` killed at its 14th tile (two rows checkpointed)."""
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(RuntimeError):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, interrupted_after(tiles_of(image), 13),
                      checkpoints=checkpoints, checkpoint_rows=1, **options)
    return checkpoints


@pytest.mark.parametrize(("every_rows", "fail_at", "resumed_rows"), [
    (1, 7, 1),  # a checkpoint after row 0; the first reduced level's strip is half filled
    (1, 20, 3),  # after rows 0, 1 and 2: every level mid-strip somewhere
    (2, 17, 2),  # one checkpoint, after row 1
    (2, 5, 0),  # killed before the first checkpoint
])
def test_an_interrupted_write_resumes_from_its_checkpoint_to_the_same_file(tmp_path, every_rows, fail_at,
                                                                           resumed_rows):
    image = smooth_rgb(SHAPE)
    arguments = {"mpp_yx": MPP_YX, "min_level_size": 256}
    whole = write_pyramid(tmp_path / "whole.tif", SHAPE, TILE, tiles_of(image), **arguments)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(RuntimeError, match="worker lost"):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, interrupted_after(tiles_of(image), fail_at),
                      checkpoints=checkpoints, checkpoint_rows=every_rows, **arguments)
    assert not (tmp_path / "image.tif").exists()
    assert all(p.stat().st_mode & 0o077 == 0 for p in checkpoints.iterdir())  # patient pixels: owner only
    assert pyramid.resumable_rows(checkpoints, SHAPE, TILE, **arguments) == resumed_rows
    rest = (item for item in tiles_of(image) if item[0] >= resumed_rows)
    resumed = write_pyramid(tmp_path / "image.tif", SHAPE, TILE, rest, checkpoints=checkpoints,
                            checkpoint_rows=every_rows, **arguments)
    assert resumed.path.read_bytes() == whole.path.read_bytes()
    assert not checkpoints.exists()  # done: nothing left to resume


def test_a_checkpoint_of_another_write_is_not_resumed(tmp_path):
    image = smooth_rgb(SHAPE)
    checkpoints = killed_after_two_rows(tmp_path, image, quality=80)
    assert pyramid.resumable_rows(checkpoints, SHAPE, TILE, quality=80) == 2
    assert pyramid.resumable_rows(checkpoints, SHAPE, TILE, quality=90) == 0
    # at quality 90 the write starts over, from row 0, and makes the file a plain write makes
    info = write_pyramid(tmp_path / "image.tif", SHAPE, TILE, tiles_of(image), checkpoints=checkpoints, quality=90)
    assert info.path.read_bytes() == write_pyramid(tmp_path / "plain.tif", SHAPE, TILE, tiles_of(image)).path.read_bytes()


def test_tiles_from_the_start_after_a_checkpoint_are_refused(tmp_path):
    image = smooth_rgb(SHAPE)
    checkpoints = killed_after_two_rows(tmp_path, image)
    with pytest.raises(InvalidParameter, match=r"tile \(0, 0\) out of order: expected tile \(2, 0\)"):
        write_pyramid(tmp_path / "image.tif", SHAPE, TILE, tiles_of(image), checkpoints=checkpoints, checkpoint_rows=1)
    assert pyramid.resumable_rows(checkpoints, SHAPE, TILE) == 2  # still there for a right retry


def test_a_torn_checkpoint_is_not_trusted(tmp_path):
    image = smooth_rgb(SHAPE)
    checkpoints = killed_after_two_rows(tmp_path, image)
    with open(checkpoints / "tiles.spool", "r+b") as spool:  # the disk lost the spool's tail
        spool.truncate(100)
    assert pyramid.resumable_rows(checkpoints, SHAPE, TILE) == 0
    (checkpoints / "state.json").write_text("{not json")
    assert pyramid.resumable_rows(checkpoints, SHAPE, TILE) == 0
    info = write_pyramid(tmp_path / "image.tif", SHAPE, TILE, tiles_of(image), checkpoints=checkpoints)
    assert info.path.read_bytes() == write_pyramid(tmp_path / "plain.tif", SHAPE, TILE, tiles_of(image)).path.read_bytes()


# ---------------------------------------------------------------- a slide's own JPEG, stored as is


def test_a_slide_s_own_jpeg_stands_in_only_where_it_reads_back_as_its_pixels(tmp_path):
    path = write_slide(tmp_path / "slide.tif", (128, 192), tile_yx=(64, 64), levels=1)
    with open_slide(path) as slide:
        stream, pixels = slide.stored_jpeg(0, 1, 1), slide.read_region(0, 64, 64, 64, 64)
    assert JpegEncoding(64).stores_as_is(stream, pixels)
    assert not JpegEncoding(64, subsampling=(1, 1)).stores_as_is(stream, pixels)  # the frame's sampling differs
    assert not JpegEncoding(128).stores_as_is(stream, pixels)  # another tile size
    changed = pixels.copy()
    changed[5, 7, 1] ^= 1
    assert not JpegEncoding(64).stores_as_is(stream, changed)  # not these pixels
    assert not JpegEncoding(64).stores_as_is(stream[: len(stream) // 2], pixels)  # cut short
    assert not JpegEncoding(64).stores_as_is(b"\xff\xd8 not a JPEG", pixels)


def test_aperio_rgb_jpeg_is_refused_by_its_colours():
    """CMU-1's tiles: 240 px, unsubsampled, RGB untransformed under a photometric RGB tag; under
    the pyramid's YCbCr tags the same stream reads back in other colours."""
    with open_slide(real_he.path_of("cmu-small-region")) as slide:
        stream, pixels = slide.stored_jpeg(0, 2, 3), slide.read_region(0, 2 * 240, 3 * 240, 240, 240)
    assert stream is not None
    assert not JpegEncoding(240, subsampling=(1, 1)).stores_as_is(stream, pixels)


def test_a_stored_tile_keeps_its_bytes_and_reduces_its_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    tile = stored_tile(b"\xff\xd8stored", pixels, JpegEncoding(64))
    assert tile.jpeg == b"\xff\xd8stored" and tile.shape_yx == (40, 64) and tile.encoding == JpegEncoding(64)
    np.testing.assert_array_equal(tile.reduced, downsample_2x(pixels))
    with pytest.raises(InvalidParameter, match="larger than 32 px"):
        stored_tile(b"", pixels, JpegEncoding(32))
