"""ops.blur against scipy.ndimage.gaussian_filter, on hand-checked impulses, and its bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ops.blur import gaussian_blur
from ops.errors import InvalidParameter, OpsError


def reference(volume, sigma_mm, spacing_xyz, truncate=4.0):
    """scipy on the float32 volume; sigma and spacing (x, y, z) turned into voxels (z, y, x)."""
    sx, sy, sz = np.broadcast_to(np.asarray(sigma_mm, float), 3) / np.asarray(spacing_xyz, float)
    return ndimage.gaussian_filter(volume.astype(np.float32), sigma=(sz, sy, sx), mode="reflect", truncate=truncate)


def assert_matches_scipy(ours, ref):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def normalised_gaussian(sigma, radius):
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


@pytest.mark.parametrize(
    "shape, sigma_mm, spacing_xyz, truncate",
    [
        ((7, 9, 11), 1.0, (1.0, 1.0, 1.0), 4.0),
        ((13, 17, 23), 1.0, (0.7, 0.7, 2.5), 4.0),  # the usual CT: anisotropic, thick slices
        ((16, 33, 20), (0.5, 2.0, 3.0), (0.8, 1.1, 1.5), 4.0),  # a sigma per axis, (x, y, z)
        ((9, 8, 31), 1.5, (0.6, 0.9, 2.0), 2.5),
        ((2, 5, 40), (30.0, 8.0, 12.0), (1.0, 1.0, 1.0), 4.0),  # every radius beyond its axis
        ((1, 1, 1), 2.0, (1.0, 1.0, 1.0), 4.0),
        ((5, 1, 7), 3.0, (1.0, 1.0, 1.0), 4.0),  # a single-row axis
        ((4, 6, 8), 0.05, (1.0, 1.0, 1.0), 4.0),  # radius 0: the identity
        ((4, 6, 8), 1e-200, (1.0, 1.0, 1.0), 4.0),  # sigma squared underflows: still the identity
    ],
)
def test_matches_scipy_reflect(shape, sigma_mm, spacing_xyz, truncate):
    rng = np.random.default_rng(sum(shape))
    volume = rng.standard_normal(shape).astype(np.float32) * 100 + 20
    ours = gaussian_blur(volume, sigma_mm, spacing_xyz, truncate=truncate)
    assert_matches_scipy(ours, reference(volume, sigma_mm, spacing_xyz, truncate))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float64, np.bool_])
def test_any_real_dtype_is_blurred_as_float32(dtype):
    rng = np.random.default_rng(1)
    volume = (rng.random((6, 7, 9)) * 200).astype(dtype)
    ours = gaussian_blur(volume, 1.2, (0.9, 0.9, 1.4))
    assert ours.dtype == np.float32
    assert_matches_scipy(ours, reference(volume, 1.2, (0.9, 0.9, 1.4)))


def test_a_strided_view_is_read_correctly():
    rng = np.random.default_rng(2)
    base = rng.random((12, 20, 18)).astype(np.float32)
    view = base[::2, 3:17, ::-1].transpose(0, 2, 1)
    assert_matches_scipy(gaussian_blur(view, 1.0, (0.7, 0.9, 1.3)), reference(view, 1.0, (0.7, 0.9, 1.3)))


def test_an_impulse_gives_the_separable_gaussian_along_the_right_axes():
    # spacing (x, y, z) = (0.5, 1, 2) mm with sigma 2 mm: 4 voxels along x, 2 along y, 1 along z.
    volume = np.zeros((21, 31, 41), dtype=np.float32)
    volume[10, 15, 20] = 1.0
    out = gaussian_blur(volume, 2.0, (0.5, 1.0, 2.0))
    kz, ky, kx = normalised_gaussian(1.0, 4), normalised_gaussian(2.0, 8), normalised_gaussian(4.0, 16)
    expected = np.zeros_like(out, dtype=np.float64)
    expected[6:15, 7:24, 4:37] = kz[:, None, None] * ky[None, :, None] * kx[None, None, :]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-8)
    assert abs(float(out.sum(dtype=np.float64)) - 1.0) < 1e-5
    np.testing.assert_allclose(out[10, 15, 4:37] / out[10, 15, 20], kx / kx[16], rtol=1e-5)


def test_an_impulse_on_the_edge_folds_back_by_half_sample_reflection():
    # The taps that fall outside the axis land back on the edge voxel and its neighbours.
    volume = np.zeros((1, 1, 10), dtype=np.float32)
    volume[0, 0, 0] = 1.0
    out = gaussian_blur(volume, 1.0, (1.0, 1.0, 1.0))[0, 0]
    k = normalised_gaussian(1.0, 4)  # k[4 + d]: the weight at distance d
    expected = np.zeros(10)
    expected[:5] += k[4:]  # voxel i reads the impulse at distance i ...
    expected[:4] += k[5:]  # ... and its mirror image at -1, distance i + 1
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-8)
    assert abs(float(out.sum(dtype=np.float64)) - 1.0) < 1e-5


def test_a_constant_volume_stays_constant():
    volume = np.full((5, 6, 7), 42, dtype=np.int16)
    np.testing.assert_allclose(gaussian_blur(volume, 5.0, (0.5, 0.5, 1.0)), 42.0, rtol=1e-6)


def test_returns_a_new_float32_array_and_leaves_the_input_alone():
    rng = np.random.default_rng(3)
    volume = rng.random((5, 6, 7)).astype(np.float32)
    before = volume.copy()
    out = gaussian_blur(volume, 1.0, (1.0, 1.0, 1.0))
    assert out is not volume and not np.shares_memory(out, volume)
    assert out.shape == volume.shape and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(volume, before)


def test_an_empty_volume_gives_an_empty_volume():
    out = gaussian_blur(np.zeros((0, 4, 4), dtype=np.int16), 1.0, (1.0, 1.0, 1.0))
    assert out.shape == (0, 4, 4) and out.dtype == np.float32


GOOD = {"volume": np.zeros((3, 4, 5), dtype=np.float32), "sigma_mm": 1.0, "spacing_xyz": (1.0, 1.0, 1.0)}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"sigma_mm": 0.0}, "sigma_mm=0.0"),
        ({"sigma_mm": -1.0}, "sigma_mm=-1.0"),
        ({"sigma_mm": float("nan")}, "sigma_mm=nan"),
        ({"sigma_mm": float("inf")}, "sigma_mm=inf"),
        ({"sigma_mm": (1.0, 0.0, 1.0)}, "sigma_mm="),
        ({"sigma_mm": (1.0, 2.0)}, "sigma_mm=.*three"),
        ({"sigma_mm": True}, "sigma_mm=True"),
        ({"sigma_mm": "1"}, "sigma_mm='1'"),
        ({"spacing_xyz": (1.0, 0.0, 1.0)}, "spacing_xyz="),
        ({"spacing_xyz": (1.0, -0.5, 1.0)}, "spacing_xyz="),
        ({"spacing_xyz": (1.0, 1.0, float("nan"))}, "spacing_xyz="),
        ({"spacing_xyz": (1.0, 1.0)}, "spacing_xyz=.*three"),
        ({"spacing_xyz": (1.0, 1.0, 1.0, 1.0)}, "spacing_xyz=.*three"),
        ({"spacing_xyz": 1.0}, "spacing_xyz=.*three"),
        ({"spacing_xyz": None}, "spacing_xyz=None"),
        ({"sigma_mm": 1e300, "spacing_xyz": (1e-300, 1.0, 1.0)}, "sigma_mm=1e.300 over spacing_xyz=.*overflows"),
        ({"volume": np.zeros((4, 5), dtype=np.float32)}, "volume must be 3D"),
        ({"volume": np.zeros((2, 3, 4, 5), dtype=np.float32)}, "volume must be 3D"),
        ({"volume": np.zeros((3, 4, 5), dtype=np.complex64)}, "volume has dtype complex64"),
        ({"volume": np.zeros((3, 4, 5), dtype=object)}, "volume has dtype object"),
        ({"volume": [[[1.0]]]}, "volume must be a numpy or cupy array"),
        ({"truncate": 0.0}, "truncate=0.0"),
        ({"truncate": float("nan")}, "truncate=nan"),
    ],
)
def test_refuses_bad_arguments_and_names_them(bad, message):
    with pytest.raises(InvalidParameter, match=message) as caught:
        gaussian_blur(**{**GOOD, **bad})
    assert isinstance(caught.value, OpsError) and isinstance(caught.value, ValueError)


def test_on_a_gpu_with_cupy_matches_scipy():
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("cupy without a usable GPU")
    rng = np.random.default_rng(4)
    volume = (rng.random((9, 16, 21)) * 1000).astype(np.int16)
    device = cupy.asarray(volume)
    out = gaussian_blur(device, (1.0, 1.5, 2.0), (0.7, 0.8, 2.5))
    assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float32 and out.shape == volume.shape
    np.testing.assert_array_equal(cupy.asnumpy(device), volume)
    assert_matches_scipy(cupy.asnumpy(out), reference(volume, (1.0, 1.5, 2.0), (0.7, 0.8, 2.5)))
