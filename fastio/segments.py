"""Named shared-memory segments: files in a tmpfs directory, mapped with ``mmap``.

Why not :mod:`multiprocessing.shared_memory`: in Python 3.11 every process that attaches
registers the segment with its resource tracker, which unlinks it when that process exits,
so a stage that merely reads a volume would destroy it for the next stage. Plain files under
``/dev/shm`` (that is what POSIX ``shm_open`` creates) opened with ``os.open`` have no such
tracker; their lifetime is the registry's business alone.

Why a mapping cache: the first touch of a tmpfs page costs a page fault, about ten times
slower than copying into it. Segments are pooled and reused (see the registry), and each
process keeps its mappings of them, so a steady-state publish is one memcpy into memory
that is already mapped and faulted in.

Why holds: the janitor reclaims segments whose owner looks gone (a lease expired, a registry
lost with a Redis that kept no data), but a process may still be working on one. Every
allocation takes a shared ``flock`` on its segment for as long as it (or its array) lives;
the janitor unlinks only what it can lock exclusively. The kernel drops the locks of a
process that dies, so a dead process protects nothing.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastio.config import FastIOConfig
from fastio.errors import InvalidArgument, SegmentError

PAGE = mmap.PAGESIZE
MIN_SEGMENT_BYTES = 64 * 1024


def size_class(nbytes: int) -> int:
    """Round ``nbytes`` up to the next of 2**k or 1.5 * 2**k (at least 64 KiB).

    Coarse classes make freed segments reusable by the next volume of a similar size while
    wasting at most a third of a segment.
    """
    if nbytes < 0:
        raise InvalidArgument(f"nbytes={nbytes} must be >= 0")
    if nbytes <= MIN_SEGMENT_BYTES:
        return MIN_SEGMENT_BYTES
    power = 1 << (nbytes - 1).bit_length()
    three_quarters = power // 2 + power // 4
    return three_quarters if nbytes <= three_quarters else power


class Hold:
    """A descriptor carrying a shared lock on a segment (see :meth:`SegmentStore.hold`),
    closed at :meth:`close` or when the last reference to this object goes."""

    def __init__(self, fd: int) -> None:
        self._close = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._close()

    @staticmethod
    def keep(hold: "Hold") -> None:
        """Nothing: a finalizer's argument, so that the hold lives as long as the finalized object."""


@dataclass
class _Mapping:
    fd: int
    map: mmap.mmap
    size: int


class SegmentStore:
    """Creates, maps and unlinks this deployment's segments on this host.

    One store per process and configuration (see :meth:`for_config`); it is thread-safe.
    Mappings are cached up to ``config.map_cache_bytes``; a cached mapping whose file was
    unlinked is dropped on the next call, so the store never pins freed memory for long.
    """

    _instances: dict[tuple[int, Path, str], "SegmentStore"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, config: FastIOConfig) -> None:
        self.config = config
        self.directory = config.shm_dir
        self.prefix = config.segment_prefix
        self._cache: OrderedDict[str, _Mapping] = OrderedDict()
        self._holds: dict[str, weakref.WeakSet[Hold]] = {}
        self._cached_bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, config: FastIOConfig) -> "SegmentStore":
        """The store shared by this process for ``config`` (a forked child gets its own)."""
        key = (os.getpid(), config.shm_dir, config.segment_prefix)
        with cls._instances_lock:
            store = cls._instances.get(key)
            if store is None or store.config != config:
                store = cls._instances[key] = cls(config)
            return store

    def new_name(self) -> str:
        """A fresh segment name: the prefix (deployment and host) and a random suffix."""
        return f"{self.prefix}{uuid.uuid4().hex}"

    def path(self, name: str) -> Path:
        if not name.startswith(self.prefix) or "/" in name:
            raise SegmentError(f"segment {name!r} does not belong to {self.prefix!r}")
        return self.directory / name

    def create(self, name: str, size: int) -> None:
        """Create segment ``name`` of ``size`` bytes, mode 0600; never reuses an existing file."""
        path = self.path(name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError as e:
            raise SegmentError(f"segment {name!r} already exists") from e
        except OSError as e:
            raise SegmentError(f"cannot create segment {name!r} in {self.directory}: {e}") from e
        try:
            os.fchmod(fd, 0o600)  # the umask can only narrow it; say it anyway
            os.ftruncate(fd, size)
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            raise SegmentError(f"cannot size segment {name!r} to {size} bytes: {e}") from e
        self._remember(name, fd, size)

    def map(self, name: str, size: int) -> mmap.mmap:
        """A shared, writable mapping of segment ``name`` (at least ``size`` bytes).

        Raises:
            SegmentError: the file is gone, or smaller than ``size``.
        """
        with self._lock:
            self._drop_unlinked()
            cached = self._cache.get(name)
            if cached is not None:
                self._cache.move_to_end(name)
                if cached.size >= size:
                    return cached.map
        try:
            fd = os.open(self.path(name), os.O_RDWR)
        except FileNotFoundError as e:
            raise SegmentError(f"segment {name!r} no longer exists (freed, or reclaimed by the janitor)") from e
        actual = os.fstat(fd).st_size
        if actual < size:
            os.close(fd)
            raise SegmentError(f"segment {name!r} holds {actual} bytes, {size} expected")
        return self._remember(name, fd, actual).map

    def hold(self, name: str) -> "Hold":
        """Take a shared hold on segment ``name`` for this process, until the hold is closed
        or collected (or :meth:`let_go`); the kernel drops it if the process dies.

        Raises:
            SegmentError: the segment is gone (freed, or reclaimed by the janitor).
        """
        try:
            fd = os.open(self.path(name), os.O_RDONLY)
        except FileNotFoundError as e:
            raise SegmentError(f"segment {name!r} no longer exists (freed, or reclaimed by the janitor)") from e
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a janitor is unlinking it
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            raise SegmentError(f"segment {name!r} no longer exists (reclaimed by the janitor)")
        hold = Hold(fd)
        with self._lock:
            self._holds.setdefault(name, weakref.WeakSet()).add(hold)
        return hold

    def let_go(self, name: str) -> None:
        """Close this process's holds on segment ``name``: its memory is being freed, and
        whatever here still views it (a failed stage's frames) has no claim left."""
        with self._lock:
            holds = list(self._holds.pop(name, ()))
        for hold in holds:
            hold.close()

    def is_held(self, name: str) -> bool:
        """True if a live process holds segment ``name`` (see :meth:`hold`)."""
        return not self._with_exclusive_lock(name, lambda: None)

    def reclaim(self, name: str) -> bool:
        """Unlink segment ``name`` unless a live process holds it; True if it is gone now."""
        return self._with_exclusive_lock(name, lambda: self.unlink(name))

    def unlink(self, name: str) -> None:
        """Remove the segment's name; memory goes back to the system once no one maps it."""
        with self._lock:
            self._forget(name)
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def list(self) -> dict[str, tuple[int, float]]:
        """This deployment's segments on this host: name → (size in bytes, ctime)."""
        found: dict[str, tuple[int, float]] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            if not entry.name.startswith(self.prefix):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[entry.name] = (st.st_size, st.st_ctime)
        return found

    def age(self, name: str) -> float:
        """Seconds since the segment's inode last changed (creation or resize)."""
        return time.time() - os.stat(self.path(name)).st_ctime

    def _with_exclusive_lock(self, name: str, action: Callable[[], None]) -> bool:
        """Run ``action`` under an exclusive lock of the segment; False (action not run) if a
        hold stands in the way. A segment already gone counts as locked."""
        try:
            fd = os.open(self.path(name), os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        else:
            action()
            return True
        finally:
            os.close(fd)

    def _remember(self, name: str, fd: int, size: int) -> _Mapping:
        # MAP_POPULATE maps every page now, in one call, instead of one fault per page later.
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        entry = _Mapping(fd, mapped, size)
        with self._lock:
            self._forget(name)
            self._cache[name] = entry
            self._cached_bytes += size
            while self._cached_bytes > self.config.map_cache_bytes and len(self._cache) > 1:
                self._forget(next(iter(self._cache)))
        return entry

    def _forget(self, name: str) -> None:
        entry = self._cache.pop(name, None)
        if entry is not None:
            self._cached_bytes -= entry.size
            os.close(entry.fd)
            # The mmap itself is not closed: numpy views of it may still be alive, and it
            # is unmapped when the last of them goes.

    def _drop_unlinked(self) -> None:
        for name in [n for n, e in self._cache.items() if os.fstat(e.fd).st_nlink == 0]:
            self._forget(name)
