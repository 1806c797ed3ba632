"""A model on a Triton Inference Server as a :class:`ops.protocols.Predictor`.

``TritonPredictor(url, model_name)`` is called with a batch ``(B, C, *roi)`` float32 and returns
``(B, C_out, *roi)`` float32, through the KServe v2 HTTP protocol with binary tensors
(``tritonclient.http``, ``binary_data=True`` both ways: no JSON lists of floats). Batches larger
than the model's ``max_batch_size`` are split and sent concurrently; ``predict_many`` keeps
``concurrency`` requests in flight over a stream of batches.

Where the server runs on the same host, ``shared_memory=SharedRegion(key, buffer)`` sends the
tensors through Triton's system shared-memory extension instead: the request carries only the
region's name and offsets, the server reads the input from and writes the output into memory
both processes map (the workers hand it a FastIO allocation). Anything that stops it — a
remote server, a full slot, a server that restarted and forgot the region — falls back to
binary HTTP for that request or from then on; results are the same either way.

Errors (see :mod:`ops.errors`): the model is checked on first use against its metadata and
config — present and ready (else :class:`~ops.errors.ModelNotFound`), the named input and
output, a handled datatype, the rank and fixed dims of what is sent (else
:class:`~ops.errors.ModelShapeMismatch`); every response is checked too. Connection
refused/reset and HTTP 502/503/504 are retried ``retries`` times with exponential backoff,
then raise :class:`~ops.errors.InferenceServerUnavailable`; other HTTP errors (4xx) are not
retried. A request without an answer after ``timeout_s`` raises
:class:`~ops.errors.InferenceTimeout` and is not retried: the server may still be computing it.

Threads and processes: one predictor may be shared by threads, and pickled (to Dask workers):
it keeps one tritonclient client per thread and per process, and pickles without them.

The modules, each with its own surprises met on the way:

- :mod:`ops.triton.predictor`: :class:`TritonPredictor`, composed from the three below;
- :mod:`ops.triton.spec`: the model's spec, batches split by it, responses held to it;
- :mod:`ops.triton.transport`: the HTTP clients, requests, retries and the errors' translation;
- :mod:`ops.triton.slots`: the shared-memory region cut into one slot per request in flight.

``tritonclient`` is imported where used: importing this package loads only numpy.
"""

from ops.triton.predictor import DEFAULT_CONCURRENCY, DEFAULT_INPUT_NAME, DEFAULT_OUTPUT_NAME, TritonPredictor
from ops.triton.slots import SLOT_ALIGNMENT, SharedRegion
from ops.triton.spec import DATATYPES, ModelSpec
from ops.triton.transport import DEFAULT_BACKOFF_S, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S

__all__ = [
    "DATATYPES",
    "DEFAULT_BACKOFF_S",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_INPUT_NAME",
    "DEFAULT_OUTPUT_NAME",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "SLOT_ALIGNMENT",
    "ModelSpec",
    "SharedRegion",
    "TritonPredictor",
]
