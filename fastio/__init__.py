"""FastIO: the data plane. Named shared-memory allocations with their registry in Redis.

The seed's API::

    ctx = FastIOContext(redis_client, job_id, config)
    alloc = ctx.create(nbytes); alloc.set_type_and_dimensions(dtype, shape)
    alloc.array[...] = volume; alloc.metadata["spacing"] = [...]; alloc.publish("name")
    view = ctx.get("name").array            # zero copy, in any process on the same host
    ctx.publish_array(volume, "other", metadata={...})
    ctx.free_all()                           # at the end of the job, success or failure

This package imports nothing else of Carina's and never reads the environment.
"""

from fastio.config import FastIOConfig
from fastio.context import FastIOAllocation, FastIOContext
from fastio.errors import (
    AllocationNotFound,
    AllocationStateError,
    AlreadyPublished,
    FastIOError,
    NotLocal,
    SegmentError,
)
from fastio.janitor import JanitorReport, drain_pool, sweep
from fastio.registry import Publication

__all__ = [
    "AllocationNotFound",
    "AllocationStateError",
    "AlreadyPublished",
    "FastIOAllocation",
    "FastIOConfig",
    "FastIOContext",
    "FastIOError",
    "JanitorReport",
    "NotLocal",
    "Publication",
    "SegmentError",
    "drain_pool",
    "sweep",
]
