import os, sys
sys.path[:0] = [p for p in os.environ.get("CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]

# The spleen_ct model for Triton's python backend: model.onnx beside this file, run with
# onnxruntime by models/onnx_backend.py (which says why the two lines above come first).
#
# Interface (config.pbtxt): INPUT__0 float32 [N, 1, 96, 96, 96] -> OUTPUT__0 float32
# [N, 2, 96, 96, 96] logits (background, spleen). Dynamic batching hands execute() several
# requests at once; they go through onnxruntime as one batch, which is where batching pays.

sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.dont_write_bytecode = True
from onnx_backend import onnx_model  # noqa: E402

TritonPythonModel = onnx_model("spleen_ct", __file__)
