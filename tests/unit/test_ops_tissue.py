"""ops.tissue: Otsu, saturation and small objects checked by hand; the tissue mask of generated
slides against their truth; the level or thumbnail it is made from; the tiles that fall on it."""

from __future__ import annotations

import numpy as np
import pytest

from ops.errors import InvalidParameter
from ops.tissue import (TissueMask, low_resolution_rgb, otsu_threshold, remove_small_objects, saturation,
                        thumbnail, tile_grid, tiles_with_tissue, tissue_mask, tissue_pixels, validate_tile_size)
from ops.wsi import open_slide
from tests.helpers import write_slide, tissue_at

SHAPE0 = (1000, 1300)  # levels 1000x1300 (1.3 M pixels), 500x650 (325 000), 250x325 (81 250)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tissue")
    paths = {
        "pyramid": write_slide(folder / "pyramid.tif", SHAPE0, levels=3),
        "single": write_slide(folder / "single.tif", (600, 700), tile_yx=(128, 128), levels=1),
        "blank": write_slide(folder / "blank.tif", SHAPE0, levels=3, blank=True),
    }
    opened = {name: open_slide(path) for name, path in paths.items()}
    yield opened
    for slide in opened.values():
        slide.close()


def box_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Mean of factor x factor boxes, the image padded with white to whole boxes, rounded half up."""
    height, width = -(-rgb.shape[0] // factor) * factor, -(-rgb.shape[1] // factor) * factor
    padded = np.full((height, width, 3), 255.0)
    padded[: rgb.shape[0], : rgb.shape[1]] = rgb
    mean = padded.reshape(height // factor, factor, width // factor, factor, 3).mean(axis=(1, 3))
    return np.floor(mean + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- Otsu, saturation, objects


def test_otsu_splits_two_modes_at_the_lowest_best_edge():
    values = np.array([10] * 3 + [20] * 5 + [200] * 4 + [210] * 2, float)
    # 256 bins over [10, 210], 0.78125 wide. Between-class variance n1 * n2 * (m1 - m2)^2 with the
    # values themselves: {10, 20} | {200, 210}: 8 * 6 * (16.25 - 203.33)^2 = 1.68e6, against
    # 3.99e5 for {10} | rest and 4.21e5 for rest | {210}. Every edge from the top of 20's bin
    # (bin 12) to the bottom of 200's (bin 243) gives that split; the lowest is edge 13.
    threshold = otsu_threshold(values)
    assert threshold == 10 + 13 * 0.78125 == 20.15625
    assert list(values >= threshold) == [False] * 8 + [True] * 6


def test_otsu_with_a_value_range_and_few_bins():
    # Bins [0, .25) [.25, .5) [.5, .75) [.75, 1] hold 3, 0, 1, 1 values (centres .125 .. .875).
    # Split after bin 0 or 1 (bin 1 is empty: the same classes): 3 * 2 * (.125 - .75)^2 = 2.34;
    # after bin 2: 4 * 1 * (.25 - .875)^2 = 1.56. The lowest best edge is 0.25.
    values = np.array([0.1, 0.1, 0.2, 0.7, 0.9])
    assert otsu_threshold(values, bins=4, value_range=(0.0, 1.0)) == 0.25
    # The same values over their own range [0.1, 0.9]: edges 0.1, 0.3, 0.5, 0.7, 0.9.
    assert otsu_threshold(values, bins=4) == pytest.approx(0.3)


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0, 42.0])
def test_otsu_of_constant_input_is_the_value(value):
    values = np.full((3, 4), value)
    assert otsu_threshold(values) == value
    assert otsu_threshold(values, value_range=(0.0, 1.0)) == value
    assert (values >= otsu_threshold(values)).all()  # nothing in a lower class


def test_saturation_of_hand_checked_pixels():
    rgb = np.array([[[255, 0, 0], [200, 100, 50], [0, 0, 0], [128, 128, 128]],
                    [[255, 255, 255], [226, 150, 196], [84, 44, 132], [10, 0, 20]]], np.uint8)
    expected = np.array([[1.0, 150 / 200, 0.0, 0.0],
                         [0.0, 76 / 226, 88 / 132, 1.0]], np.float32)
    got = saturation(rgb)
    assert got.dtype == np.float32 and got.shape == (2, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_tissue_pixels_are_saturated_and_not_glass():
    glass, pink, nucleus = [255, 255, 255], [226, 150, 196], [84, 44, 132]
    pale_tint = [250, 235, 240]  # saturated (0.06) but brighter than GLASS_LEVEL: glass
    grey = [120, 118, 119]  # dark but not stained (saturation 0.017)
    rgb = np.array([[glass, pink, nucleus, pale_tint, grey, glass]], np.uint8)
    np.testing.assert_array_equal(tissue_pixels(rgb), [[False, True, True, False, False, False]])
    assert not tissue_pixels(np.full((4, 5, 3), 255, np.uint8)).any()


def test_remove_small_objects_counts_8_connected_pixels():
    mask = np.array([
        [1, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],  # (1, 3) and (2, 4) touch at a corner: one object of 2
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 1],  # a row of 3, and a single pixel
    ], bool)
    three = np.zeros_like(mask)
    three[[0, 0, 1, 4, 4, 4], [0, 1, 0, 0, 1, 2]] = True
    two = three.copy()
    two[[1, 2], [3, 4]] = True
    before = mask.copy()
    np.testing.assert_array_equal(remove_small_objects(mask, 0), mask)
    np.testing.assert_array_equal(remove_small_objects(mask, 1), mask)
    np.testing.assert_array_equal(remove_small_objects(mask, 2), two)
    np.testing.assert_array_equal(remove_small_objects(mask, 3), three)
    assert not remove_small_objects(mask, 4).any()
    assert not remove_small_objects(np.zeros((3, 3), bool), 1).any()
    np.testing.assert_array_equal(mask, before)  # the input is left alone


# ---------------------------------------------------------------- the mask of a slide


@pytest.mark.parametrize("limit", [1_300_000, 325_000, 81_250, 20_000])
def test_tissue_mask_matches_the_truth(slides, limit):
    mask = tissue_mask(slides["pyramid"], pixel_count_limit=limit)
    height, width = mask.mask.shape
    assert height * width <= limit
    # The truth at each mask pixel's centre, in level-0 pixels.
    ys = (np.arange(height) + 0.5) * mask.downsample_yx[0]
    xs = (np.arange(width) + 0.5) * mask.downsample_yx[1]
    truth = tissue_at(SHAPE0, ys, xs)
    iou = (truth & mask.mask).sum() / (truth | mask.mask).sum()
    assert iou > 0.9, iou  # measured 0.98 to 0.996


@pytest.mark.parametrize("limit, shape, downsample, level, factor", [
    (2_000_000, (1000, 1300), 1.0, 0, None),
    (1_300_000, (1000, 1300), 1.0, 0, None),  # exactly fits
    (1_299_999, (500, 650), 2.0, 1, None),
    (325_000, (500, 650), 2.0, 1, None),
    (324_999, (250, 325), 4.0, 2, None),
    (81_250, (250, 325), 4.0, 2, None),
    (81_249, (125, 163), 8.0, 2, 2),  # no level fits: level 2 halved, its last column half white
    (1_000, (25, 33), 40.0, 2, 10),  # ceil(sqrt(81 250 / 1 000)) = 10
    (820, (23, 30), 44.0, 2, 11),  # 10 would give 25 x 33 = 825 > 820
])
def test_the_largest_level_that_fits_else_a_thumbnail(slides, limit, shape, downsample, level, factor):
    slide = slides["pyramid"]
    rgb, downsample_yx = low_resolution_rgb(slide, limit)
    assert rgb.shape == (*shape, 3) and rgb.dtype == np.uint8
    assert downsample_yx == (downsample, downsample)
    expected = slide.read_level(level)
    np.testing.assert_array_equal(rgb, expected if factor is None else box_mean(expected, factor))
    mask = tissue_mask(slide, pixel_count_limit=limit)
    assert mask.mask.shape == shape and mask.downsample_yx == (downsample, downsample)


def test_a_single_level_slide_gets_a_thumbnail(slides):
    slide = slides["single"]  # 600 x 700
    rgb, downsample_yx = low_resolution_rgb(slide, 100_000)
    # ceil(sqrt(420 000 / 100 000)) = 3: 200 x 234 (the last column a third level, two thirds white).
    assert rgb.shape == (200, 234, 3) and downsample_yx == (3.0, 3.0)
    np.testing.assert_array_equal(rgb, box_mean(slide.read_level(0), 3))


@pytest.mark.parametrize("factor, block", [(1, 2048), (7, 2048), (7, 20), (7, 5), (16, 64), (3, 1)])
def test_thumbnail_is_a_box_mean_whatever_the_block(slides, factor, block):
    slide = slides["pyramid"]
    np.testing.assert_array_equal(thumbnail(slide, 1, factor, block=block), box_mean(slide.read_level(1), factor))


@pytest.mark.parametrize("factor, block", [(0, 64), (2, 0), (-1, 64)])
def test_thumbnail_refuses_bad_sizes(slides, factor, block):
    with pytest.raises(InvalidParameter):
        thumbnail(slides["pyramid"], 0, factor, block=block)


@pytest.mark.parametrize("limit", [1_300_000, 81_250, 5_000])
def test_an_all_glass_slide_has_no_tissue(slides, limit):
    mask = tissue_mask(slides["blank"], pixel_count_limit=limit)
    assert mask.mask.dtype == bool and mask.mask.size > 0
    assert not mask.mask.any()


@pytest.mark.parametrize("kwargs", [{"pixel_count_limit": 0}, {"min_object_fraction": -0.1},
                                    {"min_object_fraction": 1.5}])
def test_tissue_mask_refuses_bad_arguments(slides, kwargs):
    with pytest.raises(InvalidParameter):
        tissue_mask(slides["pyramid"], **kwargs)


# ---------------------------------------------------------------- tiles


def test_tile_grid_is_row_major_with_partial_last_row_and_column():
    assert tile_grid((600, 700), 256) == [(0, 0), (0, 256), (0, 512), (256, 0), (256, 256), (256, 512),
                                          (512, 0), (512, 256), (512, 512)]
    assert tile_grid((512, 256), 256) == [(0, 0), (256, 0)]  # sizes that divide: no partial tile
    assert tile_grid((1, 1), 16) == [(0, 0)]
    assert tile_grid((257, 16), 256) == [(0, 0), (256, 0)]
    with pytest.raises(InvalidParameter):
        tile_grid((0, 100), 256)
    with pytest.raises(InvalidParameter):
        tile_grid((100, 100), 100)


def footprint_mask() -> TissueMask:
    """A hand-made 8 x 10 mask of a 48 x 40 level-0 image, 6.4 and 4 level-0 pixels per pixel.

    Tiles of 16 cover mask rows [0, 2.5) [2.5, 5) [5, 7.5) -> rows 0-2, 2-4, 5-7 (row 2 is
    shared) and columns [0, 4) [4, 8) [8, 12) -> columns 0-3, 4-7, 8-9 (cut by the mask's edge).
    """
    mask = np.zeros((8, 10), bool)
    mask[2, 9] = True  # row 2, shared by tile rows 0 and 1; tile column 2
    mask[4, 3] = True  # tile row 1, tile column 0: 1 of its 12 pixels
    mask[5:8, 4:8] = True  # the whole footprint of tile (32, 16)
    return TissueMask(mask, (6.4, 4.0))


@pytest.mark.parametrize("min_fraction, expected", [
    (0.0, [(0, 32), (16, 0), (16, 32), (32, 16)]),
    (0.1, [(0, 32), (16, 32), (32, 16)]),  # (16, 0) holds 1/12; (0, 32) and (16, 32) 1/6 of 3 x 2
    (0.2, [(32, 16)]),
    (1.0, [(32, 16)]),
])
def test_tiles_with_tissue_at_non_integer_downsamples(min_fraction, expected):
    tiles = tile_grid((48, 40), 16)
    assert len(tiles) == 9
    assert tiles_with_tissue(footprint_mask(), tiles, 16, min_fraction=min_fraction) == expected


def test_tiles_with_tissue_keeps_the_callers_order_and_takes_no_tiles():
    tiles = [(32, 16), (0, 0), (0, 32), (16, 16)]
    assert tiles_with_tissue(footprint_mask(), tiles, 16) == [(32, 16), (0, 32)]
    assert tiles_with_tissue(footprint_mask(), [], 16) == []
    with pytest.raises(InvalidParameter):
        tiles_with_tissue(footprint_mask(), tiles, 16, min_fraction=1.5)
    with pytest.raises(InvalidParameter):
        tiles_with_tissue(footprint_mask(), tiles, 24)


def test_tiles_with_tissue_on_a_slide(slides):
    # Level-0 tiles of 256 on the default mask (level 1, 2x): a tile is kept exactly when the
    # truth has tissue somewhere in it, but for tiles that only graze a blob's edge.
    slide = slides["pyramid"]
    mask = tissue_mask(slide)
    tiles = tile_grid(SHAPE0, 256)
    kept = set(tiles_with_tissue(mask, tiles, 256))
    for y0, x0 in tiles:
        truth = tissue_at(SHAPE0, np.arange(y0, min(y0 + 256, SHAPE0[0])), np.arange(x0, min(x0 + 256, SHAPE0[1])))
        if truth.sum() > 256 * 4:  # more than a sliver of tissue
            assert (y0, x0) in kept
        if not truth.any():
            assert (y0, x0) not in kept


@pytest.mark.parametrize("size", [0, -16, 100, 8, 4112, 8192, True, 256.0, "256", None])
def test_validate_tile_size_refuses(size):
    with pytest.raises(InvalidParameter, match="tile_size"):
        validate_tile_size(size)


@pytest.mark.parametrize("size", [16, 256, 240, 4096, np.int64(512)])
def test_validate_tile_size_accepts(size):
    got = validate_tile_size(size)
    assert got == size and type(got) is int
