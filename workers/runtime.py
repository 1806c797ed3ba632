"""A worker process's connections: one Redis pool (created after fork, on first use), the
job store and FastIO contexts on it."""

from __future__ import annotations

from functools import lru_cache

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from fastio import FastIOContext
from queues.connection import connect
from queues.jobs import JobStore
from queues.settings import get_settings

# Backoff 0.25, 0.5, ... 4 s: eighteen retries wait out about a minute (REDIS_OUTAGE_S).
REDIS_RETRIES, REDIS_BACKOFF_CAP_S = 18, 4.0


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    """This process's connection pool. Commands are retried with backoff through about a
    minute of Redis being away (a restart, a failover)."""
    return connect(get_settings(),
                                retry=Retry(ExponentialBackoff(cap=REDIS_BACKOFF_CAP_S, base=0.25), REDIS_RETRIES),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def job_store() -> JobStore:
    settings = get_settings()
    return JobStore(redis_client(), settings.namespace, settings.job_ttl_s)


def fastio_context(job_id: str) -> FastIOContext:
    return FastIOContext(redis_client(), job_id, get_settings().fastio_config())
