"""The shipped nuclei_unet model served by the real Triton (models/nuclei_unet/), next to spleen_ct."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ops.samples import render_he
from ops.triton import TritonPredictor

ort = pytest.importorskip("onnxruntime")

# The repository project_triton serves: the shipped one, or CARINA_MODEL_REPOSITORY's.
REPOSITORY = Path(os.environ.get("CARINA_MODEL_REPOSITORY", Path(__file__).resolve().parents[2] / "models"))
ONNX_PATH = REPOSITORY / "nuclei_unet" / "1" / "model.onnx"


def test_nuclei_unet_serves_uint8_tiles_through_triton_as_onnxruntime_computes_them(project_triton):
    # Seeds ≥ 900000: never seen in training (models/train_nuclei.py).
    tiles = [render_he(1_000 * i, 2_000, 256, 256, seed=900_100 + i)[0] for i in range(2)]
    batch = np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2))  # uint8 (2, 3, 256, 256)
    predictor = TritonPredictor(project_triton.url, "nuclei_unet")
    try:
        spec = predictor.spec()
        assert spec.max_batch_size >= 2 and (spec.input_datatype, spec.input_dims) == ("UINT8", (3, -1, -1))
        assert (spec.output_datatype, spec.output_dims) == ("FP32", (1, -1, -1))
        out = predictor(batch)
    finally:
        predictor.close()
    assert out.shape == (2, 1, 256, 256) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert (out >= 0.5).mean() > 0.01  # it finds nuclei

    local = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    expected = local.run(["OUTPUT__0"], {"INPUT__0": batch})[0]
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
