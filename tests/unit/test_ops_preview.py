"""ops.preview: the PNG must decode to the pixels written, and the overlay sits on the mask."""

from __future__ import annotations

import numpy as np
import pytest

from ops.errors import InvalidParameter
from ops.preview import segmentation_preview, window_to_uint8, write_png


def test_png_decodes_to_the_same_pixels_through_itk(tmp_path):
    import itk

    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = write_png(rgb, tmp_path / "p.png")
    decoded = itk.array_from_image(itk.imread(str(path)))
    np.testing.assert_array_equal(decoded, rgb)


def test_window_maps_linearly_and_clips():
    np.testing.assert_array_equal(window_to_uint8(np.array([-200, -160, 40, 240, 999]), -160, 240),
                                  [0, 0, 127, 255, 255])


def test_preview_tints_the_mask_in_both_views():
    volume = np.zeros((6, 10, 12), np.int16)
    labels = np.zeros_like(volume, dtype=np.uint8)
    labels[2:4, 3:6, 4:8] = 1
    picture = segmentation_preview(volume, labels, (1.0, 1.0, 2.0))
    assert picture.shape == (12, 24, 3)  # axial 10x12 beside coronal (6 slices x2) x 12
    red = picture[..., 0].astype(int) - picture[..., 1] > 50
    assert red[:10, :12].sum() == 3 * 4  # axial mid-slice through the mask
    assert red[:, 12:].sum() == 2 * 2 * 4  # coronal: 2 slices stretched twice, 4 columns


def test_mismatched_shapes_are_refused():
    with pytest.raises(InvalidParameter, match="same 3D shape"):
        segmentation_preview(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), (1, 1, 1))
