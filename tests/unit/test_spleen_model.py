"""The shipped spleen_ct model: its ONNX interface, a Dice on unseen phantoms, its size, and
the Triton python-backend wrapper around it (models/spleen_ct/, trained by models/train_spleen.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("scipy")  # ops.segmentation.preprocess

from ops.samples import spleen_phantom  # noqa: E402
from ops.segmentation import preprocess  # noqa: E402

from tests.helpers import dice, load_triton_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "spleen_ct"
ONNX_PATH = MODEL_DIR / "1" / "model.onnx"
MODEL_PY = MODEL_DIR / "1" / "model.py"
ROI = 96
# Training uses phantom seeds below 900000 (models/train_spleen.py), so these are unseen.
UNSEEN_SEEDS = (900_001, 900_002)
SHAPE_ZYX, SPACING_XYZ = (72, 224, 224), (1.4, 1.4, 2.5)


@pytest.fixture(scope="module")
def session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(ONNX_PATH), sess_options=options, providers=["CPUExecutionProvider"])


def spleen_crop(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A preprocessed 96³ crop of a phantom around its spleen's centroid, and the label there."""
    volume, label = spleen_phantom(SHAPE_ZYX, SPACING_XYZ, seed)
    geometry = {"spacing": list(SPACING_XYZ), "origin": [0.0, 0.0, 0.0], "direction": list(np.eye(3).ravel())}
    image, _ = preprocess(volume, geometry)
    target = preprocess(label.astype(np.float32), geometry, hu_window=(0.0, 1.0))[0] >= 0.5
    image = np.pad(image, [(0, max(0, ROI - n)) for n in image.shape])  # windowed air is 0
    target = np.pad(target, [(0, max(0, ROI - n)) for n in target.shape])
    centre = np.argwhere(target).mean(axis=0).round().astype(int)
    box = tuple(slice(s, s + ROI) for s in (np.clip(c - ROI // 2, 0, n - ROI) for c, n in zip(centre, image.shape)))
    return image[box], target[box]


def test_the_model_file_is_under_5_mb():
    assert ONNX_PATH.stat().st_size < 5 * 1024 * 1024


def test_the_interface_is_the_seeds(session):
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("INPUT__0", "tensor(float)", [1, ROI, ROI, ROI])
    assert (out.name, out.type, out.shape[1:]) == ("OUTPUT__0", "tensor(float)", [2, ROI, ROI, ROI])
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)  # a dynamic batch axis


def test_a_batch_of_two_finds_the_spleen_in_unseen_phantoms(session):
    crops = [spleen_crop(seed) for seed in UNSEEN_SEEDS]
    batch = np.stack([image for image, _ in crops])[:, None]
    logits = session.run(["OUTPUT__0"], {"INPUT__0": batch})[0]
    assert logits.shape == (2, 2, ROI, ROI, ROI) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    for (_, target), prediction in zip(crops, logits.argmax(axis=1) == 1):
        assert target.sum() > 1000  # the crop holds a real spleen
        assert dice(prediction, target) >= 0.7


@pytest.mark.parametrize("model_py", sorted(MODEL_PY.parents[2].glob("*/1/model.py")),
                         ids=lambda path: path.parents[1].name)
def test_every_model_py_keeps_the_site_packages_lines_first_and_compiles(model_py):
    text = model_py.read_text()
    assert text.splitlines()[:2] == [
        "import os, sys",
        'sys.path[:0] = [p for p in os.environ.get("CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]',
    ]
    compile(text, str(model_py), "exec")


def test_model_py_runs_several_requests_as_one_batch_and_splits_the_answers(session, monkeypatch):
    model, pb = load_triton_model(MODEL_PY, monkeypatch)

    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0, 1, (n, 1, ROI, ROI, ROI)).astype(np.float32) for n in (1, 2)]
    responses = model.execute([[pb.Tensor("INPUT__0", x)] for x in inputs])

    assert model.session.batch_sizes == [3]
    assert [r.error for r in responses] == [None, None]
    expected = session.run(["OUTPUT__0"], {"INPUT__0": np.concatenate(inputs)})[0]
    (first,), (second,) = (r.output_tensors for r in responses)
    assert first.name == second.name == "OUTPUT__0"
    np.testing.assert_array_equal(first.as_numpy(), expected[:1])
    np.testing.assert_array_equal(second.as_numpy(), expected[1:])

    broken = model.execute([[pb.Tensor("INPUT__0", np.zeros((1, 1, 8, 8, 8), np.float32))]])
    assert broken[0].output_tensors == [] and "spleen_ct" in broken[0].error
