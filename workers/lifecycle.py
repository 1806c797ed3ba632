"""The life of a job, in one place.

``queues.pipelines.submit`` records a job, then queues its chain. From there:

1. each stage, as it starts, is recorded (:func:`stage_started`: stage, index, task, worker);
2. a stage delivered after its job ended is dropped (:func:`has_ended`; a message whose
   acknowledgement was lost comes back late), and what memory is left is freed;
3. the job ends through :func:`end_job`, whatever the path: its last stage succeeded, a stage
   failed, its worker was lost too often or its message is gone (:mod:`workers.recovery`),
   its FastIO lease expired (:mod:`workers.janitor`). Always in one order: **the job's memory
   is freed, then its final state recorded**, so a job seen ended holds no memory. The first
   end stands; later ones change nothing.
"""

from __future__ import annotations

import logging

from queues.errors import UnknownJob
from queues.jobs import DONE, FAILED
from workers.runtime import fastio_context, job_store

log = logging.getLogger(__name__)


def stage_started(job_id: str, stage: str, index: int, task_id: str, worker: str) -> None:
    job_store().stage_started(job_id, stage, index, task_id, worker)


def has_ended(job_id: str) -> bool:
    """True if the job is done or failed. An unknown job (expired, or a stage run outside the
    job store) has not ended: its stage runs."""
    try:
        return job_store().get(job_id).finished
    except UnknownJob:
        return False


def free_memory(job_id: str) -> None:
    """Free every FastIO allocation of the job. A failure is logged, never raised: the job's
    outcome stands, and the janitor reclaims what is left when the lease runs out."""
    try:
        fastio_context(job_id).free_all()
    except Exception:
        log.exception("job %s: freeing FastIO memory failed", job_id)


def end_job(job_id: str, state: str, **fields: str) -> bool:
    """End the job: free its memory, then record ``state`` (done or failed) with ``fields``
    (output; or stage and error). False if it had already ended."""
    free_memory(job_id)
    return job_store().end(job_id, state, **fields)


def job_done(job_id: str, output: str) -> bool:
    return end_job(job_id, DONE, output=output)


def job_failed(job_id: str, stage: str, error: str) -> bool:
    log.error("job %s failed in %s: %s", job_id, stage or "-", error)
    return end_job(job_id, FAILED, stage=stage, error=error)
