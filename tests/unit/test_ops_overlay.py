"""ops.overlay: tint and outline on small hand-checked tiles."""

from __future__ import annotations

import numpy as np
import pytest

from ops.errors import InvalidParameter
from ops.overlay import blend, overlay_nuclei

GREEN = (0, 255, 0)
TINTED = (60, 162, 60)  # 0.6 * 100 + 0.4 * (0, 255, 0)


def grey_tile(shape=(5, 5), value=100):
    return np.full((*shape, 3), value, np.uint8)


def square_probability(shape=(5, 5), p=0.9):
    probability = np.zeros(shape, np.float32)
    probability[1:4, 1:4] = p
    return probability


def test_tint_inside_outline_around_and_the_rest_untouched():
    tile = grey_tile()
    out = overlay_nuclei(tile, square_probability(), colour=GREEN, alpha=0.4, outline=True)
    expected = grey_tile()
    expected[1:4, 1:4] = GREEN  # the 3x3 square's 8 boundary pixels ...
    expected[2, 2] = TINTED  # ... around its one interior pixel
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(tile, grey_tile())  # the input is left alone
    assert not np.shares_memory(out, tile)


def test_without_outline_the_whole_mask_is_tinted():
    out = overlay_nuclei(grey_tile(), square_probability(), colour=GREEN, alpha=0.4, outline=False)
    expected = grey_tile()
    expected[1:4, 1:4] = TINTED
    np.testing.assert_array_equal(out, expected)


def test_threshold_is_inclusive_and_below_it_nothing_is_drawn():
    at = overlay_nuclei(grey_tile(), square_probability(p=0.5), threshold=0.5, outline=False)
    below = overlay_nuclei(grey_tile(), square_probability(p=0.49), threshold=0.5)
    assert (at[1:4, 1:4] == TINTED).all()
    np.testing.assert_array_equal(below, grey_tile())


def outline_of(mask: np.ndarray) -> np.ndarray:
    """Where overlay_nuclei draws the outline of ``mask``: the pixels it paints pure green with
    no tint, on a black tile (a tinted pixel there is (0, 102, 0))."""
    out = overlay_nuclei(np.zeros((*mask.shape, 3), np.uint8), mask.astype(np.float32), colour=GREEN)
    return (out == GREEN).all(axis=-1)


def test_no_outline_along_the_tile_edge():
    mask = np.zeros((4, 5), bool)
    mask[:2] = True  # a nucleus cut by the top, left and right edges
    expected = np.zeros_like(mask)
    expected[1] = True  # only where it meets row 2, outside it
    np.testing.assert_array_equal(outline_of(mask), expected)


def test_a_single_pixel_is_its_own_outline():
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    np.testing.assert_array_equal(outline_of(mask), mask)


def test_random_masks_match_the_array_formulas():
    # The tint as numpy computes (1 - a) * rgb + a * colour in float32, the outline as the mask
    # less its erosion with the border counted inside: what the one-pass kernel must reproduce.
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    probability = rng.random((64, 48)).astype(np.float32)
    colour, alpha = (200, 17, 90), 0.37
    mask = probability >= 0.6
    expected = rgb.copy()
    expected[mask] = np.rint((1.0 - alpha) * rgb[mask].astype(np.float32)
                             + alpha * np.asarray(colour, np.float32)).astype(np.uint8)
    inner = np.pad(mask, 1, constant_values=True)
    eroded = inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    expected[mask & ~eroded] = colour
    out = overlay_nuclei(rgb[:, ::-1], probability[:, ::-1], threshold=0.6, colour=colour, alpha=alpha)
    np.testing.assert_array_equal(out, expected[:, ::-1])  # views of other strides too


def test_blend_rounds_to_nearest():
    rgb = np.array([[[101, 0, 255]]], np.uint8)
    out = blend(rgb, np.ones((1, 1), bool), (0, 0, 0), 0.4)
    np.testing.assert_array_equal(out, [[[61, 0, 153]]])  # 60.6, 0, 153.0


def test_alpha_zero_without_outline_is_the_tile():
    tile = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay_nuclei(tile, np.ones((6, 7), np.float32), alpha=0.0, outline=False), tile)


@pytest.mark.parametrize(("rgb", "probability", "kwargs", "match"), [
    (np.zeros((5, 5, 3), np.float32), np.zeros((5, 5), np.float32), {}, "rgb"),
    (np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.float32), {}, "rgb"),
    (np.zeros((5, 5, 3), np.uint8), np.zeros((5, 4), np.float32), {}, "probability"),
    (np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.uint8), {}, "probability"),
    (np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.float32), {"threshold": 1.5}, "threshold"),
    (np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.float32), {"alpha": -0.1}, "alpha"),
    (np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.float32), {"colour": (0, 300, 0)}, "colour"),
])
def test_bad_arguments_are_refused(rgb, probability, kwargs, match):
    with pytest.raises(InvalidParameter, match=match):
        overlay_nuclei(rgb, probability, **kwargs)
