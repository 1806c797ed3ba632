"""The seed's Fast I/O API: a job's context, its allocations, publish and get by name."""

from __future__ import annotations

import copy
import math
import time
import weakref
from typing import Any

import numpy as np
import redis

from fastio.config import POSIX_SHM_DIR, FastIOConfig
from fastio.errors import AllocationNotFound, AllocationStateError, InvalidArgument, NotLocal, SegmentError
from fastio.registry import Publication, Registry
from fastio.segments import Hold, SegmentStore, size_class


class FastIOAllocation:
    """A block of shared memory held by a job, seen through this process's mapping.

    ``array`` is a zero-copy numpy view once ``set_type_and_dimensions`` has been called;
    writes through it are seen by every process that maps the same allocation.
    ``metadata`` is this object's own dict: editing it changes nothing published until
    :meth:`publish` is called with a new name.

    While this object or its ``array`` lives (until :meth:`release` at the latest), this
    process holds the segment: the janitor does not reclaim it, whatever the registry says.

    Raises:
        SegmentError: the segment is gone, or smaller than ``nbytes``.
    """

    def __init__(self, ctx: "FastIOContext", segment: str, nbytes: int) -> None:
        self._hold = ctx.store.hold(segment)
        mapping = ctx.store.map(segment, nbytes)
        self._ctx = ctx
        self.segment = segment
        self.nbytes = nbytes
        self.capacity = len(mapping)
        self.host = ctx.config.host_id
        self.dtype: np.dtype | None = None
        self.shape: tuple[int, ...] | None = None
        self.metadata: dict[str, Any] = {}
        self._buffer: memoryview | None = memoryview(mapping)[:nbytes]
        self._array: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"FastIOAllocation(job={self._ctx.job_id!r}, segment={self.segment!r}, "
                f"nbytes={self.nbytes}, dtype={self.dtype}, shape={self.shape})")

    def set_type_and_dimensions(self, dtype: Any, shape: tuple[int, ...] | list[int]) -> None:
        """Type the memory as a C-ordered array of ``shape`` and ``dtype``.

        Raises:
            AllocationStateError: the array would need more than ``nbytes``, or a dimension
                is negative.
        """
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise AllocationStateError(f"shape {shape} has a negative dimension")
        needed = dtype.itemsize * math.prod(shape)
        if needed > self.nbytes:
            raise AllocationStateError(
                f"{dtype}{list(shape)} needs {needed} bytes; allocation {self.segment} has {self.nbytes}")
        self.dtype, self.shape, self._array = dtype, shape, None

    @property
    def posix_shm_key(self) -> str | None:
        """The ``shm_open`` name of the memory (``"/<segment>"``), for another program on this
        host to map it (Triton's system shared memory); ``None`` unless the segments live in
        ``/dev/shm``, the directory POSIX shared-memory names resolve to on Linux."""
        directory = self._ctx.store.directory
        return f"/{self.segment}" if directory.resolve() == POSIX_SHM_DIR else None

    @property
    def buffer(self) -> memoryview:
        """The raw bytes of the allocation (``nbytes`` long)."""
        if self._buffer is None:
            raise AllocationStateError(f"allocation {self.segment} was released")
        return self._buffer

    @property
    def array(self) -> np.ndarray:
        """A numpy view of the memory, typed by :meth:`set_type_and_dimensions` (no copy)."""
        if self.dtype is None or self.shape is None:
            raise AllocationStateError(f"allocation {self.segment}: call set_type_and_dimensions first")
        if self._array is None:
            count = math.prod(self.shape)
            flat = np.frombuffer(self.buffer, dtype=self.dtype, count=count)
            # Every view of the array has ``flat`` as its base, so this finalizer keeps the hold
            # as long as any of them lives: a stage often keeps ``ctx.get(name).array`` only.
            weakref.finalize(flat, Hold.keep, self._hold)
            self._array = flat.reshape(self.shape)
        return self._array

    def publish(self, name: str) -> str:
        """Publish this allocation, its type and a copy of its metadata under ``name``.

        Returns ``name``, the handle a message carries to the next stage.

        Raises:
            AllocationStateError: no type set yet. AlreadyPublished: the name is taken.
            TypeError: the metadata is not JSON-serialisable.
        """
        if self.dtype is None or self.shape is None:
            raise AllocationStateError(f"allocation {self.segment}: set type and dimensions before publishing")
        _check_name(name)
        record = Publication(
            segment=self.segment, host=self.host, nbytes=self.nbytes, dtype=self.dtype.str,
            shape=self.shape, metadata=copy.deepcopy(self.metadata), created=time.time())
        self._ctx.registry.publish(self._ctx.job_id, name, record)
        return name

    def release(self) -> None:
        """Drop this object's view of the memory and its hold; the allocation stays with the job."""
        self._array = None
        self._buffer = None
        self._hold.close()

    def free(self) -> None:
        """Give the memory back for the whole job: every name pointing at it disappears."""
        self.release()
        self._ctx._free_segment(self.segment, self.capacity)


class FastIOContext:
    """The Fast I/O memory of one job, as seen from this process on this host.

    Args:
        client: a Redis connection (the registry lives there).
        job_id: the job whose allocations this context creates and resolves.
        config: host id, segment directory and limits; defaults to this host's hostname.
    """

    def __init__(self, client: redis.Redis, job_id: str, config: FastIOConfig | None = None) -> None:
        _check_name(job_id, what="job id")
        self.job_id = job_id
        self.config = config or FastIOConfig(host_id=_hostname())
        self.store = SegmentStore.for_config(self.config)
        self.registry = Registry(client, self.config)

    def create(self, nbytes: int) -> FastIOAllocation:
        """Allocate ``nbytes`` of shared memory for this job (visible to others once published)."""
        if not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
            raise AllocationStateError(f"nbytes={nbytes!r} must be a non-negative integer")
        nbytes = int(nbytes)
        want = size_class(nbytes)
        reused = self.registry.claim_pooled(self.job_id, want, want * 3 // 2)
        if reused is not None:
            segment, capacity = reused
            try:
                return FastIOAllocation(self, segment, nbytes)
            except SegmentError:  # the janitor unlinked it between the pool and us
                self.registry.release(self.job_id, segment, capacity, pool=False)
        segment, capacity = self.store.new_name(), want
        # Registered before the file exists, so the janitor never sees it as an orphan.
        self.registry.register(self.job_id, segment)
        self.store.create(segment, capacity)
        return FastIOAllocation(self, segment, nbytes)

    def get(self, name: str) -> FastIOAllocation:
        """A new allocation on the memory published as ``name``, with a copy of its metadata.

        Raises:
            AllocationNotFound: the job has no such publication.
            NotLocal: the memory is on another host.
            SegmentError: the memory was reclaimed although the name was still published.
        """
        record = self.registry.lookup(self.job_id, name)
        if record is None:
            raise AllocationNotFound(self.job_id, name)
        if record.host != self.config.host_id:
            raise NotLocal(self.job_id, name, record.host, self.config.host_id)
        alloc = FastIOAllocation(self, record.segment, record.nbytes)
        alloc.set_type_and_dimensions(np.dtype(record.dtype), record.shape)
        alloc.metadata = copy.deepcopy(record.metadata)
        return alloc

    def publish_array(self, array: np.ndarray, name: str, metadata: dict[str, Any] | None = None) -> str:
        """Copy ``array`` into new shared memory and publish it as ``name``; returns ``name``."""
        array = np.asarray(array)
        alloc = self.create(array.nbytes)
        alloc.set_type_and_dimensions(array.dtype, array.shape)
        np.copyto(alloc.array, array, casting="no")
        alloc.metadata = dict(metadata or {})
        return alloc.publish(name)

    def free_all(self) -> int:
        """Release everything the job holds on this host and forget the job; returns a count.

        Segments the job holds on other hosts lose their owner here and are reclaimed by
        those hosts' janitors; so are those a live process of this host still holds, once
        it lets go.
        """
        freed = 0
        for segment, host in self.registry.job_segments(self.job_id).items():
            if host == self.config.host_id:
                capacity = self._capacity(segment)
                self._free_segment(segment, capacity)
                freed += 1
        self.registry.forget_job(self.job_id)
        return freed

    def free_unpublished(self) -> int:
        """Free the job's allocations on this host that no name points at (what a process
        that died mid-stage had made: staging buffers, outputs not yet published); returns
        how many. Published memory, which later stages read, stays; so does memory a live
        process holds (an attempt thought dead that is still running)."""
        published = self.registry.published_segments(self.job_id)
        freed = 0
        for segment, host in self.registry.job_segments(self.job_id).items():
            if host == self.config.host_id and segment not in published and not self.store.is_held(segment):
                self._free_segment(segment, self._capacity(segment))
                freed += 1
        return freed

    def _capacity(self, segment: str) -> int:
        try:
            return self.store.path(segment).stat().st_size
        except FileNotFoundError:
            return 0

    def _free_segment(self, segment: str, capacity: int) -> None:
        # Memory another live process still holds (a stage of a cancelled job, still running)
        # is neither pooled, where the next job would share it with that process, nor
        # unlinked under it: it leaves the registry, and the janitor reclaims the file once
        # let go. This process's own holds end here.
        self.store.let_go(segment)
        held = self.store.is_held(segment)
        pooled = self.registry.release(self.job_id, segment, capacity, pool=capacity > 0 and not held)
        if not pooled and not held:
            self.store.unlink(segment)


def _check_name(name: str, what: str = "name") -> None:
    if not isinstance(name, str) or not name or len(name) > 200 or any(c in name for c in "\x00/:\n"):
        raise InvalidArgument(f"{what} {name!r}: a non-empty string of at most 200 characters without '/', ':'")


def _hostname() -> str:
    import socket

    return socket.gethostname()
