""":class:`TritonPredictor`: a model on a Triton server as a :class:`ops.protocols.Predictor`.

It composes the model's spec (:mod:`ops.triton.spec`: what may be sent, how batches are cut,
what must come back), the HTTP transport (:mod:`ops.triton.transport`) and, where the server
shares this host, a pool of shared-memory slots (:mod:`ops.triton.slots`), and keeps
``concurrency`` requests in flight over a stream of batches.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ops.errors import InferenceError, InvalidParameter
from ops.triton.slots import Placement, SharedRegion, SlotPool
from ops.triton.spec import DATATYPES, ModelSpec, checked_output, fetch_spec, split_batch
from ops.triton.transport import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    Transport,
    request_tensors,
)

log = logging.getLogger(__name__)

DEFAULT_INPUT_NAME = "INPUT__0"
DEFAULT_OUTPUT_NAME = "OUTPUT__0"
DEFAULT_CONCURRENCY = 2


class _Pending(NamedTuple):
    chunk: np.ndarray
    last_of_batch: bool
    request: Any  # tritonclient.http.InferAsyncRequest
    placement: Placement | None  # where its tensors lie in the shared region, or None (HTTP bodies)
    sent: float  # time.monotonic() when it was sent


class TritonPredictor:
    """The ``Predictor`` of one model (one input, one output) on a Triton HTTP endpoint.

    Called with a batch ``(B, C, *roi)`` of real numbers, it returns ``(B, C_out, *roi)``
    float32, a new array. One predictor may be shared by threads, and pickled (to Dask
    workers): a copy has no clients and no shared region, it sends HTTP bodies.

    Args:
        url: ``host:port`` of the server's HTTP endpoint (``http://`` is accepted and dropped).
        model_name: the model; ``model_version`` "" means the server's choice (the latest).
        input_name, output_name: the model's input and output tensors.
        timeout_s: the most seconds to connect, and to wait for any answer, per request.
        timeout_setting: what sets ``timeout_s`` (a setting's name), named in timeout messages.
        retries: attempts after the first for transient errors (refused, reset, 502/503/504).
        backoff_s: the first pause before a retry; it doubles each time (at most 10 s).
        concurrency: requests in flight at once (split batches, :meth:`predict_many`), ≥ 1;
            also the size of each client's connection pool.
        shared_memory: where the server shares this host, tensors travel through this region
            (Triton's system shared-memory extension) instead of HTTP bodies: it is cut into
            ``concurrency`` slots, each holding one request's input and output. Registered
            with the server on first use and unregistered by :meth:`close`. A server that
            cannot map it (another host, another /dev/shm), or a request too large for a
            slot, goes over binary HTTP instead: slower, never wrong. So does every request
            once the server has lost the registration (it restarted).

    Raises:
        InvalidParameter: an argument is out of range (named in the message).
    """

    def __init__(self, url: str, model_name: str, input_name: str = DEFAULT_INPUT_NAME,
                 output_name: str = DEFAULT_OUTPUT_NAME, *, model_version: str = "",
                 timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, concurrency: int = DEFAULT_CONCURRENCY,
                 shared_memory: SharedRegion | None = None, timeout_setting: str = "timeout_s") -> None:
        _check_arguments(url, model_name, input_name, output_name, timeout_s, retries, backoff_s, concurrency,
                         shared_memory)
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
        self._transport = Transport(self.url, model_name, self.model_version, timeout_s=self.timeout_s,
                                    timeout_setting=timeout_setting,
                                    retries=retries, backoff_s=self.backoff_s, concurrency=concurrency)
        self._slots = SlotPool(shared_memory, concurrency)

    def __repr__(self) -> str:
        return f"TritonPredictor({self.url!r}, {self.model_name!r})"

    # -- the Predictor protocol -------------------------------------------------------------

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Predict one batch ``(B, C, *roi)``; returns ``(B, C_out, *roi)`` float32, a new array.

        Raises:
            InferenceError: see :mod:`ops.triton` for the subclasses and when.
            InvalidParameter: ``batch`` is not of real numbers.
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
                chunks = split_batch(batch, spec, self.model_name, self.input_name)
                for k, chunk in enumerate(chunks):
                    if len(inflight) >= self.concurrency:
                        out = self._collect(inflight.popleft(), pieces)
                        if out is not None:
                            yield out
                    inflight.append(_Pending(chunk, k == len(chunks) - 1, *self._send(chunk, spec)))
            while inflight:
                out = self._collect(inflight.popleft(), pieces)
                if out is not None:
                    yield out
            finished = True
        finally:
            if not finished and inflight:
                self._transport.reset_client()  # waits (≤ timeout_s) for the abandoned requests

    def close(self) -> None:
        """Unregister the shared region from the server, if it was registered; close this
        thread's client (others close when their thread's data is collected)."""
        name = self._slots.stop()
        if name is not None:
            try:
                self._transport.unregister_region(name)
            except Exception as e:  # a server that is gone has dropped the registration with itself
                log.warning("triton on %s: unregistering shared memory %s: %s", self.url, name, e)
        self._transport.reset_client()

    # -- the model ------------------------------------------------------------------------------

    def spec(self) -> ModelSpec:
        """Check the model (once; cached) and describe its input and output.

        Raises:
            InferenceServerUnavailable: the server cannot be reached.
            ModelNotFound: no such model (or version), or it is not ready.
            ModelShapeMismatch: no input/output of the given names, or not a handled datatype.
        """
        if self._spec is None:
            self._spec = fetch_spec(self._transport, self.input_name, self.output_name)
        return self._spec

    def compute_seconds(self) -> float:
        """Seconds the server has spent computing this model (``compute_infer``), all versions.

        A cumulative counter since the model was loaded, counting every client's requests:
        the benchmark takes the difference around a run. Queueing and the copies of inputs
        and outputs are not included.

        Raises:
            InferenceError: the statistics cannot be read (as :meth:`spec`).
        """
        name, version = self.model_name, self.model_version
        stats = self._transport.call(lambda c: c.get_inference_statistics(name, version), "read the statistics of")
        return sum(int(m["inference_stats"]["compute_infer"]["ns"]) for m in stats.get("model_stats", [])) / 1e9

    # -- requests -------------------------------------------------------------------------------

    def _send(self, chunk: np.ndarray, spec: ModelSpec) -> tuple[Any, Placement | None, float]:
        placement = self._slots.take(chunk, spec.output_nbytes(chunk.shape), self._register)
        try:
            inputs, outputs = request_tensors(chunk, self.input_name, spec.input_datatype, self.output_name, placement)
            request = self._transport.send(inputs, outputs)
        except BaseException:
            self._slots.give(placement)
            raise
        return request, placement, time.monotonic()

    def _collect(self, pending: _Pending, pieces: list[np.ndarray]) -> np.ndarray | None:
        """Wait for the oldest request; return the whole batch's output once its last piece is in."""
        try:
            out = self._response_output(pending.request.get_result(), pending.placement)
            pieces.append(checked_output(out, pending.chunk, self.spec(), self.model_name, self.output_name))
        except Exception as e:
            error, transient = self._transport.failure(e, "infer with", pending.sent)
            if error is None:
                raise
            if pending.placement is not None and self._transport.lost_region(e, pending.placement.region_name):
                self._slots.stop()  # the server restarted without it: HTTP bodies from now on
                transient = True
            if not transient or self.retries == 0:
                raise error from e
            log.warning("triton %s on %s: %s; retrying", self.model_name, self.url, error)
            pieces.append(self._over_http(pending.chunk))
        finally:
            self._slots.give(pending.placement)
        if not pending.last_of_batch:
            return None
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        pieces.clear()
        return out

    def _over_http(self, chunk: np.ndarray) -> np.ndarray:
        """The output for ``chunk`` of a retry over HTTP bodies (the region may be gone with the
        server), after the first pause; the retries left follow."""
        self._transport.pause(0)
        spec = self.spec()
        inputs, outputs = request_tensors(chunk, self.input_name, spec.input_datatype, self.output_name)
        result = self._transport.infer(inputs, outputs, retries=self.retries - 1)
        return checked_output(result.as_numpy(self.output_name), chunk, spec, self.model_name, self.output_name)

    def _response_output(self, result: Any, placement: Placement | None) -> np.ndarray | None:
        """The output of ``result`` (tritonclient's ``InferResult``): from its body, or a view
        of the slot at ``placement`` (the response gives its shape and datatype, not its
        offset); None where the response lacks it."""
        if placement is None:
            return result.as_numpy(self.output_name)
        described = result.get_output(self.output_name)
        if described is None:
            return None
        shape = tuple(int(d) for d in described["shape"])
        return self._slots.output(placement, np.dtype(DATATYPES[described["datatype"]]), shape)

    def _register(self, name: str, region: SharedRegion) -> bool:
        """Register ``region`` with the server as ``name``; False if the server refuses it (it
        does not share this host's /dev/shm): the slot pool then stops, HTTP from then on."""
        try:
            self._transport.register_region(name, region)
        except InferenceError as e:
            log.warning("triton %s on %s: shared memory %s refused (%s); tensors go over HTTP",
                        self.model_name, self.url, region.key, e)
            return False
        log.info("triton %s on %s: tensors through shared memory %s (%d slots of %d bytes)",
                 self.model_name, self.url, region.key, self.concurrency, self._slots.slot_bytes)
        return True


def _check_arguments(url: str, model_name: str, input_name: str, output_name: str, timeout_s: float,
                     retries: int, backoff_s: float, concurrency: int, shared_memory: SharedRegion | None) -> None:
    """Raise :class:`InvalidParameter`, naming the first argument out of range."""
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
