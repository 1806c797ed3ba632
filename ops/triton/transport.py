"""The HTTP side of one model on a Triton endpoint: clients, requests, retries, and errors.

Requests use the KServe v2 HTTP protocol with binary tensors (``tritonclient.http``,
``binary_data=True`` both ways: no JSON lists of floats), or the offsets of a shared-memory
slot (:mod:`ops.triton.slots`). The errors of tritonclient become those of :mod:`ops.errors`:
connection refused/reset and HTTP 502/503/504 are transient (retried ``retries`` times with
exponential backoff, then :class:`InferenceServerUnavailable`); 404 or an unknown model is
:class:`ModelNotFound`; a 400 about a shape or batch is :class:`ModelShapeMismatch`; other
answers are :class:`InferenceError` and not retried; no answer within ``timeout_s`` is
:class:`InferenceTimeout`, not retried either: the server may still be computing it.

Threads and processes: ``tritonclient.http`` is built on gevent and its client is not
thread-safe, so a :class:`Transport` keeps one ``InferenceServerClient`` per thread and per
process (created on first use there; a forked Celery child never touches its parent's), and
pickles without them.

Surprises met on the way:

- A timed-out request may leave its connection in the pool mid-response; the client is
  discarded after a timeout, so no later request can read a stale answer.
- gevent prints every exception a greenlet raises to stderr, so each timeout or refused
  connection of requests in flight would print a traceback although we handle it. The hub
  of each thread that uses a transport is told not to print ``OSError`` (gevent's
  ``Hub.NOT_ERROR``); other greenlet errors still print.
- A server that restarted has forgotten the shared-memory regions registered with it, and
  answers a request naming one with 404, as for an unknown model (Triton 2.51; other versions
  may answer 400, as for a wrong shape). The status does not tell them apart and the wording
  is the server's to change, so :meth:`Transport.lost_region` asks the server for the region.

``tritonclient`` is imported where used: importing this module loads only numpy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ops.errors import InferenceError, InferenceServerUnavailable, InferenceTimeout, ModelNotFound, ModelShapeMismatch
from ops.triton.slots import Placement, SharedRegion

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
# Answers of a server (or a proxy in front of it) that is starting, overloaded or restarting.
TRANSIENT_STATUSES = frozenset({"502", "503", "504"})


class Transport:
    """Requests to model ``model_name`` (``model_version`` "": the server's choice) at ``url``.

    Args:
        url: ``host:port`` of the server's HTTP endpoint.
        timeout_s: the most seconds to connect, and to wait for any answer, per request.
        retries: attempts after the first for transient errors.
        backoff_s: the first pause before a retry; it doubles each time (at most 10 s).
        concurrency: the size of each client's connection pool.
        timeout_setting: what sets ``timeout_s``, named in timeout messages.

    The arguments are taken as valid (:class:`ops.triton.TritonPredictor` checks them).
    """

    def __init__(self, url: str, model_name: str, model_version: str, *, timeout_s: float, retries: int,
                 backoff_s: float, concurrency: int, timeout_setting: str = "timeout_s") -> None:
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.timeout_setting = timeout_setting
        self._local = threading.local()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # -- requests ------------------------------------------------------------------------------

    def call(self, fn: Callable[[Any], Any], what: str, retries: int | None = None) -> Any:
        """``fn(client)``, retried ``retries`` times (default: the transport's) on transient
        errors; ``what`` names the action in messages ("read the config of").

        Raises:
            InferenceError: what the last failure means (see the module's docstring); anything
                but tritonclient's and socket errors propagates as is.
        """
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            started = time.monotonic()
            try:
                return fn(self.client())
            except Exception as e:
                error, transient = self.failure(e, what, started)
                if error is None:
                    raise
                if not transient or attempt == retries:
                    raise error from e
                log.warning("triton %s on %s: %s; retry %d of %d", self.model_name, self.url, error,
                            attempt + 1, retries)
                self.pause(attempt)
        raise AssertionError("unreachable")

    def send(self, inputs: list, outputs: list) -> Any:
        """Start an inference of ``inputs`` (see :func:`request_tensors`) on this thread's client;
        returns tritonclient's ``InferAsyncRequest``, whose ``get_result()`` waits for it and
        raises what the request met (to be read by :meth:`failure`)."""
        return self.client().async_infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs)

    def infer(self, inputs: list, outputs: list, retries: int) -> Any:
        """An inference of ``inputs`` to its end, as :meth:`call` with ``retries``; returns
        tritonclient's ``InferResult``."""
        return self.call(lambda c: c.infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs),
                         "infer with", retries=retries)

    def pause(self, attempt: int) -> None:
        """Sleep before retry ``attempt`` + 1 (0 first): the backoff, doubled each attempt."""
        time.sleep(min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S))

    def failure(self, e: Exception, what: str, started: float) -> tuple[InferenceError | None, bool]:
        """``(error to raise, transient?)`` for an exception of tritonclient met by a request
        sent at ``started`` (``time.monotonic()``); ``(None, False)`` for anything else (a bug:
        let it propagate as is). After a timeout this thread's client is discarded (its
        connection may still receive the answer), which itself can wait for the requests still
        in flight: the message gives the whole time waited."""
        if isinstance(e, TimeoutError):
            # A refused or reset connection is closed by geventhttpclient itself, and closing
            # the client then would also cut the other requests in flight.
            self.reset_client()
        return self._translate(e, what, time.monotonic() - started)

    def _translate(self, e: Exception, what: str, waited_s: float) -> tuple[InferenceError | None, bool]:
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
            return InferenceTimeout(f"{where}: no answer in {self.timeout_s:g} s ({self.timeout_setting}); "
                                    f"waited {waited_s:.0f} s in all"), False
        if isinstance(e, (OSError, HTTPParseError)):  # refused, reset, broken pipe, closed mid-answer
            return InferenceServerUnavailable(f"{where}: {type(e).__name__}: {e}"), True
        return None, False

    # -- the system shared-memory extension ------------------------------------------------------

    def register_region(self, name: str, region: SharedRegion) -> None:
        """Register ``region`` (all of it) with the server as ``name``, as :meth:`call`.

        Raises:
            InferenceError: the server refuses it (it cannot open the key: another host or
                another /dev/shm) or cannot be reached.
        """
        self.call(lambda c: c.register_system_shared_memory(name, region.key, len(region.buffer)),
                  "register shared memory for")

    def unregister_region(self, name: str) -> None:
        """Unregister region ``name``, once, without retries; raises what tritonclient raises."""
        self.client().unregister_system_shared_memory(name)

    def lost_region(self, e: Exception, name: str) -> bool:
        """Whether a request naming region ``name`` failed with ``e`` because the server no
        longer has the region (it restarted): the server answered with an error other than
        502/503/504, and asked for the region's status, does not list it (or does not answer).

        Only the answers' structure is read (tritonclient's exception type and status, the
        region list), never their text. ``e`` a timeout or a refused connection: False at once,
        those say nothing of the region (and asking would wait again).
        """
        from tritonclient.utils import InferenceServerException

        if not isinstance(e, InferenceServerException) or e.status() in TRANSIENT_STATUSES:
            return False
        try:
            regions = self.call(lambda c: c.get_system_shared_memory_status(region_name=name),
                                "read the shared memory of", retries=0)
        except InferenceError:  # 404 where the server does not know the region, or no server
            return True
        return not any(region.get("name") == name for region in regions)

    # -- one client per thread and process ------------------------------------------------------

    def client(self) -> Any:
        """This thread's ``tritonclient.http.InferenceServerClient``, created on first use in
        each thread and process."""
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

    def reset_client(self) -> None:
        """Close this thread's client, if it has one; the next request opens another. Requests
        still in flight on it are abandoned (closing waits for them, at most ``timeout_s``)."""
        local = self._local
        client = getattr(local, "client", None)
        if client is None or getattr(local, "pid", None) != os.getpid():
            return
        del local.client, local.pid
        try:
            client.close()
        except Exception:  # a broken client: nothing more to release
            log.debug("closing the triton client of %s", self.url, exc_info=True)


def request_tensors(chunk: np.ndarray, input_name: str, datatype: str, output_name: str,
                    placement: Placement | None = None) -> tuple[list, list]:
    """The inputs and outputs of a request for ``chunk`` (C-contiguous, of ``datatype``'s
    dtype): binary HTTP bodies, or the offsets of ``placement`` (the chunk already copied
    there; the server writes the output after it)."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(input_name, list(chunk.shape), datatype)
    if placement is None:
        tensor.set_data_from_numpy(chunk, binary_data=True)
        return [tensor], [httpclient.InferRequestedOutput(output_name, binary_data=True)]
    tensor.set_shared_memory(placement.region_name, placement.input_nbytes, offset=placement.input_offset)
    output = httpclient.InferRequestedOutput(output_name)
    output.set_shared_memory(placement.region_name, placement.output_nbytes, offset=placement.output_offset)
    return [tensor], [output]
