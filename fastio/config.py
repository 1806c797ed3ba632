"""Configuration of the data plane, passed in by the caller (fastio reads no environment)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fastio.errors import InvalidArgument

POSIX_SHM_DIR = Path("/dev/shm")  # where shm_open names live on Linux
DEFAULT_SHM_DIR = POSIX_SHM_DIR
DEFAULT_NAMESPACE = "carina"
DEFAULT_LEASE_S = 6 * 3600
DEFAULT_POOL_LIMIT_BYTES = 4 * 2**30
DEFAULT_MAP_CACHE_BYTES = 8 * 2**30
DEFAULT_ORPHAN_GRACE_S = 60.0

_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class FastIOConfig:
    """Where segments live and how long they are kept.

    Attributes:
        host_id: this host's identity; a publication records it and ``get`` on another
            host raises :class:`~fastio.errors.NotLocal`.
        shm_dir: a tmpfs directory holding the segments (``/dev/shm`` is POSIX shm).
        namespace: prefix of every segment file and Redis key, so deployments sharing a
            host or a Redis never touch each other's memory.
        lease_s: seconds a job's allocations live without being touched; a job whose
            workers died is reclaimed by the janitor after this.
        pool_limit_bytes: bytes of freed segments kept per host for reuse (their pages are
            already faulted in, which makes a publish cost one memcpy).
        map_cache_bytes: bytes of mappings a process keeps open for reuse.
        orphan_grace_s: age below which an unregistered segment is not yet an orphan
            (it may be in the middle of its creation).
    """

    host_id: str
    shm_dir: Path = DEFAULT_SHM_DIR
    namespace: str = DEFAULT_NAMESPACE
    lease_s: float = DEFAULT_LEASE_S
    pool_limit_bytes: int = DEFAULT_POOL_LIMIT_BYTES
    map_cache_bytes: int = DEFAULT_MAP_CACHE_BYTES
    orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S

    def __post_init__(self) -> None:
        for field in ("host_id", "namespace"):
            value = getattr(self, field)
            if not _SAFE.match(value):
                raise InvalidArgument(f"FastIOConfig.{field}={value!r}: use letters, digits, '_', '.', '-'")
        if self.lease_s <= 0:
            raise InvalidArgument(f"FastIOConfig.lease_s={self.lease_s!r} must be > 0")
        if self.pool_limit_bytes < 0 or self.map_cache_bytes < 0:
            raise InvalidArgument("FastIOConfig pool and cache limits must be >= 0")
        object.__setattr__(self, "shm_dir", Path(self.shm_dir))

    @property
    def segment_prefix(self) -> str:
        """File-name prefix of this deployment's segments on this host."""
        return f"{self.namespace}-fastio-{self.host_id}-"
