"""ops.stain: colour deconvolution held to scikit-image's rgb2hed, and the classical nucleus
segmentation on hand-made and real H&E."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from ops.errors import InvalidParameter
from ops.stain import (DEFAULT_MIN_NUCLEUS_PIXELS, RGB_TO_HED, STAIN_OD_RGB, haematoxylin, nuclei_by_stain,
                       optical_density, rgb_from_concentrations, stain_concentrations, tissue_by_brightness)
from tests import real_he

SKIMAGE_SCALE = -np.log(1e-6)  # rgb2hed divides the optical density by it


def test_concentrations_are_scikit_images_rgb2hed_times_its_log_constant():
    rgb = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb[0, 0] = 0  # black: clamped, not infinite
    rgb[0, 1] = 255  # white: no stain
    np.testing.assert_allclose(stain_concentrations(rgb) / SKIMAGE_SCALE, rgb2hed(rgb), atol=1e-12)
    np.testing.assert_array_equal(haematoxylin(rgb), stain_concentrations(rgb)[..., 0])
    assert (stain_concentrations(rgb)[0, 1] == 0).all()


def test_a_pure_stain_unmixes_into_that_stain_alone():
    # A pixel whose optical density is 0.5 × haematoxylin's vector holds 0.5 of it and nothing else.
    pure = np.rint(255 * np.exp(-0.5 * STAIN_OD_RGB[0])).astype(np.uint8).reshape(1, 1, 3)
    h, e, d = stain_concentrations(pure)[0, 0]
    assert h == pytest.approx(0.5, abs=0.01) and e < 0.01 and d < 0.01


def test_unmixing_and_mixing_again_gives_the_image_back():
    rgb = np.random.default_rng(4).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_from_concentrations(optical_density(rgb) @ RGB_TO_HED), rgb)


def test_nuclei_are_the_dark_haematoxylin_spots_on_pink_tissue_not_the_glass():
    image = np.full((64, 96, 3), 255, np.uint8)  # glass
    image[:, :64] = (230, 150, 200)  # eosin-pink tissue on the left two thirds
    image[10:20, 10:20] = (90, 60, 150)  # a nucleus: 100 px of dark purple
    image[40:48, 30:38] = (100, 70, 160)  # another, 64 px
    image[30:33, 50:53] = (90, 60, 150)  # a 9 px speck: below the minimum size
    found = nuclei_by_stain(image)
    assert found.tissue.sum() == 64 * 64 and not found.tissue[:, 64:].any()
    expected = np.zeros((64, 96), bool)
    expected[10:20, 10:20] = expected[40:48, 30:38] = True
    np.testing.assert_array_equal(found.nuclei, expected)
    assert 9 < DEFAULT_MIN_NUCLEUS_PIXELS < 64


def test_glass_alone_has_no_nuclei():
    found = nuclei_by_stain(np.full((16, 16, 3), 250, np.uint8))
    assert not found.nuclei.any() and not found.tissue.any() and found.threshold == float("inf")


def test_bad_images_and_sizes_are_refused():
    with pytest.raises(InvalidParameter, match="uint8 RGB"):
        haematoxylin(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidParameter, match="uint8 RGB"):
        tissue_by_brightness(np.zeros((4, 4), np.uint8))
    with pytest.raises(InvalidParameter, match="min_nucleus_pixels"):
        nuclei_by_stain(np.zeros((4, 4, 3), np.uint8), min_nucleus_pixels=0)


@pytest.mark.parametrize("name", list(real_he.IMAGES))
def test_on_real_he_it_is_scikit_images_deconvolution_and_otsu(name):
    rgb = real_he.load(name)
    found = nuclei_by_stain(rgb)
    # The same steps in scikit-image: rgb2hed, Otsu over the tissue's clipped haematoxylin.
    h = rgb2hed(rgb)[..., 0]
    tissue = rgb.mean(axis=2) < 215
    low, high = np.percentile(h[tissue], (0.5, 99.5))
    inside = h[tissue][(h[tissue] >= low) & (h[tissue] <= high)]
    reference = (h >= threshold_otsu(inside)) & tissue
    np.testing.assert_array_equal(found.tissue, tissue)
    # Bin edges differ by a fraction of a bin, and speck removal is ours only.
    assert (found.nuclei != reference).mean() < 0.02
    assert 0.1 < found.nuclei[tissue].mean() < 0.4
