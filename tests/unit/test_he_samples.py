"""ops.samples.he: synthetic H&E regions are pure functions of (seed, global coordinates)."""

from __future__ import annotations

import numpy as np
import pytest

from ops.errors import InvalidParameter
from ops.samples import render_he

SLIDE = (384, 640)  # small enough to render whole in a few tens of milliseconds


def stitched(y0: int, x0: int, cuts_y: list[int], cuts_x: list[int], **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The region ``(y0, x0) + (cuts_y[-1], cuts_x[-1])`` rendered tile by tile along the cuts."""
    rgb = np.zeros((cuts_y[-1], cuts_x[-1], 3), np.uint8)
    nuclei = np.zeros((cuts_y[-1], cuts_x[-1]), bool)
    for top, bottom in zip(cuts_y, cuts_y[1:]):
        for left, right in zip(cuts_x, cuts_x[1:]):
            rgb[top:bottom, left:right], nuclei[top:bottom, left:right] = render_he(
                y0 + top, x0 + left, bottom - top, right - left, **kwargs)
    return rgb, nuclei


def test_types_shapes_and_determinism():
    rgb, nuclei = render_he(100, -40, 96, 130, seed=3)
    assert rgb.shape == (96, 130, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert nuclei.shape == (96, 130) and nuclei.dtype == bool
    again = render_he(100, -40, 96, 130, seed=3)
    np.testing.assert_array_equal(again[0], rgb)
    np.testing.assert_array_equal(again[1], nuclei)
    assert np.shares_memory(again[0], rgb) is False
    other = render_he(100, -40, 96, 130, seed=4)
    assert not np.array_equal(other[0], rgb)  # another seed is another slide
    # numpy integers and huge seeds are integers too
    np.testing.assert_array_equal(render_he(np.int64(100), -40, 96, np.int32(130), seed=np.uint64(3))[0], rgb)
    assert render_he(0, 0, 8, 8, seed=2 ** 64 - 1)[0].shape == (8, 8, 3)


@pytest.mark.parametrize("seed, y0, x0", [(1, 0, 0), (7, -301, 1_000_003), (12, 5_000, -77)])
def test_tiles_stitch_into_the_region_rendered_at_once(seed, y0, x0):
    whole_rgb, whole_nuclei = render_he(y0, x0, 200, 260, seed=seed)
    assert 0.01 < whole_nuclei.mean() < 0.5  # there are nuclei, so some cross the cuts
    # Uneven cuts, 1-pixel slivers included, through nuclei.
    rgb, nuclei = stitched(y0, x0, [0, 1, 37, 64, 150, 200], [0, 45, 46, 128, 211, 260], seed=seed)
    np.testing.assert_array_equal(rgb, whole_rgb)
    np.testing.assert_array_equal(nuclei, whole_nuclei)
    cut_rows = whole_nuclei[[36, 37, 63, 64, 149, 150]]
    assert cut_rows.any()  # nuclei do lie across the tile borders


def test_tiles_of_a_slide_stitch_into_the_slide_glass_shortcut_included():
    whole_rgb, whole_nuclei = render_he(0, 0, *SLIDE, seed=5, slide_shape=SLIDE)
    rgb, nuclei = stitched(0, 0, [0, 64, 128, 192, 256, 320, 384], list(range(0, 641, 64)), seed=5, slide_shape=SLIDE)
    np.testing.assert_array_equal(rgb, whole_rgb)
    np.testing.assert_array_equal(nuclei, whole_nuclei)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_slide_is_tissue_blobs_on_bright_glass(seed):
    rgb, nuclei = render_he(0, 0, *SLIDE, seed=seed, slide_shape=SLIDE)
    glass = rgb.min(axis=-1) > 225  # glass ≈ (245, 244, 247) ± noise; stained tissue is darker
    assert 0.15 < 1 - glass.mean() < 0.5  # 25–45 % tissue before holes, less the holes
    assert not (nuclei & glass).any()
    # Glass lies at the slide's edges (tissue fades out there) and is near-white and neutral.
    border = np.concatenate([glass[:8].ravel(), glass[-8:].ravel(), glass[:, :8].ravel(), glass[:, -8:].ravel()])
    assert border.mean() > 0.95
    colour = rgb[glass].mean(axis=0)
    assert (colour > 235).all() and np.ptp(colour) < 8
    # An all-glass corner tile: bright, no nuclei.
    corner_rgb, corner_nuclei = render_he(0, 0, 16, 16, seed=seed, slide_shape=SLIDE)
    assert corner_rgb.min() > 225 and not corner_nuclei.any()


@pytest.mark.parametrize("seed", [0, 9])
def test_nuclei_are_darker_and_bluer_than_the_stroma(seed):
    rgb, nuclei = render_he(0, 0, 256, 256, seed=seed)
    assert 0.01 < nuclei.mean() < 0.5
    inside = rgb[nuclei].astype(float).mean(axis=0)
    stroma = rgb[~nuclei].astype(float).mean(axis=0)
    # Haematoxylin absorbs red and green most: nuclei are purple, the eosin stroma pink.
    assert inside[0] < stroma[0] - 30 and inside[1] < stroma[1] - 30
    assert inside[2] > inside[1]


@pytest.mark.parametrize("args, kwargs", [
    ((0.0, 0, 8, 8), {"seed": 1}),
    ((0, "0", 8, 8), {"seed": 1}),
    ((True, 0, 8, 8), {"seed": 1}),
    ((0, 0, 0, 8), {"seed": 1}),
    ((0, 0, 8, -1), {"seed": 1}),
    ((0, 0, 8, 8), {"seed": -1}),
    ((0, 0, 8, 8), {"seed": 2 ** 64}),
    ((0, 0, 8, 8), {"seed": 1.0}),
    ((0, 0, 8, 8), {"seed": None}),
    ((0, 0, 8, 8), {"seed": 1, "slide_shape": 64}),
    ((0, 0, 8, 8), {"seed": 1, "slide_shape": (64,)}),
    ((0, 0, 8, 8), {"seed": 1, "slide_shape": (0, 64)}),
    ((0, 0, 8, 8), {"seed": 1, "slide_shape": (64.0, 64)}),
    ((-1, 0, 8, 8), {"seed": 1, "slide_shape": (64, 64)}),
    ((0, 60, 8, 8), {"seed": 1, "slide_shape": (64, 64)}),
    ((57, 0, 8, 8), {"seed": 1, "slide_shape": (64, 64)}),
])
def test_bad_arguments_raise_invalid_parameter(args, kwargs):
    with pytest.raises(InvalidParameter):
        render_he(*args, **kwargs)


def test_the_region_may_touch_the_slides_far_edges():
    rgb, nuclei = render_he(56, 56, 8, 8, seed=1, slide_shape=(64, 64))
    assert rgb.shape == (8, 8, 3) and nuclei.shape == (8, 8)


def test_the_all_glass_shortcut_renders_what_the_full_path_does(monkeypatch):
    """Regions that certainly hold no tissue skip the fields; the bound only triggers on large
    slides (on small ones the tissue fields vary too fast within a tile), hence this one."""
    import ops.samples.he as he

    slide, seed, size = (8192, 12288), 5, 256
    shortcut = []
    for y in range(0, slide[0] - size + 1, 4 * size):
        for x in range(0, slide[1] - size + 1, 2 * size):
            if he._certainly_glass(seed, slide, np.arange(y - 1, y + size + 1), np.arange(x - 1, x + size + 1)):
                shortcut.append((y, x))
    assert len(shortcut) >= 3
    fast = [render_he(y, x, size, size, seed=seed, slide_shape=slide) for y, x in shortcut[:3]]
    monkeypatch.setattr(he, "_certainly_glass", lambda *args: False)
    for (y, x), (rgb, nuclei) in zip(shortcut, fast):
        full_rgb, full_nuclei = render_he(y, x, size, size, seed=seed, slide_shape=slide)
        np.testing.assert_array_equal(rgb, full_rgb)
        np.testing.assert_array_equal(nuclei, full_nuclei)
        assert not nuclei.any() and rgb.min() > 225
