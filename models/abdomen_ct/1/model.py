import os, sys
sys.path[:0] = [p for p in os.environ.get("CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]

# A model for Triton's python backend: model.onnx beside this file, run with onnxruntime by
# models/onnx_backend.py (which says why the two lines above come first). The same file serves
# every model of the repository: the model is named by its folder; its tensors, batch size and
# batching are in its config.pbtxt (made from its interface.json). Dynamic batching hands
# execute() several requests at once; they go through onnxruntime as one batch.

sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.dont_write_bytecode = True
from onnx_backend import onnx_model  # noqa: E402

TritonPythonModel = onnx_model(os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               __file__)
