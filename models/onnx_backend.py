"""The shared body of the project's Triton python-backend models: an ONNX file run with onnxruntime.

Each model's ``<name>/1/model.py`` keeps its two first lines (they put the Triton venv's
site-packages on ``sys.path`` before anything imports numpy: see carina/triton.py), then puts
this directory (the model repository's root) on ``sys.path``, writing no bytecode (Triton takes
every folder of the repository, a ``__pycache__`` too, for a model), and names its class::

    TritonPythonModel = onnx_model("nuclei_unet", __file__)

A model repository without this file next to its model directories cannot load them: copy it
along with them.

What it does, per model instance: ``initialize`` opens ``model.onnx`` of the version directory
(CUDA first where onnxruntime has it, else CPU; ``CARINA_TRITON_THREADS`` intra-op threads,
default 2); ``execute`` concatenates the requests that dynamic batching hands it into one batch,
cast to the dtype the ONNX graph declares for its input (float32 for spleen_ct, uint8 for
nuclei_unet), runs the session once and splits the output back per request. An error fails
every request of that batch, each with its own error response, and the model stays up.
"""

import os

import numpy as np
import onnxruntime as ort

THREADS_VARIABLE = "CARINA_TRITON_THREADS"  # onnxruntime intra-op threads per model instance
DEFAULT_THREADS = 2
ONNX_FILE = "model.onnx"
# onnxruntime's names of tensor element types, for the cast of the input batch.
ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16,
               "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
               "tensor(bool)": np.bool_}


def _pb_utils():
    # Imported when used, not with this module: the stub provides it (the unit tests a fake), and
    # a module cached in sys.modules must not hold on to another one.
    import triton_python_backend_utils

    return triton_python_backend_utils


class OnnxModel:
    """A Triton python-backend model (``TritonPythonModel``) running ``directory/model.onnx``.

    Args:
        name: the model's name, in log lines and error messages.
        directory: the version directory holding ``model.onnx`` (that of the model.py).
        input_name, output_name: the tensors, as in config.pbtxt and in the ONNX graph.
    """

    def __init__(self, name: str, directory: str, input_name: str = "INPUT__0", output_name: str = "OUTPUT__0"):
        self.name = name
        self.path = os.path.join(directory, ONNX_FILE)
        self.input_name = input_name
        self.output_name = output_name
        self.session = None
        self.input_dtype = np.float32

    def initialize(self, args):
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get(THREADS_VARIABLE, DEFAULT_THREADS))
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu's CUDA and cuDNN come as nvidia-* wheels (make triton-gpu), which
            # the loader's search path does not reach; onnxruntime finds them itself.
            ort.preload_dlls()
        self.session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        declared = {i.name: i.type for i in self.session.get_inputs()}
        if self.input_name not in declared:
            raise ValueError(f"{self.name}: {self.path} has no input {self.input_name!r}; it has {declared}")
        if declared[self.input_name] not in ONNX_DTYPES:
            raise ValueError(f"{self.name}: input {self.input_name!r} of {self.path} is {declared[self.input_name]}")
        self.input_dtype = ONNX_DTYPES[declared[self.input_name]]
        _pb_utils().Logger.log_info(f"{self.name}: {self.path} on {self.session.get_providers()}, "
                                    f"{options.intra_op_num_threads} threads, input {np.dtype(self.input_dtype).name}")

    def execute(self, requests):
        pb_utils = _pb_utils()
        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            sizes = [a.shape[0] for a in arrays]
            batch = np.ascontiguousarray(np.concatenate(arrays, axis=0), dtype=self.input_dtype)
            output = self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as e:  # every request of this batch gets the error; the model stays up
            error = pb_utils.TritonError(f"{self.name}: {type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        parts = np.split(output, np.cumsum(sizes)[:-1], axis=0)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(part))])
                for part in parts]

    def finalize(self):
        self.session = None


def onnx_model(name: str, model_py: str, input_name: str = "INPUT__0", output_name: str = "OUTPUT__0") -> type:
    """The ``TritonPythonModel`` class of model ``name``, whose ``model.onnx`` lies beside ``model_py``."""
    directory = os.path.dirname(os.path.abspath(model_py))

    class TritonPythonModel(OnnxModel):
        def __init__(self):
            super().__init__(name, directory, input_name, output_name)

    return TritonPythonModel
