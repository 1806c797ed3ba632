"""The life of a job, in one place.

``queues.pipelines.submit`` records a job, then queues its chain. From there:

1. each stage, as it starts, is recorded (:func:`stage_started`: stage, index, task, worker)
   and its deliveries counted: a stage whose process died is delivered again, after what
   the dead attempt had allocated is freed (:func:`free_dead_attempt`), at most
   ``CARINA_MAX_DELIVERIES`` times; then the job fails with the reason (:func:`too_many_deliveries`);
2. the job ends through :func:`end_job`, whatever the path: its last stage succeeded, a stage
   failed, its worker was lost too often or its message is gone (:mod:`workers.recovery`),
   its FastIO lease expired (:mod:`workers.janitor`), it was cancelled. Always in one order:
   **the end is noted, the job's memory is freed, its results moved into place (done) or
   removed (:mod:`workers.results`), then its final state recorded**, so a job seen ended
   holds no memory and no partial result. The first end stands; later ones change nothing;
3. a stage delivered after its job ended, or while it was ending, or once it was asked to be
   cancelled, is dropped (:func:`settle`; a message whose acknowledgement was lost comes back
   late, or the process that was ending the job died): an end under way or a cancel is
   completed, and what memory is left is freed. The cancel task (``queues.cancel``) and every
   janitor pass settle the jobs too, so a job ends even when no stage of it comes again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from queues.app import app
from queues.errors import UnknownJob
from queues.jobs import CANCELLED, DONE, FAILED
from queues.pipelines import CANCEL_TASK
from queues.settings import PRIORITIES, get_settings
from workers import results
from workers.runtime import fastio_context, job_store

log = logging.getLogger(__name__)


def stage_started(job_id: str, stage: str, index: int, task_id: str, worker: str, attempt: str,
                  restarts: int) -> int:
    """Record the stage under way; returns how many times ``attempt`` (one message of it) has
    now started: 1 the first time, more after its process died; 0 for a job the store does
    not know (expired, or a stage run outside the job store), or one that has ended;
    ``MOVED_PAST`` for a stage its job has gone beyond (a late delivery of a finished stage,
    or a message of a run before the job's last restart: ``restarts`` behind the record's)."""
    return job_store().stage_started(job_id, stage, index, task_id, worker, attempt, restarts)


def free_dead_attempt(job_id: str) -> None:
    """Free what an attempt that died had allocated and not published (staging buffers,
    outputs half made), before the stage runs again."""
    freed = fastio_context(job_id).free_unpublished()
    if freed:
        log.warning("job %s: freed %d allocation(s) of an attempt that died", job_id, freed)


def too_many_deliveries(job_id: str, stage: str, deliveries: int) -> bool:
    """Fail the job if ``stage`` has now started more than ``CARINA_MAX_DELIVERIES`` times;
    True if it did."""
    bound = get_settings().max_deliveries
    if deliveries <= bound:
        return False
    job_failed(job_id, stage, f"StageCrashed: {stage} started {deliveries - 1} times and its process died each "
                              f"time (CARINA_MAX_DELIVERIES={bound})")
    return True


def settle(job_id: str) -> bool:
    """True if the job has ended, after freeing what memory it still holds; or if it was
    ending or asked to be cancelled, after completing that end. False otherwise: its stage
    runs. An unknown job (expired, or a stage run outside the job store) has not ended."""
    try:
        status = job_store().get(job_id)
    except UnknownJob:
        return False
    if status.finished:
        free_memory(job_id)
        return True
    if status.ending:
        end_job(job_id, status.ending["state"], **status.ending["fields"])
        return True
    if status.cancel:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.cancel["at"]))
        end_job(job_id, CANCELLED, stage=status.stage, error=f"Cancelled by {status.cancel['by']} at {when}")
        log.warning("job %s cancelled by %s", job_id, status.cancel["by"])
        return True
    return False


MAX_CANCEL_HOPS = 2  # the memory may move while the cancel travels; it is not chased for ever


@app.task(name=CANCEL_TASK, acks_late=True)
def cancel(job_id: str, hops: int = 0) -> None:
    """End a job that was asked to be cancelled. ``queues.cancel`` sends this to any io
    worker; it is sent on to a worker of the host holding the job's memory, where that memory
    can be freed (the front door does not read the memory registry)."""
    settings = get_settings()
    holders = sorted(set(fastio_context(job_id).registry.job_segments(job_id).values()))
    if holders and settings.host_id not in holders and hops < MAX_CANCEL_HOPS:
        app.send_task(CANCEL_TASK, args=[job_id, hops + 1], queue=settings.host_queue("io", holders[0]),
                      priority=PRIORITIES["immediate"])
        return
    settle(job_id)


def free_memory(job_id: str) -> None:
    """Free every FastIO allocation of the job. A failure is logged, never raised: the job's
    outcome stands, and the janitor reclaims what is left when the lease runs out."""
    try:
        fastio_context(job_id).free_all()
    except Exception:
        log.exception("job %s: freeing FastIO memory failed", job_id)


def end_job(job_id: str, state: str, **fields: str) -> bool:
    """End the job: note the end, free its memory, move its results into place (done) or
    remove them (failed, cancelled), then record ``state`` with ``fields`` (output; or stage
    and error). False if it had already ended."""
    job_store().ending(job_id, state, **fields)
    free_memory(job_id)
    settle_results(job_id, state, fields.get("output", ""))
    return job_store().end(job_id, state, **fields)


def staging_dir(job_id: str, output: str) -> Path:
    """The folder a stage writes the job's results into (created, and noted in the job's
    record so that its end finds it); the job's end moves it to ``output``. A stage of a job
    the store does not know (run alone, by name) writes into ``output`` itself."""
    staging = results.staging_path(output, job_id)
    if not job_store().staging_started(job_id, str(staging)):
        staging = Path(output)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def settle_results(job_id: str, state: str, output: str) -> None:
    try:
        staging = job_store().get(job_id).staging
    except UnknownJob:
        return
    if not staging:
        return
    if state == DONE:
        results.publish(Path(staging), Path(output))
    else:
        results.discard(Path(staging))


def job_done(job_id: str, output: str) -> bool:
    return end_job(job_id, DONE, output=output)


def job_failed(job_id: str, stage: str, error: str) -> bool:
    log.error("job %s failed in %s: %s", job_id, stage or "-", error)
    return end_job(job_id, FAILED, stage=stage, error=error)
