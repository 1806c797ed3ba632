"""The FastIO registry in Redis: publications, leases, per-host pools of free segments.

Keys (``ns`` is the deployment namespace)::

    {ns}:fastio:job:{job}:pub     HASH  name    -> publication record (JSON)
    {ns}:fastio:job:{job}:segs    HASH  segment -> host           every segment the job holds
    {ns}:fastio:leases            ZSET  job     -> lease expiry (unix seconds)
    {ns}:fastio:host:{host}:live  HASH  segment -> job            segments in use on a host
    {ns}:fastio:host:{host}:pool  ZSET  segment -> size           free segments kept for reuse

A publication record is ``{segment, host, nbytes, dtype, shape, metadata, created}``.
Every multi-key change is one Lua script or one MULTI, so readers never see half of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from fastio.config import FastIOConfig
from fastio.errors import AlreadyPublished

# Move the smallest pooled segment sized within [lo, hi] to a job, in one step, so the
# janitor never sees it owned by nobody.
_CLAIM_POOLED = """
local pool, segs, live, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local hit = redis.call('ZRANGEBYSCORE', pool, ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', 0, 1)
if #hit == 0 then return false end
redis.call('ZREM', pool, hit[1])
redis.call('HSET', segs, hit[1], ARGV[3])
redis.call('HSET', live, hit[1], ARGV[4])
redis.call('ZADD', leases, ARGV[5], ARGV[4])
return {hit[1], hit[2]}
"""

# Drop a segment from its job and host; pool it if the pool stays within its limit.
# Returns 1 if pooled (the caller keeps the file), 0 if the caller must unlink it.
_RELEASE_SEGMENT = """
local pub, segs, live, pool = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local segment, size, limit, want_pool = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('HDEL', segs, segment)
redis.call('HDEL', live, segment)
local records = redis.call('HGETALL', pub)
for i = 1, #records, 2 do
  if cjson.decode(records[i + 1])['segment'] == segment then redis.call('HDEL', pub, records[i]) end
end
if want_pool ~= '1' then return 0 end
local total = 0
local pooled = redis.call('ZRANGE', pool, 0, -1, 'WITHSCORES')
for i = 2, #pooled, 2 do total = total + tonumber(pooled[i]) end
if total + size > limit then return 0 end
redis.call('ZADD', pool, size, segment)
return 1
"""


@dataclass(frozen=True)
class Publication:
    """What a name resolves to: a segment on a host, typed, with its metadata."""

    segment: str
    host: str
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    metadata: dict[str, Any]
    created: float

    def to_json(self) -> str:
        record = {**self.__dict__, "shape": list(self.shape)}
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Publication":
        record = json.loads(text)
        record["shape"] = tuple(record["shape"])
        return cls(**record)


class Registry:
    """Redis-side bookkeeping of one deployment. The Redis connection is passed in."""

    def __init__(self, client: redis.Redis, config: FastIOConfig) -> None:
        self.redis = client
        self.config = config
        ns = config.namespace
        self._leases = f"{ns}:fastio:leases"
        self._job_prefix = f"{ns}:fastio:job:"
        self._host_prefix = f"{ns}:fastio:host:"
        self._claim = client.register_script(_CLAIM_POOLED)
        self._release = client.register_script(_RELEASE_SEGMENT)

    # keys -------------------------------------------------------------------------------
    def pub_key(self, job_id: str) -> str:
        return f"{self._job_prefix}{job_id}:pub"

    def segs_key(self, job_id: str) -> str:
        return f"{self._job_prefix}{job_id}:segs"

    def live_key(self, host: str) -> str:
        return f"{self._host_prefix}{host}:live"

    def pool_key(self, host: str) -> str:
        return f"{self._host_prefix}{host}:pool"

    # allocations ------------------------------------------------------------------------
    def claim_pooled(self, job_id: str, lo: int, hi: int) -> tuple[str, int] | None:
        """Give ``job_id`` a free segment of this host sized within [lo, hi], or None."""
        host = self.config.host_id
        keys = [self.pool_key(host), self.segs_key(job_id), self.live_key(host), self._leases]
        args = [lo, hi, host, job_id, time.time() + self.config.lease_s]
        hit = self._claim(keys=keys, args=args)
        if not hit:
            return None
        name, size = hit
        return _text(name), int(float(size))

    def register(self, job_id: str, segment: str) -> None:
        """Record that ``job_id`` holds ``segment`` on this host, and renew its lease."""
        host = self.config.host_id
        with self.redis.pipeline(transaction=True) as p:
            p.hset(self.segs_key(job_id), segment, host)
            p.hset(self.live_key(host), segment, job_id)
            p.zadd(self._leases, {job_id: time.time() + self.config.lease_s})
            p.execute()

    def release(self, job_id: str, segment: str, size: int, pool: bool) -> bool:
        """Forget ``segment`` (and names pointing at it); True if it went to the pool."""
        host = self.config.host_id
        keys = [self.pub_key(job_id), self.segs_key(job_id), self.live_key(host), self.pool_key(host)]
        args = [segment, size, self.config.pool_limit_bytes, "1" if pool else "0"]
        return bool(self._release(keys=keys, args=args))

    def unpool(self, segment: str) -> bool:
        """Take ``segment`` out of this host's pool; False if it was not there (a job claimed it)."""
        return bool(self.redis.zrem(self.pool_key(self.config.host_id), segment))

    def pooled(self) -> dict[str, int]:
        """Free segments of this host: name → size."""
        pairs = self.redis.zrange(self.pool_key(self.config.host_id), 0, -1, withscores=True)
        return {_text(n): int(s) for n, s in pairs}

    def record_reclaimed(self, count: int) -> None:
        """Add ``count`` segments the janitor reclaimed on this host to its running total."""
        if count:
            self.redis.hincrby(f"{self.config.namespace}:fastio:reclaimed", self.config.host_id, count)

    def reclaimed(self) -> dict[str, int]:
        """Segments the janitor has reclaimed, per host, since the registry began."""
        raw = self.redis.hgetall(f"{self.config.namespace}:fastio:reclaimed")
        return {_text(k): int(v) for k, v in raw.items()}

    def live(self) -> dict[str, str]:
        """Segments in use on this host: name → job id."""
        return {_text(k): _text(v) for k, v in self.redis.hgetall(self.live_key(self.config.host_id)).items()}

    def job_segments(self, job_id: str) -> dict[str, str]:
        """Segments held by a job: name → host."""
        return {_text(k): _text(v) for k, v in self.redis.hgetall(self.segs_key(job_id)).items()}

    # publications -----------------------------------------------------------------------
    def publish(self, job_id: str, name: str, publication: Publication) -> None:
        """Make ``name`` resolve to ``publication``, atomically and only once.

        Raises:
            AlreadyPublished: the job already has a publication of that name.
        """
        with self.redis.pipeline(transaction=True) as p:
            p.hsetnx(self.pub_key(job_id), name, publication.to_json())
            p.zadd(self._leases, {job_id: time.time() + self.config.lease_s})
            created, _ = p.execute()
        if not created:
            raise AlreadyPublished(f"job {job_id!r} already published {name!r}; names are write-once")

    def published_segments(self, job_id: str) -> set[str]:
        """The segments that some publication of ``job_id`` points at."""
        return {Publication.from_json(text).segment for text in self.redis.hvals(self.pub_key(job_id))}

    def lookup(self, job_id: str, name: str) -> Publication | None:
        """The publication of ``name`` in ``job_id`` (renewing the job's lease), or None."""
        with self.redis.pipeline(transaction=True) as p:
            p.hget(self.pub_key(job_id), name)
            p.zadd(self._leases, {job_id: time.time() + self.config.lease_s}, xx=True)
            text, _ = p.execute()
        return None if text is None else Publication.from_json(text)

    # leases -----------------------------------------------------------------------------
    def has_lease(self, job_id: str) -> bool:
        expiry = self.redis.zscore(self._leases, job_id)
        return expiry is not None and expiry > time.time()

    def expired_jobs(self) -> list[str]:
        return [_text(j) for j in self.redis.zrangebyscore(self._leases, "-inf", time.time())]

    def forget_job(self, job_id: str) -> None:
        """Delete a job's publications, segment list and lease (segments are handled apart)."""
        with self.redis.pipeline(transaction=True) as p:
            p.delete(self.pub_key(job_id), self.segs_key(job_id))
            p.zrem(self._leases, job_id)
            p.execute()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
