import os, sys
sys.path[:0] = [p for p in os.environ.get("CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]

# The nuclei_unet model for Triton's python backend: model.onnx beside this file, run with
# onnxruntime by models/onnx_backend.py (which says why the two lines above come first).
#
# Interface (config.pbtxt): INPUT__0 uint8 [N, 3, H, W] RGB 0..255 (H, W multiples of 8) ->
# OUTPUT__0 float32 [N, 1, H, W] nucleus probabilities; scaling and sigmoid are in the graph.
# The dynamic batcher combines only requests of the same H and W (no ragged batching), so
# they concatenate into one batch.

sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.dont_write_bytecode = True
from onnx_backend import onnx_model  # noqa: E402

TritonPythonModel = onnx_model("nuclei_unet", __file__)
