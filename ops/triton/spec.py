"""The model's input and output as the server describes them, and what is sent and returned held to them.

:func:`fetch_spec` reads the model's metadata and config once; :func:`split_batch` checks a
batch against the input and cuts it by ``max_batch_size`` (the server answers 400 for a wrong
shape or a batch above it: both are checked here before sending); :func:`checked_output`
checks every response, because the python backend does not check a model's outputs against
its config: a model may return another shape than it declares.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np

from ops.errors import InvalidParameter, ModelNotFound, ModelShapeMismatch
from ops.triton.transport import Transport

log = logging.getLogger(__name__)

# The tensor datatypes a predictor sends (inputs are cast to the model's) and reads back.
DATATYPES = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
             "INT32": np.int32, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


class ModelSpec(NamedTuple):
    """The model's input and output as the server describes them.

    ``input_dims``/``output_dims`` exclude the batch axis when ``max_batch_size`` > 0 (the
    model batches) and are the whole shape when it is 0; -1 is a variable dim.
    """

    version: str  # the one asked for, else the versions the server has loaded
    max_batch_size: int
    input_datatype: str
    input_dims: tuple[int, ...]
    output_datatype: str
    output_dims: tuple[int, ...]

    def output_nbytes(self, input_shape: tuple[int, ...]) -> int | None:
        """Bytes of the output for an input of ``input_shape`` ``(B, C, *roi)``, by the declared
        dims, a variable one (-1) taking the input's size on that axis (the Predictor contract:
        ``(B, C_out, *roi)`` out); None where they do not tell: the model does not batch, or
        its output's rank is not the input's."""
        dims = self.output_dims
        if self.max_batch_size <= 0 or len(dims) != len(input_shape) - 1:
            return None
        elements = input_shape[0] * math.prod(s if d == -1 else d for d, s in zip(dims, input_shape[1:]))
        return elements * np.dtype(DATATYPES[self.output_datatype]).itemsize


def fetch_spec(transport: Transport, input_name: str, output_name: str) -> ModelSpec:
    """Check the model of ``transport`` and describe its input and output of these names.

    Raises:
        InferenceServerUnavailable: the server cannot be reached.
        ModelNotFound: no such model (or version), or it is not ready.
        ModelShapeMismatch: no input/output of the given names, or not a datatype of
            :data:`DATATYPES`.
    """
    name, version, url = transport.model_name, transport.model_version, transport.url
    metadata = transport.call(lambda c: c.get_model_metadata(name, version), "read the metadata of")
    if not transport.call(lambda c: c.is_model_ready(name, version), "check"):
        raise ModelNotFound(f"model {name!r} (version {version or 'latest'}) on {url} is not ready")
    config = transport.call(lambda c: c.get_model_config(name, version), "read the config of")
    max_batch_size = int(config.get("max_batch_size", 0))
    tensors = {kind: _tensor(metadata, kind, wanted, max_batch_size, name, url)
               for kind, wanted in (("inputs", input_name), ("outputs", output_name))}
    versions = version or ",".join(metadata.get("versions", []))
    spec = ModelSpec(versions, max_batch_size, *tensors["inputs"], *tensors["outputs"])
    log.info("triton model %s on %s: %s", name, url, spec)
    return spec


def _tensor(metadata: dict, kind: str, wanted: str, max_batch_size: int, name: str,
            url: str) -> tuple[str, tuple[int, ...]]:
    """``(datatype, dims)`` of the tensor ``wanted`` among the metadata's ``kind`` ("inputs"
    or "outputs") of model ``name`` on ``url``."""
    found = {t["name"]: t for t in metadata.get(kind, [])}
    if wanted not in found:
        described = ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in found.values())
        raise ModelShapeMismatch(f"model {name!r} on {url} has no {kind[:-1]} {wanted!r}; "
                                 f"its {kind}: {described or 'none'}")
    tensor = found[wanted]
    if tensor["datatype"] not in DATATYPES:
        raise ModelShapeMismatch(f"model {name!r} {kind[:-1]} {wanted!r} is {tensor['datatype']}; "
                                 f"this predictor handles {', '.join(DATATYPES)}")
    shape = tuple(int(d) for d in tensor["shape"])
    # The metadata's shape starts with the batch axis (-1) where the model batches.
    return tensor["datatype"], shape[1:] if max_batch_size > 0 else shape


def split_batch(batch: np.ndarray, spec: ModelSpec, model_name: str, input_name: str) -> list[np.ndarray]:
    """``batch`` ``(B, C, *roi)`` as the requests to send: C-contiguous arrays of the model's
    input datatype, ``max_batch_size`` long at most (the last may be shorter), in order.

    Raises:
        InvalidParameter: ``batch`` is not of real numbers.
        ModelShapeMismatch: its rank or a fixed dim differs from the model's input, or B < 1.
    """
    array = np.asarray(batch)
    if array.dtype.kind not in "buif":
        raise InvalidParameter(f"batch has dtype {array.dtype}; real numbers are expected")
    dims = spec.input_dims
    batched = spec.max_batch_size > 0
    expected = ("B", *dims) if batched else dims
    sent = array.shape[1:] if batched else array.shape
    if array.ndim != len(expected) or any(d not in (-1, s) for d, s in zip(dims, sent)):
        shown = ", ".join("?" if d == -1 else str(d) for d in expected)
        raise ModelShapeMismatch(f"model {model_name!r} input {input_name!r} takes shape "
                                 f"({shown}); the batch has shape {array.shape}")
    if array.ndim < 2 or array.shape[0] < 1:
        raise ModelShapeMismatch(f"batch of shape {array.shape}: (B ≥ 1, C, *roi) is expected")
    array = np.ascontiguousarray(array, dtype=DATATYPES[spec.input_datatype])
    if not batched or len(array) <= spec.max_batch_size:
        return [array]
    return [array[i:i + spec.max_batch_size] for i in range(0, len(array), spec.max_batch_size)]


def checked_output(out: np.ndarray | None, chunk: np.ndarray, spec: ModelSpec, model_name: str,
                   output_name: str) -> np.ndarray:
    """The response's output ``out`` for the request ``chunk``, as a new float32 array.

    Raises:
        ModelShapeMismatch: ``out`` is None (missing from the response), or breaks the model's
            declared output dims or the Predictor's contract: ``(B, C_out, *roi)`` for
            ``chunk`` ``(B, C, *roi)``.
    """
    where = f"model {model_name!r} output {output_name!r}"
    if out is None:
        raise ModelShapeMismatch(f"{where} is missing from the response")
    dims = out.shape[1:] if spec.max_batch_size > 0 else out.shape
    if (out.ndim != chunk.ndim or out.shape[0] != chunk.shape[0] or out.shape[2:] != chunk.shape[2:]
            or len(dims) != len(spec.output_dims)
            or any(d not in (-1, s) for d, s in zip(spec.output_dims, dims))):
        raise ModelShapeMismatch(f"{where} has shape {out.shape} for an input of shape {chunk.shape}; expected "
                                 f"(B={chunk.shape[0]}, C_out, {', '.join(map(str, chunk.shape[2:]))}) "
                                 f"and the declared dims {list(spec.output_dims)}")
    # A view of the response's bytes or of a shared slot that the next request reuses:
    # callers get an array of their own.
    return out.astype(np.float32, copy=True)
