"""A system shared-memory region cut into slots, each holding one request's input and output.

Triton's system shared-memory extension lets a server on the same host read a request's input
from, and write its output into, memory both processes map; the request then carries only the
region's name and byte offsets. A :class:`SlotPool` cuts the region into equal slots (one per
request in flight), each starting on a :data:`SLOT_ALIGNMENT` boundary: the input at the slot's
start, the output on the next boundary after it, taking the rest of the slot.

The pool registers the region with the server on first use (through a callable of the caller:
it knows the server) and stops for good once told to (:meth:`SlotPool.stop`): the server
refused or lost the region, or the predictor was closed. Whatever it cannot place goes over
HTTP bodies instead; the pool never frees the region's memory.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import uuid
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

SLOT_ALIGNMENT = 64  # bytes: every tensor in the shared region starts on a cache line


class SharedRegion(NamedTuple):
    """Memory the client and a server on the same host both map: a POSIX shared-memory object.

    ``key`` is its ``shm_open`` name ("/name", a file in /dev/shm on Linux) and ``buffer`` a
    writable view of it from its first byte; the predictor never frees it.
    """

    key: str
    buffer: memoryview


class Placement(NamedTuple):
    """Where one request's tensors lie in the registered region (byte offsets from its start)."""

    region_name: str  # the region's name on the server
    slot: int
    input_offset: int
    input_nbytes: int
    output_offset: int
    output_nbytes: int  # the room for the output: the rest of the slot


class SlotPool:
    """``count`` slots of ``region`` (none without one), shared by threads.

    ``slot_bytes`` is each slot's size; ``name`` the region's name on the server while it is
    registered, else None. Pickled, a pool is an empty one: a copy elsewhere sends HTTP bodies,
    the region and its registration stay with this one.
    """

    def __init__(self, region: SharedRegion | None = None, count: int = 1) -> None:
        self.region = region
        self.slot_bytes = 0 if region is None else _align_down(len(region.buffer) // count)
        self.name: str | None = None
        self._stopped = region is None
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(count if region is not None else 0):
            self._free.put(slot)
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple:
        return SlotPool, ()

    def take(self, chunk: np.ndarray, output_nbytes: int | None,
             register: Callable[[str, SharedRegion], bool]) -> Placement | None:
        """A free slot holding a copy of ``chunk`` (C-contiguous), or None: no region, the pool
        is stopped, the server refuses the region, ``chunk`` and ``output_nbytes`` (None:
        unknown) do not fit a slot, or every slot is in flight.

        ``register(name, region)`` is called once, on the first chunk that fits, to register
        the region with the server under ``name``; it returns False where the server refuses
        it, which stops the pool. What it raises propagates and leaves the region unregistered.
        """
        if self._stopped or output_nbytes is None or not self._fits(chunk.nbytes, output_nbytes):
            return None
        name = self._registered(register)
        if name is None:
            return None
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            return None
        start = slot * self.slot_bytes
        output_start = start + _align_up(chunk.nbytes)
        assert self.region is not None
        np.frombuffer(self.region.buffer, np.uint8, chunk.nbytes, start)[:] = chunk.reshape(-1).view(np.uint8)
        return Placement(name, slot, start, chunk.nbytes, output_start, start + self.slot_bytes - output_start)

    def give(self, placement: Placement | None) -> None:
        """Give back the slot of ``placement`` (None: nothing to give back)."""
        if placement is not None:
            self._free.put(placement.slot)

    def output(self, placement: Placement, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The output the server wrote at ``placement``: a view of the region of ``shape`` and
        ``dtype``, valid until its slot is given back."""
        assert self.region is not None
        return np.frombuffer(self.region.buffer, dtype, math.prod(shape), placement.output_offset).reshape(shape)

    def stop(self) -> str | None:
        """Place no more chunks; returns the name the region was registered under, if it was.
        Slots in flight stay readable until given back."""
        with self._lock:
            name, self.name, self._stopped = self.name, None, True
        return name

    def _fits(self, input_nbytes: int, output_nbytes: int) -> bool:
        return _align_up(input_nbytes) + output_nbytes <= self.slot_bytes

    def _registered(self, register: Callable[[str, SharedRegion], bool]) -> str | None:
        with self._lock:
            if self.name is None and not self._stopped:
                assert self.region is not None
                name = f"carina-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                if register(name, self.region):
                    self.name = name
                else:
                    self._stopped = True
            return self.name


def _align_up(nbytes: int) -> int:
    return -(-nbytes // SLOT_ALIGNMENT) * SLOT_ALIGNMENT


def _align_down(nbytes: int) -> int:
    return nbytes // SLOT_ALIGNMENT * SLOT_ALIGNMENT
