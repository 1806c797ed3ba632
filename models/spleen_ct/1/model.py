import os, sys
sys.path[:0] = [p for p in os.environ.get("CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]
import triton_python_backend_utils as pb_utils

# The spleen_ct model for Triton's python backend: model.onnx (next to this file) run with
# onnxruntime. The two lines above must stay first: the backend's stub process does not see
# the server's virtualenv, whose site-packages the launcher (queues/triton.py) exports as
# CARINA_TRITON_SITE_PACKAGES; they must be on sys.path before anything imports numpy.
#
# Interface (config.pbtxt): INPUT__0 float32 [N, 1, 96, 96, 96] -> OUTPUT__0 float32
# [N, 2, 96, 96, 96] logits (background, spleen). Dynamic batching hands execute() several
# requests at once; they go through onnxruntime as one batch, which is where batching pays.

import numpy as np
import onnxruntime as ort

INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"
THREADS_VARIABLE = "CARINA_TRITON_THREADS"  # onnxruntime intra-op threads per model instance
DEFAULT_THREADS = 2


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get(THREADS_VARIABLE, DEFAULT_THREADS))
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        pb_utils.Logger.log_info(f"spleen_ct: {path} on {self.session.get_providers()}, "
                             f"{options.intra_op_num_threads} threads")

    def execute(self, requests):
        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
            sizes = [a.shape[0] for a in arrays]
            batch = np.ascontiguousarray(np.concatenate(arrays, axis=0), dtype=np.float32)
            output = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        except Exception as e:  # every request of this batch gets the error; the model stays up
            error = pb_utils.TritonError(f"spleen_ct: {type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        parts = np.split(output, np.cumsum(sizes)[:-1], axis=0)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, np.ascontiguousarray(part))])
                for part in parts]

    def finalize(self):
        self.session = None
