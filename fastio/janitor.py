"""Reclaims memory whose owner is gone: expired jobs, ownerless and unregistered segments."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from fastio.config import FastIOConfig
from fastio.context import FastIOContext
from fastio.registry import Registry
from fastio.segments import SegmentStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JanitorReport:
    """What one sweep did on one host."""

    expired_jobs: tuple[str, ...] = ()  # ids of the jobs whose lease expired, their memory freed
    ownerless: int = 0
    orphans: int = 0
    stale_pool_entries: int = 0
    held: int = 0  # segments that looked reclaimable but a live process holds: left alone

    @property
    def reclaimed(self) -> int:
        return self.ownerless + self.orphans


def sweep(client: redis.Redis, config: FastIOConfig) -> JanitorReport:
    """One pass over this host's segments; safe to run from many processes at once.

    1. Jobs whose lease expired are freed (their workers died or forgot to free them).
    2. Segments in use on this host by a job that has no lease any more are unlinked
       (their job was freed from another host, or expired).
    3. Segment files that the registry does not know, older than the grace period, are
       unlinked (a process died between creating and registering, or the registry was lost).
    4. Pool entries whose file has disappeared are dropped.

    A segment that a live process of this host holds (it has an allocation on it) is never
    unlinked in 2 or 3: it is counted in ``held`` and looked at again next pass.
    """
    registry = Registry(client, config)
    store = SegmentStore.for_config(config)
    expired = registry.expired_jobs()
    for job_id in expired:
        log.warning("fastio lease of job %s expired; freeing its memory", job_id)
        FastIOContext(client, job_id, config).free_all()

    ownerless = held = 0
    for segment, job_id in registry.live().items():
        if registry.has_lease(job_id):
            continue
        if store.reclaim(segment):
            registry.release(job_id, segment, 0, pool=False)
            ownerless += 1
        else:
            held += 1

    files = store.list()
    known = set(registry.live()) | set(registry.pooled())
    orphans = 0
    for segment in files.keys() - known:
        try:
            old_enough = store.age(segment) >= config.orphan_grace_s
        except FileNotFoundError:
            continue
        if not old_enough or segment in registry.live():
            continue
        if store.reclaim(segment):
            orphans += 1
        else:
            held += 1

    stale = [s for s in registry.pooled() if s not in files]
    for segment in stale:
        registry.unpool(segment)
    report = JanitorReport(tuple(expired), ownerless, orphans, len(stale), held)
    registry.record_reclaimed(report.reclaimed)
    if report.reclaimed or report.expired_jobs:
        log.info("fastio janitor on %s: %s", config.host_id, report)
    return report


def drain_pool(client: redis.Redis, config: FastIOConfig) -> int:
    """Unlink every free (pooled) segment of this host; returns how many. For shutdown, and safe
    beside running jobs: a segment a job claims from the pool after the pool was listed is the
    job's, and is left alone."""
    registry = Registry(client, config)
    store = SegmentStore.for_config(config)
    drained = 0
    for segment in registry.pooled():
        if registry.unpool(segment):
            store.unlink(segment)
            drained += 1
    return drained
