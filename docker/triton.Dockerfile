# Triton for Carina's models: NGC's server, each model served by Triton's native ONNX Runtime
# backend on the GPU (no Python in the request path). The repository is made at build time from
# each model's interface.json (models/triton_configs.py), so its configs and the python-backend
# ones the local server uses describe the same tensors.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
COPY models /opt/carina/models
RUN python3 /opt/carina/models/triton_configs.py --onnxruntime /models
