import os, sys
sys.path[:0] = [p for p in os.environ.get("CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]

# The spleen_ct model for Triton's python backend: model.onnx (next to this file) run with
# onnxruntime by the shared models/onnx_backend.py. The two lines above must stay first: the
# backend's stub process does not see the server's virtualenv, whose site-packages the
# launcher (carina/triton.py) exports as CARINA_TRITON_SITE_PACKAGES; they must be on
# sys.path before anything imports numpy.
#
# Interface (config.pbtxt): INPUT__0 float32 [N, 1, 96, 96, 96] -> OUTPUT__0 float32
# [N, 2, 96, 96, 96] logits (background, spleen). Dynamic batching hands execute() several
# requests at once; they go through onnxruntime as one batch, which is where batching pays.

MODELS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if MODELS not in sys.path:
    sys.path.append(MODELS)
# No models/__pycache__/ from this import: Triton would take it for a model and fail to load it.
sys.dont_write_bytecode, _writes_bytecode = True, sys.dont_write_bytecode
from onnx_backend import OnnxModel  # noqa: E402
sys.dont_write_bytecode = _writes_bytecode


class TritonPythonModel(OnnxModel):
    def __init__(self):
        super().__init__("spleen_ct", os.path.dirname(os.path.abspath(__file__)), "INPUT__0", "OUTPUT__0")
