"""ops.segmentation: the resampling grid against MONAI's Spacing and by hand, windowing, argmax, and label round trips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ops.errors import InvalidParameter
from ops.segmentation import HU_WINDOW, postprocess, preprocess, segment, window_count


def rotation_z(angle: float) -> list[float]:
    c, s = np.cos(angle), np.sin(angle)
    return [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0]


CT = {"spacing": [0.7, 0.9, 2.5], "origin": [-100.0, 20.0, 35.0], "direction": rotation_z(0.3)}
LPS = {"spacing": [0.8, 0.8, 2.5], "origin": [180.0, 150.0, -300.0], "direction": [-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0]}


def physical_points(shape_zyx, geometry) -> np.ndarray:
    """The physical (x, y, z) position of every voxel centre, shape (*shape_zyx, 3)."""
    index_xyz = np.moveaxis(np.indices(shape_zyx, dtype=np.float64)[::-1], 0, -1)
    direction = np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3)
    return geometry["origin"] + (index_xyz * geometry["spacing"]) @ direction.T


def window(hu, hu_window=HU_WINDOW):
    return np.clip((np.asarray(hu, np.float64) - hu_window[0]) / (hu_window[1] - hu_window[0]), 0.0, 1.0)


def threshold_predictor(batch: np.ndarray) -> np.ndarray:
    """Two channels from one: background wins below 0.5 on the [0, 1] scale, foreground above."""
    return np.concatenate([0.5 - batch, batch - 0.5], axis=1)


# --- preprocess ---------------------------------------------------------------------------


@pytest.mark.parametrize("geometry, shape", [(CT, (11, 12, 8)), (LPS, (11, 11, 10))], ids=["rotated", "lps"])
def test_resampling_equals_monai_spacing(geometry, shape):
    pytest.importorskip("monai")
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    rng = np.random.default_rng(0)
    volume = rng.uniform(-200, 300, (9, 20, 17)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(geometry["direction"]).reshape(3, 3) * geometry["spacing"]
    affine[:3, 3] = geometry["origin"]
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.T[None])), affine=torch.from_numpy(affine))
    ref = Spacing(pixdim=(1.5, 1.5, 2.0), mode="bilinear", padding_mode="border")(image)

    ours, ours_geometry = preprocess(volume, geometry)
    expected = window(ref[0].numpy().T)
    assert ours.shape == expected.shape == shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
    ref_affine = ref.affine.numpy()
    ours_matrix = np.asarray(ours_geometry["direction"]).reshape(3, 3) * ours_geometry["spacing"]
    np.testing.assert_allclose(ours_matrix, ref_affine[:3, :3], atol=1e-12)
    np.testing.assert_allclose(ours_geometry["origin"], ref_affine[:3, 3], atol=1e-12)


def test_grid_shape_and_geometry_by_hand():
    volume = np.zeros((9, 20, 17), dtype=np.int16)
    out, geometry = preprocess(volume, CT)
    # x: 16 gaps of 0.7 mm = 11.2 mm -> 7.47 gaps of 1.5 -> 8 voxels; y: 17.1 mm -> 11.4 -> 12; z: 20 mm -> 10 -> 11
    assert out.shape == (11, 12, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    assert geometry == {"spacing": [1.5, 1.5, 2.0], "origin": CT["origin"], "direction": CT["direction"]}
    assert all(type(v) is float for key in geometry for v in geometry[key])


def test_a_physical_ramp_is_resampled_exactly_with_the_edge_repeated():
    # linear interpolation reproduces a linear function of position; past the old last centre
    # (x: 7 new gaps of 1.5 = 10.5 mm < 11.2; y: 11 * 1.5 = 16.5 < 17.1; z: 10 * 2 = 20, the old
    # edge exactly) nothing is sampled, so here no border is needed; then one grid that needs it.
    def ramp(points):
        return 10.0 + 0.5 * points[..., 0] - 0.3 * points[..., 1] + 2.0 * points[..., 2]

    for geometry, shape in ((CT, (9, 20, 17)), ({**CT, "spacing": [0.6, 0.9, 2.3]}, (6, 5, 9))):
        volume = ramp(physical_points(shape, geometry)).astype(np.float64)
        wide = (-1e4, 1e4)
        out, new_geometry = preprocess(volume, geometry, hu_window=wide)
        # each new voxel's source index, clamped to the old grid (the border), then its position
        scale = np.asarray(new_geometry["spacing"]) / np.asarray(geometry["spacing"])  # same direction
        source_xyz = np.moveaxis(np.indices(out.shape, dtype=np.float64)[::-1], 0, -1) * scale
        clamped = np.minimum(source_xyz, np.asarray(shape[::-1]) - 1)
        direction = np.asarray(geometry["direction"]).reshape(3, 3)
        points = geometry["origin"] + (clamped * geometry["spacing"]) @ direction.T
        np.testing.assert_allclose(out * 2e4 - 1e4, ramp(points), rtol=0, atol=5e-3)


def test_hu_window_maps_and_clips():
    hu = np.array([-1000, -57, -57 + 221 * 0.25, 53.5, 164, 3000], dtype=np.float32).reshape(1, 1, 6)
    same_grid = {"spacing": [1.5, 1.5, 2.0], "origin": [0.0, 0.0, 0.0], "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}
    out, _ = preprocess(hu, same_grid)
    np.testing.assert_allclose(out.ravel(), [0, 0, 0.25, 0.5, 1, 1], rtol=0, atol=1e-7)
    out, _ = preprocess(hu, same_grid, hu_window=(0.0, 100.0))
    np.testing.assert_allclose(out.ravel(), [0, 0, 0, 0.535, 1, 1], rtol=0, atol=1e-6)


SAME_GRID = {"spacing": [1.5, 1.5, 2.0], "origin": [0.0, 0.0, 0.0], "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}


@pytest.mark.parametrize("b_range, clip", [((0.0, 1.0), False), ((-1.0, 1.0), True), ((-1.0, 1.0), False)])
def test_the_intensity_range_and_clip_are_monai_s_scale_intensity_range(b_range, clip):
    transforms = pytest.importorskip("monai.transforms")
    hu = np.random.default_rng(3).uniform(-400, 600, (4, 5, 6)).astype(np.float32)
    out, _ = preprocess(hu, SAME_GRID, hu_window=(-57, 164), intensity_range=b_range, intensity_clip=clip)
    expected = transforms.ScaleIntensityRange(-57, 164, *b_range, clip=clip)(hu)
    np.testing.assert_allclose(out, np.asarray(expected), rtol=0, atol=2e-6)


@pytest.mark.parametrize("how", ["all", "nonzero"])
def test_normalisation_is_monai_s_normalize_intensity(how):
    transforms = pytest.importorskip("monai.transforms")
    volume = np.random.default_rng(4).uniform(-400, 600, (4, 5, 6)).astype(np.float32)
    volume[:, :2] = 0.0  # a background that nonzero leaves out
    out, _ = preprocess(volume, SAME_GRID, normalize_intensity=how)
    expected = transforms.NormalizeIntensity(nonzero=how == "nonzero")(volume[None])[0]
    np.testing.assert_allclose(out, np.asarray(expected), rtol=0, atol=1e-5)
    if how == "nonzero":
        assert np.all(out[:, :2] == 0)


def test_linear_label_resampling_on_the_same_grid_is_the_argmax_and_between_grids_interpolates_probabilities():
    logits = np.random.default_rng(5).standard_normal((3, 5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(postprocess(logits, CT, (5, 6, 7), CT, "linear"), logits.argmax(axis=0))
    # Two samples along x, 1 mm apart, read every 0.25 mm: the probabilities are interpolated.
    coarse = {"spacing": [1.0, 1.0, 2.0], "origin": [0.0, 0.0, 0.0], "direction": SAME_GRID["direction"]}
    fine = {**coarse, "spacing": [0.25, 1.0, 2.0]}
    two = np.array([[0.1, 0.0], [0.0, 10.0]], dtype=np.float32).reshape(2, 1, 1, 2)  # (C, z, y, x)
    softmax = np.exp(two[:, 0, 0]) / np.exp(two[:, 0, 0]).sum(axis=0)  # (C, sample)
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    expected = ((1 - t) * softmax[:, :1] + t * softmax[:, 1:]).argmax(axis=0)
    assert list(expected) == [0, 1, 1, 1, 1]
    np.testing.assert_array_equal(postprocess(two, coarse, (1, 1, 5), fine, "linear")[0, 0], expected)
    np.testing.assert_array_equal(postprocess(two, coarse, (1, 1, 5), fine, "nearest")[0, 0], [0, 0, 1, 1, 1])


def test_preprocess_leaves_the_input_alone():
    volume = np.random.default_rng(1).uniform(-100, 200, (6, 7, 8)).astype(np.float32)
    before = volume.copy()
    out, _ = preprocess(volume, CT)
    np.testing.assert_array_equal(volume, before)
    assert not np.shares_memory(out, volume)


# --- postprocess ----------------------------------------------------------------------------


def test_postprocess_on_the_same_grid_is_the_argmax():
    logits = np.random.default_rng(2).standard_normal((3, 5, 6, 7)).astype(np.float32)
    logits[:, 0, 0, 0] = [1.0, 1.0, 0.0]  # a tie: the lowest channel wins
    out = postprocess(logits, CT, (5, 6, 7), CT)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 7)
    np.testing.assert_array_equal(out, np.argmax(logits, axis=0))
    assert out[0, 0, 0] == 0


def test_postprocess_from_a_grid_twice_as_fine_is_exact():
    # every original voxel centre is a centre of the finer grid: nearest neighbour lands on it
    rng = np.random.default_rng(3)
    original = {"spacing": [3.0, 3.0, 4.0], "origin": [5.0, -7.0, 11.0], "direction": rotation_z(-0.4)}
    labels = (rng.random((6, 7, 8)) > 0.6).astype(np.uint8)
    volume = np.where(labels == 1, 100.0, -500.0)
    resampled, geometry = preprocess(volume, original)
    assert resampled.shape == (11, 13, 15)
    logits = threshold_predictor(resampled[None, None])[0]
    np.testing.assert_array_equal(postprocess(logits, geometry, labels.shape, original), labels)


@pytest.mark.parametrize("geometry", [CT, LPS], ids=["rotated", "lps"])
def test_segment_round_trips_a_label_volume_within_a_voxel(geometry):
    # a blob in HU, through preprocess -> sliding window (a thresholding "identity" model) -> postprocess
    shape = (14, 40, 36)
    points = physical_points(shape, geometry)
    centre = points[7, 20, 18]
    radii = np.array([9.0, 11.0, 12.0])  # mm, (x, y, z)
    labels = (((points - centre) / radii) ** 2).sum(-1) <= 1.0
    volume = np.where(labels, 400, -800).astype(np.int16)  # 1 and 0 after windowing: 0.5 is the midpoint

    reports = []
    out = segment(volume, geometry, threshold_predictor, roi_size=(8, 12, 12), sw_batch_size=3,
                  progress=lambda done, total: reports.append((done, total)))
    assert out.shape == shape and out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert reports[-1][0] == reports[-1][1]

    # every disagreement lies within one resampled voxel (its diagonal) of the label's boundary ...
    spacing_zyx = geometry["spacing"][::-1]
    to_boundary = np.where(labels, ndimage.distance_transform_edt(labels, sampling=spacing_zyx),
                           ndimage.distance_transform_edt(~labels, sampling=spacing_zyx))
    wrong = out != labels
    assert to_boundary[wrong].max(initial=0) <= np.linalg.norm([1.5, 1.5, 2.0])
    # ... the shapes overlap well and the blob has not moved by more than half a resampled voxel
    found = out.astype(bool)
    assert 2 * (labels & found).sum() / (labels.sum() + found.sum()) > 0.9
    assert np.all(np.abs(points[found].mean(0) - points[labels].mean(0)) < [0.75, 0.75, 1.0])

    # and it is exactly: threshold the trilinear resampling (map_coordinates at each new voxel's
    # physical position), then give each input voxel the label of the nearest new centre (a tie
    # goes to the higher index, as scipy rounds)
    resampled, new_geometry = preprocess(volume, geometry)
    inverse = np.linalg.inv(np.asarray(geometry["direction"]).reshape(3, 3))
    source = ((physical_points(resampled.shape, new_geometry) - geometry["origin"]) @ inverse.T) / geometry["spacing"]
    coordinates = np.moveaxis(source[..., ::-1], -1, 0)  # (z, y, x) first, as map_coordinates wants them
    hu = ndimage.map_coordinates(volume.astype(np.float64), coordinates, order=1, mode="nearest")
    foreground = window(hu) > 0.5
    nearest = np.floor(((points - new_geometry["origin"]) @ inverse.T) / new_geometry["spacing"] + 0.5).astype(int)
    nearest = np.clip(nearest, 0, np.asarray(resampled.shape[::-1]) - 1)
    np.testing.assert_array_equal(out, foreground[nearest[..., 2], nearest[..., 1], nearest[..., 0]])


def test_segment_with_the_default_96_roi_pads_a_small_volume():
    labels = np.zeros((10, 12, 14), dtype=bool)
    labels[3:7, 4:9, 5:10] = True
    volume = np.where(labels, 100.0, -1000.0).astype(np.float32)
    geometry = {"spacing": [1.5, 1.5, 2.0], "origin": [0.0, 0.0, 0.0], "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}
    shapes = []

    def predictor(batch):
        shapes.append(batch.shape)
        return threshold_predictor(batch)

    out = segment(volume, geometry, predictor)
    assert shapes == [(1, 1, 96, 96, 96)]
    np.testing.assert_array_equal(out, labels)  # the model's grid is the input's: nothing to resample


def test_segment_follows_another_recipe_as_preprocess_does():
    volume = np.linspace(-200, 300, 20 * 24 * 28, dtype=np.float32).reshape(20, 24, 28)
    recipe = {"target_spacing_xyz": (2.0, 2.5, 3.0), "intensity_window": (-100.0, 200.0)}
    seen = []

    def predictor(batch):
        seen.append(batch[:, 0].copy())
        return threshold_predictor(batch)

    segment(volume, CT, predictor, roi_size=(64, 64, 64), **recipe)
    expected, _ = preprocess(volume, CT, recipe["target_spacing_xyz"], recipe["intensity_window"])
    [window] = seen  # the resampled volume, padded with zeros to one 64³ window
    assert window[0].size - np.count_nonzero(window[0]) >= window[0].size - expected.size
    np.testing.assert_allclose(np.sort(window[0][window[0] != 0]), np.sort(expected[expected != 0]), atol=1e-6)
    assert not np.allclose(preprocess(volume, CT)[0].sum(), expected.sum())  # the spleen's recipe differs


@pytest.mark.parametrize("geometry", [CT, LPS], ids=["rotated", "lps"])
def test_window_count_is_what_segment_runs_known_before_the_voxels(geometry):
    volume = np.full((40, 150, 130), -1000, np.int16)
    windows = []

    def predictor(batch):
        windows.append(len(batch))
        return threshold_predictor(batch)

    segment(volume, geometry, predictor, roi_size=(32, 32, 32), overlap=0.5)
    count, grid = window_count(volume.shape, geometry, 0.5, roi_size=(32, 32, 32))
    assert count == sum(windows)
    assert grid == preprocess(volume, geometry)[0].shape


# --- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 30), (2, 10, 10, 10), (5,)])
def test_segment_needs_a_3d_volume(shape):
    with pytest.raises(InvalidParameter, match=rf"a 3D volume \(z, y, x\) is needed; got shape \({shape[0]},"):
        segment(np.zeros(shape, dtype=np.float32), CT, threshold_predictor)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"geometry": {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0]}}, r"geometry lacks direction"),
        ({"geometry": {**CT, "spacing": [1.0, 0.0, 1.0]}}, r"geometry\['spacing'\]=.*finite and positive"),
        ({"geometry": {**CT, "origin": [0.0, 0.0]}}, r"geometry\['origin'\]=.*three finite numbers"),
        ({"geometry": {**CT, "direction": [1.0, 0, 0, 1.0, 0, 0, 0, 0, 1.0]}}, r"\['direction'\]=.* is singular"),
        ({"geometry": [1, 2, 3]}, r"geometry must be a dict"),
        ({"target_spacing_xyz": (1.5, 1.5)}, r"target_spacing_xyz=\(1.5, 1.5\): expected three"),
        ({"target_spacing_xyz": (1.5, -1.0, 2.0)}, r"target_spacing_xyz=.*finite and positive"),
        ({"hu_window": (164.0, -57.0)}, r"hu_window=\(164.0, -57.0\): the first must be below the second"),
        ({"hu_window": (0.0, float("inf"))}, r"hu_window=.*two finite numbers"),
        ({"volume": np.zeros((4, 5, 6), dtype=np.complex64)}, r"volume has dtype complex64"),
        ({"volume": np.zeros((0, 5, 6), dtype=np.float32)}, r"volume is empty"),
    ],
)
def test_preprocess_refuses_bad_arguments_and_names_them(kwargs, message):
    arguments = {"volume": np.zeros((4, 5, 6), dtype=np.float32), "geometry": CT, **kwargs}
    with pytest.raises(InvalidParameter, match=message):
        preprocess(**arguments)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"logits": np.zeros((4, 5, 6), dtype=np.float32)}, r"\(C, z, y, x\) array; got shape \(4, 5, 6\)"),
        ({"logits": np.zeros((300, 2, 2, 2), dtype=np.float32)}, r"300 channels; uint8 labels allow at most 256"),
        ({"original_shape_zyx": (4, 5)}, r"original_shape_zyx=\(4, 5\): expected three positive ints"),
        ({"original_shape_zyx": (4, 0, 6)}, r"original_shape_zyx=\(4, 0, 6\)"),
        ({"original_geometry": {**CT, "spacing": None}}, r"original_geometry\['spacing'\]=None"),
        ({"resampled_geometry": {}}, r"resampled_geometry lacks spacing, origin, direction"),
    ],
)
def test_postprocess_refuses_bad_arguments_and_names_them(kwargs, message):
    arguments = {
        "logits": np.zeros((2, 4, 5, 6), dtype=np.float32), "resampled_geometry": CT,
        "original_shape_zyx": (4, 5, 6), "original_geometry": CT, **kwargs,
    }
    with pytest.raises(InvalidParameter, match=message):
        postprocess(**arguments)


# --- the GPU path (runs where cupy sees a device, skips elsewhere) ------------------------


@pytest.fixture
def cupy():
    from ops.arrays import gpu_available

    module = pytest.importorskip("cupy")
    if not gpu_available():
        pytest.skip("cupy is installed but sees no GPU")
    return module


@pytest.mark.parametrize("geometry", [CT, LPS], ids=["oblique", "lps"])
def test_on_a_gpu_pre_and_postprocessing_match_the_cpu(cupy, geometry):
    rng = np.random.default_rng(7)
    volume = rng.integers(-1000, 1000, size=(12, 30, 28)).astype(np.int16)
    expected, expected_geometry = preprocess(volume, geometry)
    resampled, resampled_geometry = preprocess(cupy.asarray(volume), geometry)
    assert isinstance(resampled, cupy.ndarray) and resampled.dtype == cupy.float32
    assert resampled_geometry == expected_geometry
    np.testing.assert_allclose(cupy.asnumpy(resampled), expected, atol=1e-5)

    logits = rng.normal(size=(2, *expected.shape)).astype(np.float32)
    labels = postprocess(cupy.asarray(logits), expected_geometry, volume.shape, geometry)
    assert isinstance(labels, cupy.ndarray) and labels.dtype == cupy.uint8
    np.testing.assert_array_equal(cupy.asnumpy(labels), postprocess(logits, expected_geometry, volume.shape, geometry))


def test_segment_on_a_gpu_returns_the_cpu_labels_as_numpy(cupy):
    labels = np.zeros((10, 24, 20), dtype=bool)
    labels[3:7, 6:15, 5:12] = True
    volume = np.where(labels, 300, -900).astype(np.int16)
    on_cpu = segment(volume, CT, threshold_predictor, roi_size=(8, 12, 12))
    on_gpu = segment(volume, CT, threshold_predictor, roi_size=(8, 12, 12), use_gpu=True)
    assert isinstance(on_gpu, np.ndarray)
    np.testing.assert_array_equal(on_gpu, on_cpu)
