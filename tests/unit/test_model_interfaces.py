"""One source for each model's interface (models/<name>/interface.json): the local server's
python-backend config and NGC's native ONNX Runtime config are both made from it and describe
the same tensors, which are the tensors the ONNX graph itself has."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

MODELS = Path(__file__).resolve().parents[2] / "models"
NAMES = sorted(p.parent.name for p in MODELS.glob("*/interface.json"))
ONNX_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_UINT8": "tensor(uint8)"}


def tensors(config: str) -> dict:
    """What a config.pbtxt declares: max batch size and (kind, name, data type, dims) per tensor."""
    flat = " ".join(config.split())
    found = re.findall(r'(input|output) \[ (.*?) \] (?=input|output|dynamic)', flat)
    declared = [(kind, *t) for kind, block in found
                for t in re.findall(r'name: "(\w+)" data_type: (\w+) dims: \[ ([-\d, ]+) \]', block)]
    return {"max_batch_size": re.search(r"max_batch_size: (\d+)", flat).group(1), "tensors": declared}


def test_the_committed_configs_are_what_the_interfaces_make():
    checked = subprocess.run([sys.executable, str(MODELS / "triton_configs.py"), "--check"], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stderr
    assert {"nuclei_unet", "spleen_ct"} <= set(NAMES) and all((MODELS / n / "config.pbtxt").exists() for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_both_servers_configs_describe_the_same_tensors_as_the_onnx_graph(name, tmp_path):
    subprocess.run([sys.executable, str(MODELS / "triton_configs.py"), "--onnxruntime", str(tmp_path)], check=True)
    local = (MODELS / name / "config.pbtxt").read_text()
    native = (tmp_path / name / "config.pbtxt").read_text()
    assert 'backend: "python"' in local and 'platform: "onnxruntime_onnx"' in native and "KIND_GPU" in native
    assert tensors(local) == tensors(native) and len(tensors(local)["tensors"]) == 2
    assert (tmp_path / name / "1" / "model.onnx").read_bytes() == (MODELS / name / "1" / "model.onnx").read_bytes()
    assert not (tmp_path / name / "1" / "model.py").exists()

    interface = json.loads((MODELS / name / "interface.json").read_text())
    session = ort.InferenceSession(str(MODELS / name / "1" / "model.onnx"))
    for declared, actual in [*zip(interface["inputs"], session.get_inputs()), *zip(interface["outputs"],
                                                                                 session.get_outputs())]:
        assert actual.name == declared["name"] and actual.type == ONNX_TYPES[declared["data_type"]]
        graph_dims = [d if isinstance(d, int) else -1 for d in actual.shape[1:]]  # after the batch axis
        assert graph_dims == declared["dims"]
