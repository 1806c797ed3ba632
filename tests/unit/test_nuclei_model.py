"""The shipped nuclei_unet model: its ONNX interface, its agreement with the stain reference on
real H&E it never saw, a Dice on unseen synthetic H&E, its size, and its Triton python-backend
wrapper (models/nuclei_unet/, trained by models/train_nuclei.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from ops.samples import render_he  # noqa: E402
from ops.stain import nuclei_by_stain  # noqa: E402
from tests import real_he  # noqa: E402
from tests.helpers import load_triton_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "nuclei_unet"
ONNX_PATH = MODEL_DIR / "1" / "model.onnx"
MODEL_PY = MODEL_DIR / "1" / "model.py"
# Training uses render_he seeds below 900000 (models/train_nuclei.py), so these are unseen.
UNSEEN_SEEDS = range(900_001, 900_007)
# The shipped model measured 0.980 here (pixel Dice over the six tiles at once; see models/README.md).
DICE_FLOOR = 0.95
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(ONNX_PATH), sess_options=options, providers=["CPUExecutionProvider"])


def channels_first(rgb_tiles: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(rgb_tiles).transpose(0, 3, 1, 2))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_the_model_file_is_under_1_mb():
    assert ONNX_PATH.stat().st_size < 1024 * 1024


def test_the_interface_is_uint8_rgb_in_probabilities_out(session):
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("INPUT__0", "tensor(uint8)", 3)
    assert (out.name, out.type, out.shape[1]) == ("OUTPUT__0", "tensor(float)", 1)
    for shape in (inp.shape, out.shape):  # batch, height and width are dynamic
        assert all(isinstance(shape[i], str) for i in (0, 2, 3))


def test_a_batch_of_two_and_a_320_tile_give_probabilities_of_their_shape(session):
    batch = channels_first([render_he(0, 256 * i, 256, 256, seed=900_000)[0] for i in range(2)])
    probabilities = session.run(["OUTPUT__0"], {"INPUT__0": batch})[0]
    assert probabilities.shape == (2, 1, 256, 256) and probabilities.dtype == np.float32
    tile = channels_first([render_he(40, 40, 320, 320, seed=900_000)[0]])
    larger = session.run(["OUTPUT__0"], {"INPUT__0": tile})[0]
    assert larger.shape == (1, 1, 320, 320) and larger.dtype == np.float32
    for p in (probabilities, larger):
        assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
    # Fully convolutional: the overlap of the two renderings agrees away from the borders
    # (borders see zero padding, and the pooling grids differ by 40 px, a multiple of 4).
    np.testing.assert_allclose(probabilities[0, 0, 80:216, 80:216], larger[0, 0, 40:176, 40:176], atol=1e-4)


def test_it_finds_the_nuclei_of_unseen_tiles(session):
    tiles = [render_he(1_000 * i, 5_000, 256, 256, seed=seed) for i, seed in enumerate(UNSEEN_SEEDS)]
    probabilities = session.run(["OUTPUT__0"], {"INPUT__0": channels_first([rgb for rgb, _ in tiles])})[0]
    truth = np.stack([nuclei for _, nuclei in tiles])
    assert truth.mean() > 0.03  # the tiles hold real nuclei
    assert dice(probabilities[:, 0] >= THRESHOLD, truth) > DICE_FLOOR


@pytest.mark.parametrize("name", [name for name, image in real_he.IMAGES.items() if image.role == "held-out"])
def test_on_real_he_it_never_saw_it_marks_the_nuclei_the_stain_reference_marks(session, name):
    rgb = real_he.load(name)
    height, width = (n // 8 * 8 for n in rgb.shape[:2])
    rgb = rgb[:height, :width]
    probability = session.run(["OUTPUT__0"], {"INPUT__0": channels_first([rgb])})[0][0, 0]
    reference = nuclei_by_stain(rgb)
    result = real_he.agreement(probability >= THRESHOLD, reference.nuclei, reference.tissue)
    assert result.meets_targets, result


def test_glass_and_white_padding_are_not_nuclei(session):
    slide = (8192, 12288)
    glass = render_he(0, 0, 256, 256, seed=900_010, slide_shape=slide)[0]  # a corner: glass only
    white = np.full((256, 256, 3), 255, np.uint8)  # what the pipeline pads past a slide's edge
    probabilities = session.run(["OUTPUT__0"], {"INPUT__0": channels_first([glass, white])})[0]
    assert (probabilities >= THRESHOLD).mean() < 1e-4


def test_the_config_declares_the_interface_and_dynamic_batching():
    config = " ".join((MODEL_DIR / "config.pbtxt").read_text().split())
    for expected in ('name: "nuclei_unet"', 'backend: "python"', "max_batch_size: 16",
                     'name: "INPUT__0" data_type: TYPE_UINT8 dims: [ 3, -1, -1 ]',
                     'name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1, -1, -1 ]',
                     "dynamic_batching { max_queue_delay_microseconds: 2000 }",
                     "instance_group [ { kind: KIND_CPU count: 1 } ]"):
        assert expected in config


def test_model_py_casts_to_uint8_runs_several_requests_as_one_batch_and_splits_the_answers(session, monkeypatch):
    model, pb = load_triton_model(MODEL_PY, monkeypatch)
    assert model.input_dtype == np.uint8

    first = channels_first([render_he(0, 0, 64, 64, seed=900_020)[0]])
    second = channels_first([render_he(0, 64 * i, 64, 64, seed=900_021)[0] for i in range(2)])
    # A request may carry other integer types: they are cast to the graph's uint8.
    responses = model.execute([[pb.Tensor("INPUT__0", first)], [pb.Tensor("INPUT__0", second.astype(np.int32))]])

    assert model.session.batch_sizes == [3]
    assert [r.error for r in responses] == [None, None]
    expected = session.run(["OUTPUT__0"], {"INPUT__0": np.concatenate([first, second])})[0]
    (a,), (b,) = (r.output_tensors for r in responses)
    assert a.name == b.name == "OUTPUT__0"
    np.testing.assert_array_equal(a.as_numpy(), expected[:1])
    np.testing.assert_array_equal(b.as_numpy(), expected[1:])

    broken = model.execute([[pb.Tensor("INPUT__0", np.zeros((1, 4, 64, 64), np.uint8))]])  # 4 channels
    assert broken[0].output_tensors == [] and "nuclei_unet" in broken[0].error
    model.finalize()
    assert model.session is None
    assert not (ROOT / "models" / "__pycache__").exists()  # Triton would take it for a model
