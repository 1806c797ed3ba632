# Triton for Carina's model repository: NGC's server with onnxruntime for the python-backend
# models (models/onnx_backend.py). The repository itself is mounted at /models.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "onnxruntime-gpu>=1.19" "numpy<2"
