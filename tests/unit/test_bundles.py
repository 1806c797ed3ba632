"""carina import-bundle's refusals: each problem named with its file and field, all of them at
once, and nothing written; and a bundle whose model is ONNX rather than TorchScript."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from carina.bundles import BundleError, import_bundle, read_bundle
from tests.bundle_maker import INFERENCE, METADATA, ROI_XYZ, recipe, write_configs, write_network


def transforms(*replaced, key="preprocessing"):
    """The recipe's ``key`` transforms with ``replaced`` = (index, transform or None to drop)."""
    changed = copy.deepcopy(INFERENCE[key])
    for index, transform in replaced:
        if transform is None:
            del changed["transforms"][index]
        else:
            changed["transforms"][index] = transform
    return changed


def metadata(**outputs):
    meta = copy.deepcopy(METADATA)
    meta["network_data_format"]["outputs"]["pred"].update(outputs)
    return meta


@pytest.mark.parametrize("inference, meta, problems", [
    (recipe(preprocessing=transforms((2, {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}))),
     None, ["inference.json: preprocessing.transforms[2] (CropForegroundd): a transform Carina cannot map"]),
    (recipe(network_def={**INFERENCE["network_def"], "out_channels": 3}), None,
     ["inference.json: network_def.out_channels 3, but metadata.json's outputs.pred has 2 channels"]),
    (None, metadata(num_channels=3),
     ["network_def.out_channels 2, but metadata.json's outputs.pred has 3 channels",
      "channel_def names 2 labels for 3 output channels"]),
    (recipe(inferer={**INFERENCE["inferer"], "roi_size": "$[96] * 3"}), None,
     ["inference.json: inferer.roi_size: '$[96] * 3' is an expression; Carina reads values only"]),
    (recipe(preprocessing=transforms((3, INFERENCE["preprocessing"]["transforms"][4]),
                                     (4, INFERENCE["preprocessing"]["transforms"][3]))), None,
     ["preprocessing: orientation → intensity → spacing: Carina orients, then resamples, then scales"]),
    (recipe(postprocessing=transforms((1, None), key="postprocessing")), None,
     ["postprocessing: Invertd and AsDiscreted(argmax) are needed"]),
    (recipe(inferer={"_target_": "SimpleInferer"}), None,
     ["inference.json: inferer: SimpleInferer: Carina runs a SlidingWindowInferer only"]),
    (recipe(preprocessing=transforms((3, {**INFERENCE["preprocessing"]["transforms"][3], "mode": "nearest"}),
                                     (4, {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 5,
                                          "a_max": 1}))),
     None, ["Spacingd): mode 'nearest': Carina resamples the image linearly only",
            "ScaleIntensityRanged): a_min 5, a_max 1: two numbers, a_min below a_max"]),
], ids=["unknown-transform", "channels-vs-network", "channels-vs-labels", "expression", "order", "no-invert",
        "inferer", "two-at-once"])
def test_a_bundle_carina_cannot_map_is_refused_with_every_problem_named(tmp_path, inference, meta, problems):
    bundle = write_configs(tmp_path / "bundle", inference, meta)
    (tmp_path / "models").mkdir()
    (tmp_path / "definitions").mkdir()
    with pytest.raises(BundleError) as refused:
        import_bundle(bundle, tmp_path / "definitions", tmp_path / "models", "liver")
    message = str(refused.value)
    assert message.startswith(f"{bundle}: cannot be imported, {len(problems)} problem(s):")
    for problem in problems:
        assert problem in message
    assert not any((tmp_path / "models").iterdir()) and not any((tmp_path / "definitions").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "definitions", "models"]  # no staging left


def test_a_bundle_without_an_inference_configuration_is_named(tmp_path):
    bundle = write_configs(tmp_path / "bundle")
    (bundle / "configs" / "inference.json").unlink()
    with pytest.raises(BundleError, match=r"configs: no inference configuration \(inference.json"):
        read_bundle(bundle)
    with pytest.raises(BundleError, match="not a folder"):
        read_bundle(tmp_path / "elsewhere")


def test_weights_without_a_network_say_how_to_export_one(tmp_path):
    bundle = write_configs(tmp_path / "bundle")
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "models").mkdir()
    with pytest.raises(BundleError, match="no model.onnx or model.ts; it has model.pt.*monai.bundle ckpt_export"):
        import_bundle(bundle, tmp_path, tmp_path / "models", "liver")


def test_a_name_already_taken_is_refused_before_anything_is_written(tmp_path):
    bundle = write_configs(tmp_path / "bundle")
    (bundle / "models" / "model.onnx").write_bytes(b"not read")
    (tmp_path / "models").mkdir()
    with pytest.raises(BundleError, match="a pipeline named 'spleen-seg' exists; choose another --name"):
        import_bundle(bundle, tmp_path, tmp_path / "models", "spleen-seg", frozenset({"spleen-seg"}))
    with pytest.raises(BundleError, match="--name 'Liver Seg'"):
        import_bundle(bundle, tmp_path, tmp_path / "models", "Liver Seg")


def test_an_onnx_bundle_is_imported_with_its_axes_turned_to_carina_s(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    bundle = write_configs(tmp_path / "bundle")
    write_network(bundle, onnx=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "definitions").mkdir()
    done = import_bundle(bundle, tmp_path / "definitions", tmp_path / "models", "onnx-spleen")
    assert done.definition.name == "onnx-spleen.yaml" and done.model_folder.name == "onnx-spleen"
    windows = np.random.default_rng(1).random((2, 1, *ROI_XYZ[::-1]), dtype=np.float32)  # (z, y, x)
    got = ort.InferenceSession(str(done.model_folder / "1" / "model.onnx")).run(["OUTPUT__0"], {"INPUT__0": windows})[0]
    original = ort.InferenceSession(str(bundle / "models" / "model.onnx"))
    expected = original.run(None, {"image": windows.transpose(0, 1, 4, 3, 2).copy()})[0].transpose(0, 1, 4, 3, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert torch is not None


def test_the_cli_prints_the_refusal_as_one_error_and_exits_2(tmp_path):
    bundle = write_configs(tmp_path / "bundle", recipe(inferer={"_target_": "SimpleInferer"}))
    done = subprocess.run([sys.executable, "-m", "carina", "import-bundle", str(bundle), "--models", str(tmp_path),
                           "--pipelines", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"carina: error: {bundle}: cannot be imported, 1 problem(s):")
    assert json.loads((bundle / "configs" / "inference.json").read_text())["inferer"] == {"_target_": "SimpleInferer"}
