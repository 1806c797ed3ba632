"""ops.orientation against MONAI's Orientation (nibabel's axis matching inside): every one of the
48 axis-aligned directions, rotated a little, turned to RAS and to another code; undone exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ops.errors import InvalidParameter
from ops.orientation import orient, restore

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SPACING = [0.7, 1.1, 2.5]
ORIGIN = [3.0, -4.0, 5.0]
TILT = np.array([[0.98, -0.17, 0.0], [0.17, 0.98, 0.0], [0.0, 0.0, 1.0]])  # about 10° about z


def directions():
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            direction = np.zeros((3, 3))
            for index_axis, world_axis in enumerate(permutation):
                direction[world_axis, index_axis] = signs[index_axis]
            yield TILT @ direction


def ras_affine(geometry):
    """MONAI's affine (RAS world, (x, y, z) array axes) of an ITK geometry."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ np.asarray(geometry["direction"]).reshape(3, 3) @ np.diag(geometry["spacing"])
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(geometry["origin"])
    return affine


@pytest.mark.parametrize("codes", ["RAS", "LPI"])
def test_orient_is_monai_s_orientation_for_every_axis_aligned_direction(codes):
    torch = pytest.importorskip("torch")
    monai_data = pytest.importorskip("monai.data")
    from monai.transforms import Orientation

    volume = np.random.default_rng(0).integers(0, 1000, (5, 6, 7)).astype(np.float32)  # (z, y, x)
    for direction in directions():
        geometry = {"spacing": SPACING, "origin": ORIGIN, "direction": list(direction.ravel())}
        image = monai_data.MetaTensor(torch.from_numpy(volume.T.copy())[None],
                                      affine=torch.from_numpy(ras_affine(geometry)))
        expected = Orientation(axcodes=codes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
        view, turned, how = orient(volume, geometry, codes)
        np.testing.assert_array_equal(view.T, expected[0].numpy())
        np.testing.assert_allclose(ras_affine(turned), expected.affine.numpy(), atol=1e-9)
        assert np.shares_memory(view, volume)  # flips and transposes only
        np.testing.assert_array_equal(restore(view, how), volume)
        np.testing.assert_array_equal(restore(np.stack([view, 2 * view]), how)[1], 2 * volume)


def test_an_image_already_so_is_left_as_it_is():
    volume = np.arange(24.0).reshape(2, 3, 4)
    ras = {"spacing": SPACING, "origin": ORIGIN, "direction": [-1, 0, 0, 0, -1, 0, 0, 0, 1]}  # LPS of R, A, S
    view, turned, _ = orient(volume, ras, "RAS")
    np.testing.assert_array_equal(view, volume)
    assert turned["origin"] == ORIGIN and turned["spacing"] == SPACING


@pytest.mark.parametrize("codes, message", [("RA", "three letters"), ("RAR", "names a world axis twice"),
                                            (7, "three letters"), ("XYZ", "three letters")])
def test_bad_codes_are_refused(codes, message):
    with pytest.raises(InvalidParameter, match=message):
        orient(np.zeros((2, 2, 2)), {"spacing": SPACING, "origin": ORIGIN, "direction": list(np.eye(3).ravel())},
               codes)
