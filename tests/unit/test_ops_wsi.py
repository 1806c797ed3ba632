"""ops.wsi: the fast tifffile path against OpenSlide itself, pixel for pixel, and the failures.

References: OpenSlide's ``read_region`` composited on white (OpenSlide's fixtures in
tests/data/openslide and generated pyramids from tests/unit/slides.py), its level_dimensions,
level_downsamples, tile properties and openslide.mpp-x/y.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile

from ops.errors import InvalidParameter, SlideOpenError, SlideReadError
from ops.wsi import TileCache, open_slide, rgba_on_white
from tests.helpers import write_slide

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "openslide"
BOXES = FIXTURES / "boxes.tiff"  # Deflate, 64x64 tiles, 300x250 / 150x125 / 75x62 / 37x31
SMALL = FIXTURES / "small.svs"  # one 16x16 level in one 64x64 Aperio RGB JPEG tile
DICOM = FIXTURES / "boxes_0.dcm"
GENERATED_SHAPE = (1000, 1300)  # 4x6 tiles of 256 at level 0, cut at the bottom and right
# Both readers decode JPEG with libjpeg-turbo (imagecodecs 2026.3.6, openslide-bin 4.0.1):
# measured max abs difference 0 on small.svs and on every generated JPEG pyramid here. Other
# builds may use another IDCT or chroma upsampling, which moves pixels by a grey level or two.
JPEG_TOLERANCE = 2


def openslide_region(path: Path, level: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """OpenSlide's own region of ``level`` at level pixel (y0, x0), composited on white.

    OpenSlide takes the origin in level-0 pixels; (y0, x0) times an integer downsample lands on
    a level pixel exactly.
    """
    with openslide.OpenSlide(path) as reference:
        downsample = reference.level_downsamples[level]
        assert downsample == int(downsample), "only integer downsamples address a level pixel exactly"
        location = (x0 * int(downsample), y0 * int(downsample))
        return rgba_on_white(np.asarray(reference.read_region(location, level, (width, height))))


def openslide_canvas(path: Path, level: int, margin: int) -> np.ndarray:
    """The whole of ``level`` as OpenSlide reads it, with ``margin`` white pixels on every side.

    Read from the level-0 origin, the one origin every downsample (integer or not) maps exactly.
    """
    with openslide.OpenSlide(path) as reference:
        width, height = reference.level_dimensions[level]
        rgba = np.asarray(reference.read_region((0, 0), level, (width + margin, height + margin)))
    canvas = np.full((height + 2 * margin, width + 2 * margin, 3), 255, np.uint8)
    canvas[margin:, margin:] = rgba_on_white(rgba)
    return canvas


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b).max())


def regions(shape_yx: tuple[int, int], tile_yx: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(y0, x0, height, width): inside one tile, across tile borders, past every edge, whole."""
    (h, w), (th, tw) = shape_yx, tile_yx
    return [
        (1, 2, 5, 7),  # inside the first tile
        (th - 3, tw - 5, 9, 11),  # across a tile corner (four tiles)
        (0, 0, h, w),  # the whole level
        (-7, -9, 20, 30),  # negative origin: white above and to the left
        (h - 4, w - 6, 12, 15),  # past the bottom and right edges
        (-3, -2, h + 8, w + 5),  # past all four edges
        (h + 2, w + 3, 4, 4),  # wholly outside: all white
        (-10, 5, 4, 6),  # wholly above
    ]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """JPEG pyramids (3 levels, 2x apart) with 256, 128 and 512 px tiles."""
    folder = tmp_path_factory.mktemp("wsi")
    return {tile: write_slide(folder / f"tiles{tile}.tif", GENERATED_SHAPE, tile_yx=(tile, tile), levels=3)
            for tile in (256, 128, 512)}


# ---------------------------------------------------------------- pixels against OpenSlide


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_fast_path_equals_openslide_on_every_level_of_a_deflate_pyramid(level):
    margin = 40
    canvas = openslide_canvas(BOXES, level, margin)
    with open_slide(BOXES) as slide:
        assert slide.backend == "tifffile"
        for y0, x0, height, width in regions(slide.levels[level].shape_yx, (64, 64)):
            got = slide.read_region(level, y0, x0, height, width)
            expected = canvas[margin + y0: margin + y0 + height, margin + x0: margin + x0 + width]
            np.testing.assert_array_equal(got, expected, err_msg=f"level {level} region {(y0, x0, height, width)}")
        # The level is not trivially white: boxes of several colours.
        assert len(np.unique(slide.read_level(level).reshape(-1, 3), axis=0)) >= 4


@pytest.mark.parametrize("level", [0, 1])
def test_fast_path_equals_openslide_regions_at_integer_downsamples(level):
    # Levels 0 and 1 of boxes.tiff are 1x and 2x: OpenSlide reads each region itself, negative
    # origins included (levels 2 and 3, 4.016x and 8.086x, are checked from the origin above).
    with open_slide(BOXES) as slide:
        for y0, x0, height, width in regions(slide.levels[level].shape_yx, (64, 64)):
            np.testing.assert_array_equal(slide.read_region(level, y0, x0, height, width),
                                          openslide_region(BOXES, level, y0, x0, height, width))


def test_fast_path_equals_openslide_on_aperio_jpeg():
    with open_slide(SMALL) as slide:
        assert slide.backend == "tifffile"
        for y0, x0, height, width in regions((16, 16), (64, 64)):
            got = slide.read_region(0, y0, x0, height, width)
            assert max_diff(got, openslide_region(SMALL, 0, y0, x0, height, width)) <= JPEG_TOLERANCE
        assert slide.read_level(0).std() > 2  # real tissue, not a flat colour


@pytest.mark.parametrize("tile", [256, 128, 512])
def test_fast_path_equals_openslide_on_a_generated_jpeg_pyramid(generated, tile):
    path = generated[tile]
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        for level in range(3):
            for y0, x0, height, width in regions(slide.levels[level].shape_yx, (tile, tile)):
                got = slide.read_region(level, y0, x0, height, width)
                expected = openslide_region(path, level, y0, x0, height, width)
                assert max_diff(got, expected) <= JPEG_TOLERANCE, (level, y0, x0, height, width)


def test_single_level_slide(tmp_path):
    path = write_slide(tmp_path / "one.tif", (300, 200), tile_yx=(128, 128), levels=1)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        assert slide.backend == "tifffile"
        assert [level.shape_yx for level in slide.levels] == [(300, 200)]
        assert reference.level_count == 1
        expected = openslide_region(path, 0, -5, -5, 310, 210)
        assert max_diff(slide.read_region(0, -5, -5, 310, 210), expected) <= JPEG_TOLERANCE


# ---------------------------------------------------------------- levels, mpp, backends


def assert_levels_match_openslide(slide, path: Path) -> None:
    with openslide.OpenSlide(path) as reference:
        assert [level.shape_yx for level in slide.levels] == [(h, w) for w, h in reference.level_dimensions]
        assert [level.downsample for level in slide.levels] == pytest.approx(reference.level_downsamples, rel=1e-12)
        props = reference.properties
        assert [level.tile_shape_yx for level in slide.levels] == [
            (int(props[f"openslide.level[{n}].tile-height"]), int(props[f"openslide.level[{n}].tile-width"]))
            for n in range(reference.level_count)]


def openslide_mpp_yx(path: Path):
    with openslide.OpenSlide(path) as reference:
        x = reference.properties.get(openslide.PROPERTY_NAME_MPP_X)
        y = reference.properties.get(openslide.PROPERTY_NAME_MPP_Y)
    return None if x is None or y is None else (float(y), float(x))


@pytest.mark.parametrize("path, backend", [(BOXES, "tifffile"), (SMALL, "tifffile"), (DICOM, "openslide")])
def test_levels_mpp_and_backend_of_the_fixtures(path, backend):
    with open_slide(path) as slide:
        assert slide.backend == backend
        assert slide.path == path
        assert_levels_match_openslide(slide, path)
        assert slide.mpp_yx == pytest.approx(openslide_mpp_yx(path), rel=1e-9)


def test_boxes_levels_have_uneven_downsamples():
    with open_slide(BOXES) as slide:
        assert [level.shape_yx for level in slide.levels] == [(250, 300), (125, 150), (62, 75), (31, 37)]
        # OpenSlide's downsample is the mean of the two axes' ratios: (250/62 + 300/75) / 2.
        assert [level.downsample for level in slide.levels] == pytest.approx(
            [1.0, 2.0, (250 / 62 + 4) / 2, (250 / 31 + 300 / 37) / 2], rel=1e-12)
        # 28.346 pixels per centimetre (72 dpi): 352.78 microns per pixel.
        assert slide.mpp_yx == pytest.approx((1e4 / 28.346457, 1e4 / 28.346457), rel=1e-6)


@pytest.mark.parametrize("tile", [256, 128, 512])
def test_levels_of_generated_pyramids_match_openslide(generated, tile):
    with open_slide(generated[tile]) as slide:
        assert_levels_match_openslide(slide, generated[tile])
        assert [level.shape_yx for level in slide.levels] == [(1000, 1300), (500, 650), (250, 325)]
        assert [level.tile_shape_yx for level in slide.levels] == [(tile, tile)] * 3


@pytest.mark.parametrize("unit, per_unit", [("CENTIMETER", 1e4), ("INCH", 25400.0)])
def test_mpp_from_resolution_tags_matches_openslide(tmp_path, unit, per_unit):
    # Different x and y resolutions, so a swapped axis shows.
    path = tmp_path / f"{unit}.tif"
    tifffile.imwrite(path, np.zeros((64, 96, 3), np.uint8), tile=(32, 32), photometric="rgb", metadata=None,
                     compression="zlib", resolution=(per_unit / 0.25, per_unit / 0.5), resolutionunit=unit)
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.mpp_yx == pytest.approx((0.5, 0.25), rel=1e-6)
        assert slide.mpp_yx == pytest.approx(openslide_mpp_yx(path), rel=1e-6)
    written = write_slide(tmp_path / f"{unit}-pyramid.tif", (64, 64), tile_yx=(64, 64), levels=1, mpp=0.25,
                          resolution_unit=unit)
    with open_slide(written) as slide:
        assert slide.mpp_yx == pytest.approx((0.25, 0.25), rel=1e-6)
        assert slide.mpp_yx == pytest.approx(openslide_mpp_yx(written), rel=1e-6)


def test_mpp_is_none_without_a_unit_or_without_resolution_tags(tmp_path):
    no_unit = write_slide(tmp_path / "no-unit.tif", (64, 64), tile_yx=(64, 64), levels=1, mpp=None)
    # small.svs without "Aperio" in its descriptions: a generic TIFF with no resolution tags at
    # all, where tifffile reports its default of 1 pixel per inch.
    no_tags = tmp_path / "no-tags.tif"
    no_tags.write_bytes(SMALL.read_bytes().replace(b"Aperio", b"Xperio"))
    for path in (no_unit, no_tags):
        with open_slide(path) as slide:
            assert slide.backend == "tifffile"
            assert slide.mpp_yx is None
            assert openslide_mpp_yx(path) is None


def test_forced_openslide_backend_reads_what_openslide_reads():
    with open_slide(BOXES, backend="openslide") as forced, open_slide(BOXES) as fast:
        assert forced.backend == "openslide"
        assert forced.levels == fast.levels
        assert forced.mpp_yx == pytest.approx(fast.mpp_yx, rel=1e-9)
        for level in (0, 1):
            for region in regions(fast.levels[level].shape_yx, (64, 64)):
                np.testing.assert_array_equal(forced.read_region(level, *region), fast.read_region(level, *region))
        for level in (2, 3):
            np.testing.assert_array_equal(forced.read_level(level), fast.read_level(level))
            # Away from the origin a non-integer downsample puts OpenSlide between level pixels
            # (it resamples); the backend asks for the nearest level-0 pixel, as documented.
            with openslide.OpenSlide(BOXES) as reference:
                downsample = reference.level_downsamples[level]
                location = (round(5 * downsample), round(3 * downsample))
                rgba = np.asarray(reference.read_region(location, level, (20, 10)))
            np.testing.assert_array_equal(forced.read_region(level, 3, 5, 10, 20), rgba_on_white(rgba))


def test_forced_tifffile_backend_refuses_what_it_cannot_read():
    with open_slide(SMALL, backend="tifffile") as slide:
        assert slide.backend == "tifffile"
    with pytest.raises(SlideOpenError, match=r"boxes_0\.dcm.*tifffile") as caught:
        open_slide(DICOM, backend="tifffile")
    assert "openslide:" not in str(caught.value)  # OpenSlide was not tried


def test_dicom_through_openslide_equals_openslide():
    with open_slide(DICOM) as slide:
        for region in regions((16, 16), (64, 64)):
            np.testing.assert_array_equal(slide.read_region(0, *region), openslide_region(DICOM, 0, *region))


@pytest.mark.parametrize("kwargs", [{"backend": "pillow"}, {"backend": "TIFFFILE"}, {"cache_bytes": -1}])
def test_bad_open_arguments(kwargs):
    with pytest.raises(InvalidParameter):
        open_slide(BOXES, **kwargs)


# ---------------------------------------------------------------- cache and threads


def test_tile_cache_is_a_byte_bounded_lru_of_read_only_tiles():
    tile = np.zeros((4, 4, 3), np.uint8)  # 48 bytes
    cache = TileCache(max_bytes=100)  # room for two
    cache.put((0, 0), tile.copy())
    cache.put((0, 1), tile.copy())
    assert cache.get((0, 0)) is not None  # (0, 1) is now the least recently used
    cache.put((0, 2), tile.copy())
    assert cache.nbytes == 96 <= cache.max_bytes
    assert cache.get((0, 1)) is None
    stored = cache.get((0, 2))
    assert stored is not None and not stored.flags.writeable
    with pytest.raises(ValueError):
        stored[0, 0, 0] = 1
    cache.put((1, 0), np.zeros((8, 8, 3), np.uint8))  # 192 bytes: larger than the whole cache
    assert cache.get((1, 0)) is None and cache.nbytes == 96
    empty = TileCache(0)
    empty.put((0, 0), tile.copy())
    assert empty.get((0, 0)) is None and empty.nbytes == 0


@pytest.mark.parametrize("cache_bytes", [0, 3 * 64 * 64 * 3, 2**26])
def test_cache_bounds_memory_and_returns_fresh_arrays(cache_bytes):
    margin = 100
    expected = openslide_canvas(BOXES, 0, margin)
    with open_slide(BOXES, cache_bytes=cache_bytes) as slide:
        for _ in range(2):  # the second pass reads from the cache where it holds the tiles
            for y0 in range(0, 250, 50):
                for x0 in range(0, 300, 70):
                    region = slide.read_region(0, y0, x0, 60, 80)
                    assert region.flags.writeable and region.flags.c_contiguous
                    np.testing.assert_array_equal(region, expected[margin + y0:margin + y0 + 60,
                                                                   margin + x0:margin + x0 + 80])
                    region[...] = 0  # a caller's writes must not reach the cached tiles
        cache = slide._reader._cache  # noqa: SLF001 - the bound is the point of this test
        assert cache.nbytes <= cache_bytes
        assert (cache.nbytes > 0) == (cache_bytes > 0)
        np.testing.assert_array_equal(slide.read_level(0), expected[margin:-margin, margin:-margin])


def test_whole_tile_reads_are_fresh_uncached_and_equal_to_region_reads():
    """A whole tile inside the level (what a stage without margins reads) is decoded for the
    caller alone: equal to the same pixels read as part of a larger region, writable, and not
    kept in the cache; a cached tile is copied out."""
    expected = openslide_canvas(BOXES, 0, 0)
    with open_slide(BOXES) as slide:
        cache = slide._reader._cache  # noqa: SLF001 - whether the tile is cached is the point
        for y0, x0 in ((0, 0), (64, 128), (128, 192)):
            tile = slide.read_region(0, y0, x0, 64, 64)
            assert tile.flags.writeable and tile.flags.c_contiguous and tile.shape == (64, 64, 3)
            np.testing.assert_array_equal(tile, expected[y0:y0 + 64, x0:x0 + 64])
        assert cache.nbytes == 0
        slide.read_region(0, 1, 1, 64, 64)  # cuts four tiles: they are cached
        cached = slide.read_region(0, 0, 0, 64, 64)
        cached[...] = 0
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 64, 64), expected[:64, :64])
        # The last column and row are cut by the image's edge: the general path's white fill.
        np.testing.assert_array_equal(slide.read_region(0, 192, 256, 64, 64)[:, 44:], 255)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_concurrent_reads_equal_sequential_reads(generated, backend):
    path = generated[128]
    rng = random.Random(7)
    jobs = []
    for _ in range(240):
        level = rng.randrange(3)
        height, width = ((1000, 1300), (500, 650), (250, 325))[level]
        jobs.append((level, rng.randrange(-50, height), rng.randrange(-50, width),
                     rng.randrange(1, 200), rng.randrange(1, 200)))
    with open_slide(path, backend=backend, cache_bytes=0) as sequential:
        expected = [sequential.read_region(*job) for job in jobs]
    # A cache of four tiles, so threads evict each other's tiles all the time.
    with open_slide(path, backend=backend, cache_bytes=4 * 128 * 128 * 3) as shared:
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda job: shared.read_region(*job), jobs))
    for job, a, b in zip(jobs, got, expected):
        np.testing.assert_array_equal(a, b, err_msg=str(job))


# ---------------------------------------------------------------- failures


def test_missing_file(tmp_path):
    with pytest.raises(SlideOpenError, match="missing.svs"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideOpenError, match="is not a file"):
        open_slide(tmp_path)


def test_files_that_are_not_slides(tmp_path):
    import imagecodecs

    text = tmp_path / "notes.tif"
    text.write_text("not a slide\n")
    png = tmp_path / "picture.tif"
    png.write_bytes(imagecodecs.png_encode(np.zeros((8, 8, 3), np.uint8)))
    for path in (text, png):
        for backend in (None, "tifffile", "openslide"):
            with pytest.raises(SlideOpenError, match=path.name):
                open_slide(path, backend=backend)


def test_unopenable_tiff():
    # A tiled TIFF in an unknown compression: tifffile leaves it to OpenSlide, which refuses it.
    with pytest.raises(SlideOpenError, match=r"unopenable\.tiff.*52479"):
        open_slide(FIXTURES / "unopenable.tiff")


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_unreadable_svs_opens_but_fails_to_read(backend):
    with open_slide(FIXTURES / "unreadable.svs", backend=backend) as slide:
        assert slide.backend == backend
        with pytest.raises(SlideReadError, match=r"unreadable\.svs.*Bogus marker length"):
            slide.read_region(0, 0, 0, 16, 16)


def test_truncated_copies_of_a_generated_tiff(tmp_path):
    path = write_slide(tmp_path / "whole.tif", (600, 700), levels=3)
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        ifds = [page.offset for page in tif.pages]
    assert len(ifds) == 3 and ifds[1] > 8
    cuts = {
        "in the last level's tiles": len(data) - 10,
        "between two levels, just before an IFD": ifds[1],  # tifffile alone sees one level
        "inside an IFD": ifds[2] + 20,
        "in the first level's tiles": ifds[1] // 2,
        "inside the header": 6,
    }
    for what, size in cuts.items():
        cut = tmp_path / f"cut{size}.tif"
        cut.write_bytes(data[:size])
        for backend in (None, "tifffile", "openslide"):
            try:
                with open_slide(cut, backend=backend) as slide:
                    for level in range(len(slide.levels)):
                        slide.read_level(level)
            except SlideOpenError as e:
                message = str(e)
            except SlideReadError as e:
                message = str(e)
            else:
                pytest.fail(f"a copy cut {what} ({size} bytes) read without an error ({backend=})")
            assert str(cut) in message, message
        with pytest.raises(SlideOpenError, match="truncated" if size > 6 else "not a slide"):
            open_slide(cut)


@pytest.mark.parametrize("path", [BOXES, DICOM])
def test_read_after_close(path):
    slide = open_slide(path)
    slide.read_region(0, 0, 0, 8, 8)  # now cached on the tifffile path
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(SlideReadError, match="closed"):
        slide.read_region(0, 0, 0, 8, 8)
    with pytest.raises(SlideReadError, match="closed"):
        slide.read_level(0)


@pytest.mark.parametrize("args", [
    (-1, 0, 0, 8, 8), (4, 0, 0, 8, 8), (1.0, 0, 0, 8, 8), ("0", 0, 0, 8, 8),
    (0, 0, 0, 0, 8), (0, 0, 0, 8, 0), (0, 0, 0, -3, 8),
    (0, 1.5, 0, 8, 8), (0, 0, np.float64(2.0), 8, 8), (0, 0, 0, 8.0, 8), (0, 0, 0, 8, "8"), (0, None, 0, 8, 8),
    (True, 0, 0, 8, 8), (0, 0, 0, np.bool_(True), 8),
])
def test_bad_region_arguments(args):
    with open_slide(BOXES) as slide, pytest.raises(InvalidParameter):
        slide.read_region(*args)


def test_numpy_integers_are_integers():
    with open_slide(BOXES) as slide:
        args = [np.int64(1), np.int32(3), np.uint16(5), np.int64(7), np.int8(9)]
        np.testing.assert_array_equal(slide.read_region(*args), slide.read_region(1, 3, 5, 7, 9))


def test_read_level_refuses_a_level_over_max_pixels():
    with open_slide(BOXES) as slide:
        assert slide.read_level(0, max_pixels=250 * 300).shape == (250, 300, 3)
        with pytest.raises(InvalidParameter, match=r"boxes\.tiff.*250x300"):
            slide.read_level(0, max_pixels=250 * 300 - 1)
        with pytest.raises(InvalidParameter):
            slide.read_level(4)


def test_find_slide_takes_a_file_or_the_one_slide_in_a_folder(tmp_path):
    from ops.wsi import find_slide

    (tmp_path / "config_render.json").write_text("{}")
    (tmp_path / "case.SVS").write_bytes(b"")
    assert find_slide(tmp_path) == tmp_path / "case.SVS"
    assert find_slide(tmp_path / "case.SVS") == tmp_path / "case.SVS"
    (tmp_path / "other.tif").write_bytes(b"")
    with pytest.raises(SlideOpenError, match="case.SVS, other.tif"):
        find_slide(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideOpenError, match="one slide file; it holds none"):
        find_slide(empty)


# ---------------------------------------------------------------- tiles as the file stores them


def test_stored_jpeg_is_the_tile_s_whole_stream_with_its_shared_tables_put_back():
    with open_slide(SMALL) as slide:  # Aperio: abbreviated tile streams, tables in JPEGTables
        stream = slide.stored_jpeg(0, 0, 0)
        assert stream.startswith(b"\xff\xd8") and stream.endswith(b"\xff\xd9")
        # Aperio's JPEG holds RGB untransformed: decoded so, it is the tile's pixels
        pixels = imagecodecs.jpeg8_decode(stream, colorspace="RGB", outcolorspace="RGB")
        assert pixels.shape == (64, 64, 3)
        np.testing.assert_array_equal(pixels[:16, :16], slide.read_level(0))


def test_stored_jpeg_of_a_generated_pyramid_decodes_to_its_tile(generated):
    with open_slide(generated[256]) as slide:
        stream = slide.stored_jpeg(0, 3, 5)  # the last tile, cut by the image's bottom and right
        height, width = GENERATED_SHAPE[0] - 3 * 256, GENERATED_SHAPE[1] - 5 * 256
        np.testing.assert_array_equal(imagecodecs.jpeg_decode(stream)[:height, :width],
                                      slide.read_region(0, 3 * 256, 5 * 256, height, width))
        np.testing.assert_array_equal(imagecodecs.jpeg_decode(slide.stored_jpeg(1, 0, 0)),
                                      slide.read_region(1, 0, 0, 256, 256))
        with pytest.raises(InvalidParameter, match="no tile \\(4, 0\\)"):
            slide.stored_jpeg(0, 4, 0)
    with pytest.raises(SlideReadError, match="closed"):
        slide.stored_jpeg(0, 0, 0)


def test_no_stored_jpeg_where_the_file_holds_another_compression_or_openslide_reads_it(generated):
    with open_slide(BOXES) as slide:  # Deflate
        assert slide.stored_jpeg(0, 0, 0) is None
    with open_slide(generated[256], backend="openslide") as slide:
        assert slide.stored_jpeg(0, 0, 0) is None
