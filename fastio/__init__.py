"""FastIO: the data plane. Named shared-memory allocations with their registry in Redis.

The seed's API::

    ctx = FastIOContext(redis_client, job_id, config)
    alloc = ctx.create(nbytes); alloc.set_type_and_dimensions(dtype, shape)
    alloc.array[...] = volume; alloc.metadata["spacing"] = [...]; alloc.publish("name")
    view = ctx.get("name").array            # zero copy, in any process on the same host
    ctx.publish_array(volume, "other", metadata={...})
    ctx.free_all()                           # at the end of the job, success or failure

This package imports nothing else of Carina's and never reads the environment. Its names
are loaded on first use, so a front door that only needs :class:`FastIOConfig` does not
pull in numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FastIOConfig": "fastio.config",
    "FastIOAllocation": "fastio.context",
    "FastIOContext": "fastio.context",
    "AllocationNotFound": "fastio.errors",
    "AllocationStateError": "fastio.errors",
    "AlreadyPublished": "fastio.errors",
    "FastIOError": "fastio.errors",
    "InvalidArgument": "fastio.errors",
    "NotLocal": "fastio.errors",
    "SegmentError": "fastio.errors",
    "JanitorReport": "fastio.janitor",
    "drain_pool": "fastio.janitor",
    "sweep": "fastio.janitor",
    "Publication": "fastio.registry",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from fastio.config import FastIOConfig
    from fastio.context import FastIOAllocation, FastIOContext
    from fastio.errors import (AllocationNotFound, AllocationStateError, AlreadyPublished, FastIOError, InvalidArgument,
                               NotLocal, SegmentError)
    from fastio.janitor import JanitorReport, drain_pool, sweep
    from fastio.registry import Publication


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastio' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
