"""ops.sliding_window against MONAI's sliding_window_inference, on hand-checked windows and weights, its contract."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ops.errors import InvalidParameter, OpsError
from ops.sliding_window import (
    axis_starts,
    importance_map,
    scan_interval,
    sliding_window_inference,
    window_count,
    window_slices,
)


class LinearPredictor:
    """A fixed random linear map of the channels per voxel, plus a term that depends on the voxel's place in
    the window: the same voxel gets a different value from every window over it, so blending errors show.

    Records every batch it is given, so two runs can be compared window by window.
    """

    def __init__(self, c_in: int, c_out: int, ndim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.weights = rng.standard_normal((c_out, c_in)).astype(np.float32)
        self.bias = rng.standard_normal(c_out).astype(np.float32)
        self.slopes = rng.standard_normal((c_out, ndim)).astype(np.float32)
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(batch))
        out = np.einsum("oc,bc...->bo...", self.weights, batch)
        position = np.indices(batch.shape[2:], dtype=np.float32)  # (ndim, *roi)
        out += np.tensordot(self.slopes, position, axes=1)[None] + self.bias.reshape((1, -1) + (1,) * (batch.ndim - 2))
        return out.astype(np.float32)


def monai_reference(inputs: np.ndarray, predictor, **kwargs) -> np.ndarray:
    """MONAI's sliding_window_inference on the same array, calling the same numpy predictor."""
    pytest.importorskip("monai")
    import torch
    from monai.inferers import sliding_window_inference as monai_swi

    def torch_predictor(batch):
        return torch.from_numpy(np.ascontiguousarray(predictor(batch.numpy())))

    return monai_swi(torch.from_numpy(inputs), predictor=torch_predictor, **kwargs).numpy()


def assert_equals_monai(ours, ref):
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


# spatial shape, C in, C out, roi_size, overlap, mode, sigma_scale, padding_mode, cval, sw_batch_size
CASES = [
    pytest.param((20, 24, 28), 2, 3, (8, 8, 8), 0.25, "constant", 0.125, "constant", 0.0, 3, id="larger-constant"),
    pytest.param((20, 24, 28), 2, 3, (8, 8, 8), 0.5, "gaussian", 0.125, "constant", 0.0, 1, id="larger-gaussian"),
    pytest.param((12, 12, 12), 1, 2, (12, 12, 12), 0.25, "gaussian", 0.125, "constant", 0.0, 1, id="exactly-roi"),
    pytest.param((12, 16, 12), 1, 2, (12, 8, 12), 0.5, "gaussian", 0.3, "constant", 0.0, 3, id="roi-on-some-axes"),
    pytest.param((6, 20, 9), 2, 2, (10, 8, 12), 0.25, "gaussian", 0.3, "constant", -1.5, 3, id="pad-constant-cval"),
    pytest.param((5, 17, 11), 2, 3, (8, 8, 16), 0.5, "constant", 0.125, "replicate", 0.0, 3, id="pad-replicate"),
    pytest.param((5, 17, 11), 1, 2, (8, 8, 16), 0.25, "gaussian", 0.125, "replicate", 0.0, 1, id="pad-replicate-gauss"),
    pytest.param((7, 20, 10), 1, 2, (12, 8, 8), 0.25, "gaussian", 0.125, "reflect", 0.0, 3, id="pad-reflect"),
    pytest.param((6, 12, 12), 1, 2, (10, 8, 8), 0.25, "constant", 0.125, "circular", 0.0, 3, id="pad-circular"),
    pytest.param((24, 30, 16), 2, 2, (4, 16, 10), 0.8, "gaussian", 0.3, "constant", 0.0, 3, id="anisotropic-roi"),
    pytest.param((20, 21, 22), 2, 3, (8, 7, 9), 0.0, "gaussian", 0.125, "constant", 0.0, 3, id="overlap-0"),
    pytest.param((12, 13, 10), 1, 2, (8, 8, 8), 0.8, "constant", 0.125, "constant", 0.0, 1, id="overlap-0.8"),
    pytest.param((19, 23, 17), 2, 2, (7, 7, 7), 0.5, "gaussian", 0.125, "constant", 0.0, 3, id="odd-roi-0.5"),
    pytest.param((10, 14, 18), 2, 2, (None, -1, 8), 0.25, "gaussian", 0.3, "constant", 0.0, 3, id="roi-full-axes"),
    pytest.param((10, 14, 18), 1, 2, 0, 0.25, "gaussian", 0.125, "constant", 0.0, 1, id="roi-0-whole-image"),
    pytest.param((14, 15, 16), 1, 2, 6, 0.25, "gaussian", 0.125, "constant", 0.0, 3, id="roi-one-int"),
    pytest.param(
        (16, 18, 20), 2, 2, (8, 6, 10), (0.0, 0.5, 0.25), "gaussian", (0.125, 0.3, 0.2), "constant", 0.0, 3,
        id="per-axis-overlap-sigma",
    ),
    pytest.param((30, 26), 2, 3, (8, 12), 0.25, "gaussian", 0.125, "constant", 0.0, 3, id="2d"),
    pytest.param((5, 26), 1, 2, (8, 12), 0.5, "constant", 0.125, "replicate", 0.0, 1, id="2d-padded"),
]


@pytest.mark.parametrize(
    "shape, c_in, c_out, roi, overlap, mode, sigma_scale, padding_mode, cval, sw_batch_size", CASES
)
def test_equals_monai(shape, c_in, c_out, roi, overlap, mode, sigma_scale, padding_mode, cval, sw_batch_size):
    rng = np.random.default_rng(len(shape) * 1000 + sum(shape))
    inputs = rng.standard_normal((2, c_in, *shape)).astype(np.float32)
    kwargs = {
        "roi_size": roi, "sw_batch_size": sw_batch_size, "overlap": overlap, "mode": mode,
        "sigma_scale": sigma_scale, "padding_mode": padding_mode, "cval": cval,
    }
    ours_predictor = LinearPredictor(c_in, c_out, len(shape))
    monai_predictor = LinearPredictor(c_in, c_out, len(shape))
    ours = sliding_window_inference(inputs, predictor=ours_predictor, **kwargs)
    ref = monai_reference(inputs, monai_predictor, **kwargs)
    assert_equals_monai(ours, ref)
    # the same windows, in the same order, batched the same way
    assert len(ours_predictor.batches) == len(monai_predictor.batches)
    for a, b in zip(ours_predictor.batches, monai_predictor.batches):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_window_placement_equals_monai_on_random_sizes(seed):
    pytest.importorskip("monai")
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    rng = np.random.default_rng(seed)
    for _ in range(50):
        ndim = int(rng.integers(1, 4))
        size = tuple(int(v) for v in rng.integers(1, 60, ndim))
        roi = tuple(int(rng.integers(1, s + 1)) for s in size)
        overlap = tuple(float(v) for v in rng.choice([0.0, 0.1, 0.25, 0.5, 0.6, 0.8, 0.95], ndim))
        expected_steps = _get_scan_interval(size, roi, ndim, overlap)
        assert scan_interval(size, roi, overlap) == expected_steps
        assert window_slices(size, roi, overlap) == dense_patch_slices(size, roi, expected_steps)


@pytest.mark.parametrize(
    "roi, sigma_scale", [((8, 8, 8), 0.125), ((7, 10, 9), 0.3), ((16, 3, 5), (0.125, 0.3, 0.2)), ((12, 9), 0.125)]
)
def test_importance_map_equals_monai_bit_for_bit(roi, sigma_scale):
    pytest.importorskip("monai")
    from monai.data.utils import compute_importance_map

    for mode in ("constant", "gaussian"):
        ref = compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale).numpy()
        np.testing.assert_array_equal(importance_map(roi, mode, sigma_scale), ref)


# --- by hand -----------------------------------------------------------------------------


def test_scan_interval_by_hand():
    assert scan_interval((10,), (4,), (0.25,)) == (3,)  # int(4 * 0.75)
    assert scan_interval((10,), (4,), (0.9,)) == (1,)  # int(0.4) = 0: at least 1
    assert scan_interval((10,), (4,), (0.0,)) == (4,)
    assert scan_interval((7,), (7,), (0.5,)) == (7,)  # the window spans the axis: one window
    assert scan_interval((20, 9), (7, 9), (0.5, 0.5)) == (3, 9)  # int(3.5) = 3


def test_axis_starts_by_hand():
    assert axis_starts(10, 4, 3) == [0, 3, 6]  # 6 + 4 reaches the edge exactly
    assert axis_starts(11, 4, 3) == [0, 3, 6, 7]  # 9 would run past 11: pulled back to 7
    assert axis_starts(8, 4, 4) == [0, 4]
    assert axis_starts(9, 4, 4) == [0, 4, 5]
    assert axis_starts(5, 5, 5) == [0]
    assert axis_starts(6, 1, 1) == [0, 1, 2, 3, 4, 5]


def test_window_order_is_last_axis_fastest():
    assert window_slices((6, 5), (4, 3), (0.5, 0.5)) == [
        (slice(0, 4), slice(0, 3)), (slice(0, 4), slice(1, 4)), (slice(0, 4), slice(2, 5)),
        (slice(2, 6), slice(0, 3)), (slice(2, 6), slice(1, 4)), (slice(2, 6), slice(2, 5)),
    ]


def test_a_1d_like_case_by_hand():
    # 11 voxels, roi 4, overlap 0.25: steps of 3, windows at 0, 3, 6 and 7 (the last clamped).
    inputs = np.arange(11, dtype=np.float32).reshape(1, 1, 1, 1, 11)
    seen = []

    def window_number(batch):
        seen.extend(int(b[0, 0, 0, 0]) for b in batch)  # each window's first voxel is its start
        return np.full(batch.shape, float(len(seen) - 1), dtype=np.float32)  # sw_batch_size 1

    out = sliding_window_inference(inputs, (1, 1, 4), 1, window_number, overlap=0.25)
    assert seen == [0, 3, 6, 7]
    # window k covers [start_k, start_k + 4) and predicts k; the constant blend is the mean
    expected = [0, 0, 0, 0.5, 1, 1, 1.5, 2.5, 2.5, 2.5, 3]
    np.testing.assert_allclose(out[0, 0, 0, 0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "padding_mode, cval, expected",
    [
        ("constant", 9.0, [9, 1, 2, 3, 9, 9]),  # 3 voxels in a 6-voxel window: 1 before, 2 after
        ("replicate", 0.0, [1, 1, 2, 3, 3, 3]),
        ("reflect", 0.0, [2, 1, 2, 3, 2, 1]),
        ("circular", 0.0, [3, 1, 2, 3, 1, 2]),
    ],
)
def test_padding_by_hand_and_cropped_back(padding_mode, cval, expected):
    inputs = np.array([1, 2, 3], dtype=np.float32).reshape(1, 1, 1, 1, 3)
    seen = []

    def identity(batch):
        seen.append(batch.copy())
        return batch

    out = sliding_window_inference(inputs, (1, 1, 6), 1, identity, padding_mode=padding_mode, cval=cval)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0].ravel(), expected)
    np.testing.assert_array_equal(out, inputs)


def test_importance_map_floor_and_peak_by_hand():
    # roi 16, sigma_scale 0.125: sigma 2 voxels; the edge voxels are 7.5 from the centre
    weights = importance_map((16,), "gaussian", 0.125)
    raw = np.exp(-((np.arange(16) - 7.5) ** 2) / 8.0)
    assert raw[0] < 1e-3 < raw[1]  # only the two edge voxels fall below the floor
    assert weights[0] == weights[-1] == np.float32(1e-3)  # the constant floor, not the smallest nonzero weight
    np.testing.assert_allclose(weights[1:-1], raw[1:-1], rtol=1e-6)
    assert weights.max() == pytest.approx(np.exp(-0.25 / 8.0), rel=1e-6)  # not normalised to 1 (even size)
    assert weights.dtype == np.float32


def test_importance_map_floor_on_the_corners_of_a_volume():
    weights = importance_map((10, 10, 10), "gaussian", 0.125)  # sigma 1.25: a thick shell below 1e-3
    g = np.exp(-((np.arange(10) - 4.5) ** 2) / (2 * 1.25**2))
    raw = g[:, None, None] * g[None, :, None] * g[None, None, :]
    assert (raw < 1e-3).sum() == 568  # more than half the window weighs the floor
    assert weights[0, 0, 0] == weights[2, 0, 4] == np.float32(1e-3)
    np.testing.assert_allclose(weights, np.maximum(raw, np.float32(1e-3)), rtol=1e-6)
    assert weights[4, 4, 0] == pytest.approx(np.exp(-20.75 / 3.125), rel=1e-6)  # 1.3e-3: just above


def test_importance_map_without_the_floor_is_untouched():
    weights = importance_map((9,), "gaussian", 0.3)  # sigma 2.7: the edge is exp(-16 / 14.58) ≈ 0.33
    np.testing.assert_allclose(weights, np.exp(-((np.arange(9) - 4.0) ** 2) / (2 * 2.7**2)), rtol=1e-6)
    assert weights[4] == 1.0  # odd size: the centre is a voxel
    np.testing.assert_array_equal(importance_map((3, 4), "constant"), np.ones((3, 4), dtype=np.float32))


# --- the predictor's contract ----------------------------------------------------------------


def test_batches_never_exceed_sw_batch_size_and_progress_counts_windows():
    inputs = np.random.default_rng(0).standard_normal((2, 1, 10, 10, 10)).astype(np.float32)
    sizes, dtypes, reports = [], [], []

    def predictor(batch):
        sizes.append(batch.shape[0])
        dtypes.append((batch.dtype, batch.flags.c_contiguous))
        return np.concatenate([batch, -batch], axis=1)

    out = sliding_window_inference(
        inputs, (6, 6, 6), 3, predictor, overlap=0.5, progress=lambda done, total: reports.append((done, total))
    )
    # 10 voxels, roi 6, step 3: starts 0, 3, 4 per axis; 27 windows per image, 54 in all
    assert sizes == [3] * 18
    assert all(d == (np.float32, True) for d in dtypes)
    assert reports == [(3 * (i + 1), 54) for i in range(18)]
    np.testing.assert_allclose(out, np.concatenate([inputs, -inputs], axis=1), rtol=1e-6, atol=1e-6)


def test_last_batch_is_smaller_and_may_mix_images():
    inputs = np.stack([np.zeros((1, 4, 4, 8)), np.ones((1, 4, 4, 8))]).astype(np.float32)  # 3 windows each
    batches = []

    def predictor(batch):
        batches.append(batch[:, 0, 0, 0, 0].tolist())
        return batch

    sliding_window_inference(inputs, (4, 4, 4), 4, predictor, overlap=0.5)
    assert batches == [[0, 0, 0, 1], [1, 1]]  # the first batch holds windows of both images


class LookaheadPredictor(LinearPredictor):
    """A ``predict_many`` that reads ``ahead`` batches before it answers the first, as a remote
    model with requests in flight does; records the most batches it held unanswered."""

    def __init__(self, *args, ahead: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.ahead, self.most_held = ahead, 0

    def predict_many(self, batches):
        held = []
        for batch in batches:
            held.append(batch)
            self.most_held = max(self.most_held, len(held))
            if len(held) > self.ahead:
                yield self(held.pop(0))
        for batch in held:
            yield self(batch)


def test_a_streaming_predictor_runs_ahead_and_gives_the_same_result():
    inputs = np.random.default_rng(3).standard_normal((2, 2, 20, 17, 23)).astype(np.float32)
    plain, streaming = LinearPredictor(2, 3, 3), LookaheadPredictor(2, 3, 3, ahead=3)
    reports = []
    kwargs = dict(overlap=0.4, mode="gaussian")
    expected = sliding_window_inference(inputs, (8, 8, 8), 2, plain, **kwargs)
    out = sliding_window_inference(inputs, (8, 8, 8), 2, streaming, progress=lambda d, t: reports.append(d), **kwargs)
    assert streaming.most_held == 4  # it was handed batches before answering earlier ones
    assert len(streaming.batches) == len(plain.batches)
    assert all(np.array_equal(a, b) for a, b in zip(plain.batches, streaming.batches))
    np.testing.assert_array_equal(out, expected)
    assert reports == sorted(reports) and reports[-1] == sum(len(b) for b in plain.batches)


def test_any_input_dtype_is_fed_as_float32_and_any_real_output_is_accepted():
    inputs = (np.arange(2 * 9 * 9 * 9) % 50).astype(np.int16).reshape(1, 2, 9, 9, 9)
    out = sliding_window_inference(inputs, (5, 5, 5), 2, lambda b: b.astype(np.float64) * 2, overlap=0.25)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, inputs * 2.0, rtol=1e-6)


def test_the_input_is_not_modified():
    inputs = np.random.default_rng(1).standard_normal((1, 1, 6, 7, 8)).astype(np.float32)
    before = inputs.copy()

    def scribble(batch):
        batch[...] = 0  # allowed: the predictor owns its batch
        return batch + 1

    out = sliding_window_inference(inputs, (4, 4, 4), 2, scribble)
    np.testing.assert_array_equal(inputs, before)
    np.testing.assert_allclose(out, 1.0)


@pytest.mark.parametrize(
    "predictor, message",
    [
        (lambda b: b[:1], r"batch of 1 for 2 windows.*expected \(B=2, C_out, 4, 4, 4\)"),
        (lambda b: np.concatenate([b, b]), r"batch of 4 for 2 windows"),
        (lambda b: b[..., :3], r"spatial shape \(4, 4, 3\); expected the window's \(4, 4, 4\)"),
        (lambda b: b[:, 0], r"shape \(2, 4, 4, 4\); expected \(B=2, C_out, 4, 4, 4\)"),
        (lambda b: b[:, :0], r"no channels"),
        (lambda b: np.full(b.shape, "x"), r"dtype <U1; real numbers"),
        (lambda b: None, r"dtype object; real numbers"),
    ],
)
def test_a_predictor_breaking_its_contract_is_named(predictor, message):
    inputs = np.zeros((1, 1, 8, 8, 8), dtype=np.float32)
    with pytest.raises(InvalidParameter, match=message) as caught:
        sliding_window_inference(inputs, (4, 4, 4), 2, predictor, overlap=0.0)
    assert isinstance(caught.value, OpsError) and isinstance(caught.value, ValueError)


def test_a_predictor_changing_its_channel_count_is_named():
    calls = itertools.count()

    def fickle(batch):
        return np.repeat(batch, 2 if next(calls) == 0 else 3, axis=1)

    with pytest.raises(InvalidParameter, match="returned 3 channels; earlier batches had 2"):
        sliding_window_inference(np.zeros((1, 1, 8, 8, 8), dtype=np.float32), (4, 4, 4), 2, fickle, overlap=0.0)


GOOD = {
    "inputs": np.zeros((1, 1, 6, 6, 6), dtype=np.float32),
    "roi_size": (4, 4, 4),
    "sw_batch_size": 2,
    "predictor": lambda b: b,
}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"roi_size": (4, 4)}, r"roi_size=\(4, 4\) has 2 values; inputs have 3 spatial axes"),
        ({"roi_size": (4, 4, 4, 4)}, r"roi_size=.* has 4 values"),
        ({"roi_size": (4, 4.5, 4)}, r"roi_size=.*4.5 is not an int"),
        ({"roi_size": (4, True, 4)}, r"roi_size=.*True is not an int"),
        ({"roi_size": "444"}, r"roi_size='444'"),
        ({"sw_batch_size": 0}, r"sw_batch_size=0 must be an int ≥ 1"),
        ({"sw_batch_size": -2}, r"sw_batch_size=-2"),
        ({"sw_batch_size": 1.5}, r"sw_batch_size=1.5"),
        ({"sw_batch_size": True}, r"sw_batch_size=True"),
        ({"overlap": 1.0}, r"overlap=1.0: every value must be in \[0, 1\)"),
        ({"overlap": -0.1}, r"overlap=-0.1"),
        ({"overlap": float("nan")}, r"overlap=nan"),
        ({"overlap": (0.1, 0.2)}, r"overlap=\(0.1, 0.2\): expected one number or 3"),
        ({"overlap": "0.5"}, r"overlap='0.5'"),
        ({"mode": "median"}, r"mode='median': expected one of constant, gaussian"),
        ({"mode": "gaussian", "sigma_scale": 0.0}, r"sigma_scale=0.0: every value must be finite and positive"),
        ({"mode": "gaussian", "sigma_scale": (0.1, 0.2)}, r"sigma_scale=\(0.1, 0.2\): expected one number or 3"),
        ({"padding_mode": "edge"}, r"padding_mode='edge': expected one of constant, reflect, replicate, circular"),
        ({"cval": "0"}, r"cval='0' is not a number"),
        ({"inputs": np.zeros((6, 6), dtype=np.float32)}, r"inputs must be \(N, C, \*spatial\).*shape \(6, 6\)"),
        ({"inputs": np.zeros((1, 1, 6, 6, 6), dtype=np.complex64)}, r"inputs has dtype complex64"),
        ({"inputs": np.zeros((0, 1, 6, 6, 6), dtype=np.float32)}, r"inputs is empty"),
        ({"inputs": [[[0.0]]]}, r"inputs must be a numpy array, not list"),
        ({"predictor": "model"}, r"predictor='model' is not callable"),
        ({"progress": 3}, r"progress=3 is not callable"),
    ],
)
def test_refuses_bad_arguments_and_names_them(bad, message):
    with pytest.raises(InvalidParameter, match=message):
        sliding_window_inference(**{**GOOD, **bad})


@pytest.mark.parametrize("size, roi, overlap", [((100, 239, 239), (96, 96, 96), 0.25), ((200, 300), (96, 96), 0.9),
                                                ((5, 7, 9), (4, 4, 4), 0.5), ((30, 40), (96, 96), 0.5)])
def test_window_count_is_the_number_of_windows_run_without_listing_them(size, roi, overlap):
    padded = [max(s, r) for s, r in zip(size, roi)]
    assert window_count(size, roi, [overlap] * len(size)) == len(window_slices(padded, roi, [overlap] * len(size)))

