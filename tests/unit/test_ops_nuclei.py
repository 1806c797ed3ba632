"""ops.nuclei: tiles read with their margins, the model fed only tissue, its answer cropped and overlaid."""

from __future__ import annotations

import numpy as np
import pytest

from ops.errors import InvalidParameter, ModelShapeMismatch
from ops.nuclei import model_input, model_side, read_tiles, request_nbytes, segment_tiles, tissue_tiles, validate_overlap
from ops.overlay import overlay_nuclei
from tests.helpers import darkness, opened_test_slide, tissue_at

SHAPE = (600, 700)  # level 0, (y, x): not a multiple of the tiles, so the last row and column are partial


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    yield from opened_test_slide(tmp_path_factory.mktemp("slide"), SHAPE, levels=2)


def test_the_model_side_is_the_tile_and_its_margins_rounded_up_to_the_unet():
    assert model_side(256, 0) == 256
    assert model_side(256, 16) == 288
    assert model_side(240, 3) == 248  # 246 rounded up to a multiple of 8
    assert request_nbytes(16, 256) == 16 * 256 * 256 * (3 + 4)


@pytest.mark.parametrize("overlap", [-1, 129, 1.5, True, "8"])
def test_an_overlap_beyond_half_a_tile_or_not_whole_is_refused(overlap):
    with pytest.raises(InvalidParameter, match="overlap"):
        validate_overlap(overlap, 256)


def test_tiles_are_read_with_their_margins_white_past_the_edges(slide):
    regions = read_tiles(slide, [(0, 0), (512, 640)], 128, 8)
    assert regions.shape == (2, 144, 144, 3) and regions.dtype == np.uint8
    np.testing.assert_array_equal(regions[0], slide.read_region(0, -8, -8, 144, 144))
    assert (regions[0, :8] == 255).all() and (regions[0, :, :8] == 255).all()
    # the last tile: 88 rows and 60 columns of the slide, the rest white
    np.testing.assert_array_equal(regions[1, 8:96, 8:68], slide.read_region(0, 512, 640, 88, 60))
    assert (regions[1, 96:] == 255).all() and (regions[1, :, 68:] == 255).all()


def test_the_model_input_is_channels_first_bytes():
    regions = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    out = model_input(regions)
    assert out.shape == (2, 3, 4, 4) and out.flags.c_contiguous and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1, 2], regions[1, :, :, 2])
    with pytest.raises(InvalidParameter):
        model_input(regions.astype(np.float32))


def test_only_tissue_tiles_reach_the_model_and_get_the_overlay(slide):
    positions = [(0, 0), (256, 256), (512, 640)]
    tissue = [False, True, False]
    calls = []

    def model(batch):
        calls.append(batch.copy())
        return darkness(batch)

    tiles = segment_tiles(slide, positions, tissue, 128, 0, model)
    assert len(calls) == 1 and calls[0].shape == (1, 3, 128, 128) and calls[0].dtype == np.uint8
    np.testing.assert_array_equal(calls[0][0], slide.read_region(0, 256, 256, 128, 128).transpose(2, 0, 1))
    # glass tiles come back as read, cut to the slide at the edge
    np.testing.assert_array_equal(tiles[0], slide.read_region(0, 0, 0, 128, 128))
    assert tiles[2].shape == (88, 60, 3)
    np.testing.assert_array_equal(tiles[2], slide.read_region(0, 512, 640, 88, 60))
    # the tissue tile carries the overlay of what the model said
    original = slide.read_region(0, 256, 256, 128, 128)
    expected = overlay_nuclei(original, darkness(original.transpose(2, 0, 1)[None])[0, 0])
    np.testing.assert_array_equal(tiles[1], expected)
    assert not np.array_equal(tiles[1], original)


def test_with_an_overlap_the_margin_informs_the_model_but_only_the_centre_is_kept(slide):
    calls = []

    def margin_only(batch):
        # nuclei everywhere except the tile itself: none of it may reach the output
        calls.append(batch.shape)
        out = np.ones((len(batch), 1, *batch.shape[2:]), np.float32)
        out[:, :, 16:16 + 128, 16:16 + 128] = 0.0
        return out

    tiles = segment_tiles(slide, [(256, 256)], [True], 128, 16, margin_only)
    assert calls == [(1, 3, 160, 160)]
    np.testing.assert_array_equal(tiles[0], slide.read_region(0, 256, 256, 128, 128))


def test_an_answer_of_the_wrong_shape_is_a_model_shape_mismatch(slide):
    with pytest.raises(ModelShapeMismatch, match=r"expected \(1, 1, 128, 128\)"):
        segment_tiles(slide, [(256, 256)], [True], 128, 0, lambda batch: np.zeros((1, 2, 128, 128), np.float32))
    with pytest.raises(InvalidParameter, match="tissue flags"):
        segment_tiles(slide, [(0, 0)], [True, False], 128, 0, darkness)


def test_a_channels_last_model_and_another_threshold_are_the_definition_s_to_choose(slide):
    def channels_last(batch):
        assert batch.shape == (1, 128, 128, 3) and batch.flags.c_contiguous
        return darkness(batch.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)  # (B, S, S, 1)

    original = slide.read_region(0, 256, 256, 128, 128)
    for threshold in (0.5, 0.2):
        first = segment_tiles(slide, [(256, 256)], [True], 128, 0, darkness, threshold=threshold)
        last = segment_tiles(slide, [(256, 256)], [True], 128, 0, channels_last, threshold=threshold,
                             input_layout="channels_last")
        np.testing.assert_array_equal(first[0], last[0])
        expected = overlay_nuclei(original, darkness(original.transpose(2, 0, 1)[None])[0, 0], threshold=threshold)
        np.testing.assert_array_equal(first[0], expected)
    assert not np.array_equal(segment_tiles(slide, [(256, 256)], [True], 128, 0, darkness, threshold=0.2)[0],
                              segment_tiles(slide, [(256, 256)], [True], 128, 0, darkness)[0])
    for threshold in (0, 1, 1.5, True):
        with pytest.raises(InvalidParameter, match="threshold"):
            segment_tiles(slide, [(256, 256)], [True], 128, 0, darkness, threshold=threshold)
    with pytest.raises(InvalidParameter, match="input_layout"):
        model_input(np.zeros((1, 4, 4, 3), np.uint8), "NCHW")


def test_tissue_tiles_cover_the_tissue_and_skip_the_glass(slide):
    tiles = tissue_tiles(slide, 64, 100 * 100)
    assert tiles.shape == (10, 11) and tiles.dtype == bool
    centres_y = np.arange(10) * 64 + 32
    centres_x = np.arange(11) * 64 + 32
    truth = tissue_at(SHAPE, np.minimum(centres_y, SHAPE[0] - 1), np.minimum(centres_x, SHAPE[1] - 1))
    assert tiles[truth].all()  # every tile whose centre is tissue is kept
    assert 0 < tiles.sum() < tiles.size  # and some glass is skipped
