"""MONAI bundles for the tests, in the layout MONAI documents (configs/metadata.json,
configs/inference.json, models/), their recipe modelled on the Model Zoo's
``spleen_ct_segmentation``: orient to RAS, resample, window, sliding window, softmax, invert,
argmax, save. :func:`write_configs` needs nothing but the standard library (the bad-input
tests bend its output); :func:`write_network` saves a seeded MONAI UNet (torch, monai);
:func:`run_bundle` runs MONAI's own bundle inference on a folder of NIfTI files."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROI_XYZ = [64, 64, 48]  # not a cube: a lost (x, y, z) ↔ (z, y, x) transpose cannot hide
PIXDIM = [1.5, 1.5, 2.0]
NETWORK = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
           "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "batch"}

INFERENCE: dict[str, Any] = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
    "device": "$torch.device('cpu')",
    "network_def": NETWORK,
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": PIXDIM, "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
         "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"}]},
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                   "num_workers": 0},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI_XYZ, "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "resample": False, "separate_folder": False}]},
    "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                  "load_dict": {"model": "@network"}},
                 {"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers", "amp": False},
    "run": ["$@evaluator.run()"],
}

METADATA: dict[str, Any] = {
    "schema": ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
               "meta_schema_20220324.json"),
    "version": "0.1.0", "monai_version": "1.6.1", "pytorch_version": "2.13.0", "numpy_version": "2.4",
    "name": "Test spleen CT segmentation", "task": "Spleen segmentation on CT",
    "description": "A seeded, untrained MONAI UNet for Carina's import tests.", "authors": "Carina's tests",
    "license": "Apache-2.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": ROI_XYZ, "dtype": "float32", "value_range": [0, 1],
                             "is_patch_data": True, "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": ROI_XYZ,
                             "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                             "channel_def": {"0": "background", "1": "spleen"}}}},
}


def write_configs(root: Path, inference: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """``root/configs/{inference,metadata}.json`` (the spleen recipe unless given) and ``root/models/``."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "configs" / "inference.json").write_text(json.dumps(inference or INFERENCE, indent=2))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata or METADATA, indent=2))
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "README.md").write_text("A test bundle.\n")
    return root


def recipe(**changes: Any) -> dict[str, Any]:
    """A copy of the spleen recipe with top-level ids replaced."""
    return {**copy.deepcopy(INFERENCE), **changes}


def write_network(root: Path, seed: int = 0, onnx: bool = False) -> None:
    """A seeded UNet as ``models/model.pt`` (its weights, as MONAI's CheckpointLoader reads them)
    and ``models/model.ts`` (TorchScript, as ``monai.bundle ckpt_export`` makes it), or
    ``models/model.onnx`` instead of the TorchScript."""
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    network = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"}).eval()
    torch.save(network.state_dict(), root / "models" / "model.pt")
    if onnx:
        axes = {0: "batch"}
        torch.onnx.export(network, (torch.zeros((1, 1, *ROI_XYZ)),), str(root / "models" / "model.onnx"),
                          dynamo=False, opset_version=17, input_names=["image"], output_names=["pred"],
                          dynamic_axes={"image": axes, "pred": axes})
    else:
        torch.jit.script(network).save(str(root / "models" / "model.ts"))


def run_bundle(root: Path, dataset: Path, output: Path, threads: int = 2) -> subprocess.CompletedProcess:
    """MONAI's own bundle inference (``monai.bundle.run``) of ``root`` on ``dataset``'s NIfTI files."""
    script = (f"import torch; torch.set_num_threads({threads}); from monai.bundle import run; "
              f"run(run_id='run', config_file={str(root / 'configs' / 'inference.json')!r}, "
              f"meta_file={str(root / 'configs' / 'metadata.json')!r}, bundle_root={str(root)!r}, "
              f"dataset_dir={str(dataset)!r}, output_dir={str(output)!r})")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
