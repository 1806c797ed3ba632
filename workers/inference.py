"""The model server as an inference stage sees it: a Triton predictor, fed through FastIO memory
where the server shares this host."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastio import FastIOContext
from ops.triton import DEFAULT_CONCURRENCY, SLOT_ALIGNMENT, SharedRegion, TritonPredictor
from queues.settings import get_settings


@contextmanager
def triton_predictor(ctx: FastIOContext, model: str, request_nbytes: int,
                     concurrency: int = DEFAULT_CONCURRENCY) -> Iterator[TritonPredictor]:
    """A predictor of ``model`` on the configured Triton for the length of a stage.

    With ``CARINA_TRITON_SHARED_MEMORY`` on and segments in /dev/shm, a staging allocation of
    the job holds ``concurrency`` requests (in flight at once) of ``request_nbytes`` (input and output
    together); tensors go through it instead of HTTP bodies, and the predictor falls back to
    HTTP where the server cannot map it. The allocation is freed and unregistered on exit.
    """
    settings = get_settings()
    staging = None
    if settings.triton_shared_memory:
        staging = ctx.create(concurrency * (request_nbytes + 2 * SLOT_ALIGNMENT))
        if staging.posix_shm_key is None:  # segments outside /dev/shm have no name Triton can open
            staging.free()
            staging = None
    region = None if staging is None else SharedRegion(staging.posix_shm_key, staging.buffer)
    predictor = TritonPredictor(settings.triton_url, model, timeout_s=settings.triton_timeout_s,
                                concurrency=concurrency, shared_memory=region, timeout_setting="CARINA_TRITON_TIMEOUT_S")
    try:
        yield predictor
    finally:
        predictor.close()
        if staging is not None:
            staging.free()
