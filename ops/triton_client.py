"""A model on a Triton Inference Server as a :class:`ops.protocols.Predictor`.

``TritonPredictor(url, model_name)`` is called with a batch ``(B, C, *roi)`` float32 and returns
``(B, C_out, *roi)`` float32, through the KServe v2 HTTP protocol with binary tensors
(``tritonclient.http``, ``binary_data=True`` both ways: no JSON lists of floats). Batches larger
than the model's ``max_batch_size`` are split and sent concurrently; :meth:`predict_many`
keeps ``concurrency`` requests in flight over a stream of batches.

Where the server runs on the same host, ``shared_memory=SharedRegion(key, buffer)`` sends the
tensors through Triton's system shared-memory extension instead: the request carries only the
region's name and offsets, the server reads the input from and writes the output into memory
both processes map (the workers hand it a FastIO allocation). Anything that stops it — a
remote server, a full slot, a server that restarted and forgot the region — falls back to
binary HTTP for that request or from then on; results are the same either way.

Errors (see :mod:`ops.errors`): the model is checked on first use against its metadata and
config — present and ready (else :class:`ModelNotFound`), the named input and output, a
float datatype, the rank and fixed dims of what is sent (else :class:`ModelShapeMismatch`);
every response is checked too. Connection refused/reset and HTTP 502/503/504 are retried
``retries`` times with exponential backoff, then raise :class:`InferenceServerUnavailable`;
other HTTP errors (4xx) are not retried. A request without an answer after ``timeout_s``
raises :class:`InferenceTimeout` and is not retried: the server may still be computing it.

Threads and processes: ``tritonclient.http`` is built on gevent and its client is not
thread-safe, so a predictor keeps one ``InferenceServerClient`` per thread and per process
(created on first use there; a forked Celery child never touches its parent's). One predictor
may therefore be shared by threads, and pickled (to Dask workers): clients are not pickled.

Surprises met on the way:

- A timed-out request may leave its connection in the pool mid-response; the client is
  discarded after a timeout, so no later request can read a stale answer.
- gevent prints every exception a greenlet raises to stderr, so each timeout or refused
  connection of :meth:`predict_many` would print a traceback although we handle it. The hub
  of each thread that uses a predictor is told not to print ``OSError`` (gevent's
  ``Hub.NOT_ERROR``); other greenlet errors still print.
- The server answers 404 for an unknown model (``Request for unknown model``), 400 for a wrong
  shape or a batch above ``max_batch_size``; both are checked here before sending.
- The model's outputs are not checked by the python backend against its config: a model may
  return another shape than it declares, hence the check of every response.

``tritonclient`` is imported where used: importing this module loads only numpy.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ops.errors import (
    InferenceError,
    InferenceServerUnavailable,
    InferenceTimeout,
    InvalidParameter,
    ModelNotFound,
    ModelShapeMismatch,
)

log = logging.getLogger(__name__)

DEFAULT_INPUT_NAME = "INPUT__0"
DEFAULT_OUTPUT_NAME = "OUTPUT__0"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
DEFAULT_CONCURRENCY = 2
# Answers of a server (or a proxy in front of it) that is starting, overloaded or restarting.
TRANSIENT_STATUSES = frozenset({"502", "503", "504"})
# The tensor datatypes a predictor sends (inputs are cast to the model's) and reads back.
DATATYPES = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
             "INT32": np.int32, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
SLOT_ALIGNMENT = 64  # bytes: every tensor in the shared region starts on a cache line


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


class SharedRegion(NamedTuple):
    """Memory the client and a server on the same host both map: a POSIX shared-memory object.

    ``key`` is its ``shm_open`` name ("/name", a file in /dev/shm on Linux) and ``buffer`` a
    writable view of it from its first byte; the predictor never frees it.
    """

    key: str
    buffer: memoryview


class _Pending(NamedTuple):
    chunk: np.ndarray
    last_of_batch: bool
    request: Any  # tritonclient.http.InferAsyncRequest
    slot: int | None  # the shared-memory slot holding its tensors, or None (HTTP bodies)


class TritonPredictor:
    """The ``Predictor`` of one model (one input, one output) on a Triton HTTP endpoint.

    Args:
        url: ``host:port`` of the server's HTTP endpoint (``http://`` is accepted and dropped).
        model_name: the model; ``model_version`` "" means the server's choice (the latest).
        input_name, output_name: the model's input and output tensors.
        timeout_s: the most seconds to connect, and to wait for any answer, per request.
        retries: attempts after the first for transient errors (refused, reset, 502/503/504).
        backoff_s: the first pause before a retry; it doubles each time (at most 10 s).
        concurrency: requests in flight at once (split batches, :meth:`predict_many`), ≥ 1;
            also the size of each client's connection pool.
        shared_memory: where the server shares this host, tensors travel through this region
            (Triton's system shared-memory extension) instead of HTTP bodies: it is cut into
            ``concurrency`` slots, each holding one request's input and output. Registered
            with the server on first use and unregistered by :meth:`close`. A server that
            cannot map it (another host, another /dev/shm), or a request too large for a
            slot, goes over binary HTTP instead: slower, never wrong.

    Raises:
        InvalidParameter: an argument is out of range (named in the message).
    """

    def __init__(self, url: str, model_name: str, input_name: str = DEFAULT_INPUT_NAME,
                 output_name: str = DEFAULT_OUTPUT_NAME, *, model_version: str = "",
                 timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, concurrency: int = DEFAULT_CONCURRENCY,
                 shared_memory: SharedRegion | None = None) -> None:
        for name, value in (("url", url), ("model_name", model_name), ("input_name", input_name),
                            ("output_name", output_name)):
            if not isinstance(value, str) or not value:
                raise InvalidParameter(f"{name} must be a non-empty string, not {value!r}")
        if "://" in url and not url.startswith("http://"):
            raise InvalidParameter(f"url {url!r}: only plain http is supported")
        if not timeout_s > 0:
            raise InvalidParameter(f"timeout_s must be > 0, not {timeout_s!r}")
        if not isinstance(retries, int) or retries < 0:
            raise InvalidParameter(f"retries must be an int ≥ 0, not {retries!r}")
        if not backoff_s >= 0:
            raise InvalidParameter(f"backoff_s must be ≥ 0, not {backoff_s!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidParameter(f"concurrency must be an int ≥ 1, not {concurrency!r}")
        if shared_memory is not None and (not isinstance(shared_memory, SharedRegion)
                                          or shared_memory.buffer.readonly or not shared_memory.key.startswith("/")):
            raise InvalidParameter(f"shared_memory must be a SharedRegion with a '/name' key and a writable buffer, "
                                   f"not {shared_memory!r}")
        self.url = url.removeprefix("http://").rstrip("/")
        self.model_name = model_name
        self.model_version = str(model_version)
        self.input_name = input_name
        self.output_name = output_name
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.concurrency = concurrency
        self._spec: ModelSpec | None = None
        self._local = threading.local()
        self._shared = shared_memory
        self._shared_name: str | None = None  # the region's name on the server once registered
        self._slot_bytes = 0 if shared_memory is None else _align_down(len(shared_memory.buffer) // concurrency)
        self._free_slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(concurrency if shared_memory is not None else 0):
            self._free_slots.put(slot)
        self._shared_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TritonPredictor({self.url!r}, {self.model_name!r})"

    # -- the Predictor protocol -------------------------------------------------------------

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Predict one batch ``(B, C, *roi)``; returns ``(B, C_out, *roi)`` float32, a new array.

        Raises:
            InferenceError: see the module's docstring for the subclasses and when.
        """
        [out] = self.predict_many([batch])
        return out

    def predict_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Predict each batch of ``batches``, yielding the outputs in the same order.

        Up to ``concurrency`` requests are in flight at once: the server (dynamic batching,
        several model instances) works on the next batches while the caller handles this one.
        ``batches`` is consumed lazily, at most ``concurrency`` requests ahead.

        Raises:
            InferenceError: as :meth:`__call__`; the requests still in flight are abandoned.
        """
        spec = self.spec()
        inflight: deque[_Pending] = deque()
        pieces: list[np.ndarray] = []
        finished = False
        try:
            for batch in batches:
                chunks = self._chunks(batch, spec)
                for k, chunk in enumerate(chunks):
                    if len(inflight) >= self.concurrency:
                        out = self._collect(inflight.popleft(), pieces)
                        if out is not None:
                            yield out
                    inflight.append(_Pending(chunk, k == len(chunks) - 1, *self._send(chunk)))
            while inflight:
                out = self._collect(inflight.popleft(), pieces)
                if out is not None:
                    yield out
            finished = True
        finally:
            if not finished and inflight:
                self._reset_client()  # waits (≤ timeout_s) for the abandoned requests

    # -- the model's description --------------------------------------------------------------

    def spec(self) -> ModelSpec:
        """Check the model (once; cached) and describe its input and output.

        Raises:
            InferenceServerUnavailable: the server cannot be reached.
            ModelNotFound: no such model (or version), or it is not ready.
            ModelShapeMismatch: no input/output of the given names, or not a float datatype.
        """
        if self._spec is None:
            self._spec = self._fetch_spec()
        return self._spec

    def _fetch_spec(self) -> ModelSpec:
        name, version = self.model_name, self.model_version
        metadata = self._call(lambda c: c.get_model_metadata(name, version), "read the metadata of")
        if not self._call(lambda c: c.is_model_ready(name, version), "check"):
            raise ModelNotFound(f"model {name!r} (version {version or 'latest'}) on {self.url} is not ready")
        config = self._call(lambda c: c.get_model_config(name, version), "read the config of")
        max_batch_size = int(config.get("max_batch_size", 0))
        tensors = {}
        for kind, wanted in (("inputs", self.input_name), ("outputs", self.output_name)):
            found = {t["name"]: t for t in metadata.get(kind, [])}
            if wanted not in found:
                described = ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in found.values())
                raise ModelShapeMismatch(f"model {name!r} on {self.url} has no {kind[:-1]} {wanted!r}; "
                                         f"its {kind}: {described or 'none'}")
            tensor = found[wanted]
            if tensor["datatype"] not in DATATYPES:
                raise ModelShapeMismatch(f"model {name!r} {kind[:-1]} {wanted!r} is {tensor['datatype']}; "
                                         f"this predictor handles {', '.join(DATATYPES)}")
            shape = tuple(int(d) for d in tensor["shape"])
            # The metadata's shape starts with the batch axis (-1) where the model batches.
            tensors[kind] = (tensor["datatype"], shape[1:] if max_batch_size > 0 else shape)
        versions = version or ",".join(metadata.get("versions", []))
        spec = ModelSpec(versions, max_batch_size, *tensors["inputs"], *tensors["outputs"])
        log.info("triton model %s on %s: %s", name, self.url, spec)
        return spec

    def compute_seconds(self) -> float:
        """Seconds the server has spent computing this model (``compute_infer``), all versions.

        A cumulative counter since the model was loaded, counting every client's requests:
        the benchmark takes the difference around a run. Queueing and the copies of inputs
        and outputs are not included.
        """
        name, version = self.model_name, self.model_version
        stats = self._call(lambda c: c.get_inference_statistics(name, version), "read the statistics of")
        return sum(int(m["inference_stats"]["compute_infer"]["ns"]) for m in stats.get("model_stats", [])) / 1e9

    # -- requests -------------------------------------------------------------------------------

    def _chunks(self, batch: Any, spec: ModelSpec) -> list[np.ndarray]:
        """``batch`` in the model's datatype, C-contiguous, split by ``max_batch_size``."""
        array = np.asarray(batch)
        if array.dtype.kind not in "buif":
            raise InvalidParameter(f"batch has dtype {array.dtype}; real numbers are expected")
        dims = spec.input_dims
        batched = spec.max_batch_size > 0
        expected = ("B", *dims) if batched else dims
        sent = array.shape[1:] if batched else array.shape
        if array.ndim != len(expected) or any(d not in (-1, s) for d, s in zip(dims, sent)):
            shown = ", ".join("?" if d == -1 else str(d) for d in expected)
            raise ModelShapeMismatch(f"model {self.model_name!r} input {self.input_name!r} takes shape "
                                     f"({shown}); the batch has shape {array.shape}")
        if array.ndim < 2 or array.shape[0] < 1:
            raise ModelShapeMismatch(f"batch of shape {array.shape}: (B ≥ 1, C, *roi) is expected")
        array = np.ascontiguousarray(array, dtype=DATATYPES[spec.input_datatype])
        if not batched or len(array) <= spec.max_batch_size:
            return [array]
        return [array[i:i + spec.max_batch_size] for i in range(0, len(array), spec.max_batch_size)]

    def _request(self, chunk: np.ndarray, slot: int | None = None) -> tuple[list, list]:
        """The request's input and output tensors: binary HTTP bodies, or ``slot`` of the shared
        region (the chunk is copied into the slot; the output is to follow it there)."""
        import tritonclient.http as httpclient

        tensor = httpclient.InferInput(self.input_name, list(chunk.shape), self.spec().input_datatype)
        if slot is None:
            tensor.set_data_from_numpy(chunk, binary_data=True)
            return [tensor], [httpclient.InferRequestedOutput(self.output_name, binary_data=True)]
        start, output_start = self._slot_layout(slot, chunk)
        assert self._shared is not None and self._shared_name is not None
        np.frombuffer(self._shared.buffer, np.uint8, chunk.nbytes, start)[:] = chunk.reshape(-1).view(np.uint8)
        tensor.set_shared_memory(self._shared_name, chunk.nbytes, offset=start)
        output = httpclient.InferRequestedOutput(self.output_name)
        output.set_shared_memory(self._shared_name, start + self._slot_bytes - output_start, offset=output_start)
        return [tensor], [output]

    def _send(self, chunk: np.ndarray) -> tuple[Any, int | None]:
        slot = self._take_slot(chunk)
        try:
            inputs, outputs = self._request(chunk, slot)
            request = self._client().async_infer(self.model_name, inputs, model_version=self.model_version,
                                                 outputs=outputs)
        except BaseException:
            self._give_slot(slot)
            raise
        return request, slot

    # -- the shared-memory region ----------------------------------------------------------------

    def _slot_layout(self, slot: int, chunk: np.ndarray) -> tuple[int, int]:
        """Byte offsets of a slot's input and output; the output takes the rest of the slot."""
        start = slot * self._slot_bytes
        return start, start + _align_up(chunk.nbytes)

    def _take_slot(self, chunk: np.ndarray) -> int | None:
        """A free slot for ``chunk``, or None: no region, the server cannot map it, the chunk
        and its output do not fit a slot, or every slot is in flight (other threads share this
        predictor)."""
        if self._shared is None or not self._fits_a_slot(chunk) or not self._registered():
            return None
        try:
            return self._free_slots.get_nowait()
        except queue.Empty:
            return None

    def _fits_a_slot(self, chunk: np.ndarray) -> bool:
        """Whether ``chunk`` and its output fit one slot. The output's size follows from the
        model's declared dims, a variable one (-1) taking the chunk's size on that axis (the
        Predictor contract: ``(B, C, *roi)`` in, ``(B, C_out, *roi)`` out)."""
        spec = self.spec()
        dims = spec.output_dims
        if spec.max_batch_size <= 0 or len(dims) != chunk.ndim - 1:
            return False
        elements = chunk.shape[0] * math.prod(c if d == -1 else d for d, c in zip(dims, chunk.shape[1:]))
        output_nbytes = elements * np.dtype(DATATYPES[spec.output_datatype]).itemsize
        return _align_up(chunk.nbytes) + output_nbytes <= self._slot_bytes

    def _give_slot(self, slot: int | None) -> None:
        if slot is not None:
            self._free_slots.put(slot)

    def _registered(self) -> bool:
        """Register the region with the server once; False (and binary HTTP from then on) if
        the server refuses it: it does not share this host's /dev/shm."""
        with self._shared_lock:
            if self._shared is not None and self._shared_name is None:
                name = f"carina-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                region = self._shared
                try:
                    self._call(lambda c: c.register_system_shared_memory(name, region.key, len(region.buffer)),
                               "register shared memory for")
                    self._shared_name = name
                    log.info("triton %s on %s: tensors through shared memory %s (%d slots of %d bytes)",
                             self.model_name, self.url, region.key, self.concurrency, self._slot_bytes)
                except InferenceError as e:
                    log.warning("triton %s on %s: shared memory %s refused (%s); tensors go over HTTP",
                                self.model_name, self.url, region.key, e)
                    self._shared = None
            return self._shared is not None

    def _drop_shared(self) -> str | None:
        """Stop using the region; returns the name it was registered under, if it was."""
        with self._shared_lock:
            name, self._shared_name, self._shared = self._shared_name, None, None
        return name

    def _shared_output(self, result: Any, slot: int, chunk: np.ndarray) -> np.ndarray:
        """The output the server wrote into ``slot`` for ``chunk``: a view of the region, valid
        until the slot is given back."""
        assert self._shared is not None
        described = result.get_output(self.output_name)
        if described is None:
            raise ModelShapeMismatch(f"model {self.model_name!r} output {self.output_name!r} is missing from the response")
        dtype = np.dtype(DATATYPES[described["datatype"]])
        shape = tuple(int(d) for d in described["shape"])
        _, offset = self._slot_layout(slot, chunk)  # the response does not repeat it
        return np.frombuffer(self._shared.buffer, dtype, math.prod(shape), offset).reshape(shape)

    def _collect(self, pending: _Pending, pieces: list[np.ndarray]) -> np.ndarray | None:
        """Wait for the oldest request; return the whole batch's output once its last piece is in."""
        try:
            result = pending.request.get_result()
            raw = result.as_numpy(self.output_name) if pending.slot is None else self._shared_output(result, pending.slot, pending.chunk)
            pieces.append(self._output(raw, pending.chunk))
        except Exception as e:
            error, transient = self._translate(e, "infer with")
            if error is None:
                raise
            self._reset_after(e)
            if pending.slot is not None and "shared memory" in str(error).lower():
                # The server lost the registration (it restarted): HTTP bodies from now on.
                self._drop_shared()
                transient = True
            if not transient or self.retries == 0:
                raise error from e
            log.warning("triton %s on %s: %s; retrying", self.model_name, self.url, error)
            self._pause(0)
            inputs, outputs = self._request(pending.chunk)  # over HTTP: the region may be gone with the server
            result = self._call(lambda c: c.infer(self.model_name, inputs, model_version=self.model_version,
                                                  outputs=outputs),
                                "infer with", retries=self.retries - 1)
            pieces.append(self._output(result.as_numpy(self.output_name), pending.chunk))
        finally:
            self._give_slot(pending.slot)
        if not pending.last_of_batch:
            return None
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        pieces.clear()
        return out

    def _output(self, out: np.ndarray | None, chunk: np.ndarray) -> np.ndarray:
        """The response's output as a new float32 array, if it keeps the model's and the
        Predictor's contract."""
        where = f"model {self.model_name!r} output {self.output_name!r}"
        if out is None:
            raise ModelShapeMismatch(f"{where} is missing from the response")
        spec = self.spec()
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

    def _call(self, fn: Callable[[Any], Any], what: str, retries: int | None = None) -> Any:
        """``fn(client)``, retried on transient errors, its errors translated."""
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                return fn(self._client())
            except Exception as e:
                error, transient = self._translate(e, what)
                if error is None:
                    raise
                self._reset_after(e)
                if not transient or attempt == retries:
                    raise error from e
                log.warning("triton %s on %s: %s; retry %d of %d", self.model_name, self.url, error,
                            attempt + 1, retries)
                self._pause(attempt)
        raise AssertionError("unreachable")

    def _pause(self, attempt: int) -> None:
        time.sleep(min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S))

    def _translate(self, e: Exception, what: str) -> tuple[InferenceError | None, bool]:
        """``(error to raise, transient?)`` for an exception of tritonclient; ``(None, False)``
        for anything else (a bug: let it propagate as is)."""
        from geventhttpclient import HTTPParseError
        from tritonclient.utils import InferenceServerException

        where = f"{what} model {self.model_name!r} on {self.url}"
        if isinstance(e, InferenceServerException):
            status, message = e.status(), e.message() or ""
            text = f"{where}: HTTP {status}: {message}"
            if status in TRANSIENT_STATUSES:
                return InferenceServerUnavailable(text), True
            if status == "404" or "unknown model" in message.lower():
                return ModelNotFound(text), False
            if status == "400" and ("shape" in message or "batch" in message):
                return ModelShapeMismatch(text), False
            return InferenceError(text), False
        if isinstance(e, TimeoutError):  # socket.timeout is TimeoutError
            return InferenceTimeout(f"{where}: no answer in {self.timeout_s:g} s"), False
        if isinstance(e, (OSError, HTTPParseError)):  # refused, reset, broken pipe, closed mid-answer
            return InferenceServerUnavailable(f"{where}: {type(e).__name__}: {e}"), True
        return None, False

    # -- one client per thread and process ------------------------------------------------------

    def _client(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a new thread, or a forked child
            import gevent
            import tritonclient.http as httpclient

            local.client = httpclient.InferenceServerClient(
                self.url, concurrency=self.concurrency, connection_timeout=self.timeout_s,
                network_timeout=self.timeout_s)
            local.pid = os.getpid()
            hub = gevent.get_hub()
            if not issubclass(OSError, hub.NOT_ERROR):
                hub.NOT_ERROR = (*hub.NOT_ERROR, OSError)
        return local.client

    def _reset_after(self, e: Exception) -> None:
        # A timed-out connection may still receive its answer: never reuse it. (A refused or
        # reset connection is closed by geventhttpclient itself, and closing the client here
        # would also cut the other requests in flight.)
        if isinstance(e, TimeoutError):
            self._reset_client()

    def _reset_client(self) -> None:
        local = self._local
        client = getattr(local, "client", None)
        if client is None or getattr(local, "pid", None) != os.getpid():
            return
        del local.client, local.pid
        try:
            client.close()
        except Exception:  # a broken client: nothing more to release
            log.debug("closing the triton client of %s", self.url, exc_info=True)

    def close(self) -> None:
        """Unregister the shared region from the server, if it was registered; close this
        thread's client (others close when their thread's data is collected)."""
        name = self._drop_shared()
        if name is not None:
            try:
                self._client().unregister_system_shared_memory(name)
            except Exception as e:  # a server that is gone has dropped the registration with itself
                log.warning("triton on %s: unregistering shared memory %s: %s", self.url, name, e)
        self._reset_client()

    def __getstate__(self) -> dict:
        # A copy elsewhere sends HTTP bodies: the region and its registration stay with this one.
        state = self.__dict__.copy()
        for name in ("_local", "_free_slots", "_shared_lock"):
            del state[name]
        state.update(_shared=None, _shared_name=None, _slot_bytes=0)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._free_slots = queue.SimpleQueue()
        self._shared_lock = threading.Lock()


def _align_up(nbytes: int) -> int:
    return -(-nbytes // SLOT_ALIGNMENT) * SLOT_ALIGNMENT


def _align_down(nbytes: int) -> int:
    return nbytes // SLOT_ALIGNMENT * SLOT_ALIGNMENT
