"""Stages whose worker was lost: put back on their queue, so no job stays "running" for ever.

A stage is acknowledged late (after its work), so when a *pool process* dies Celery's parent
puts the message back at once. When the *whole worker* dies (SIGKILL, power, OOM-killer on
the parent), Redis keeps the message as unacknowledged until the visibility timeout, hours
away — Clara 0.8.1's known issue of jobs stuck running. Here:

- every worker's main process beats a heartbeat (:mod:`queues.presence`);
- a stage records its task id and its worker's node name in the job record as it starts;
- :func:`requeue_lost_stages` (the janitor of every worker, and ``carina janitor``) finds
  running jobs whose worker has no heartbeat and whose stage has not succeeded, and moves the
  stage's message from the broker's unacknowledged set back to the front of its queue, where
  any worker of that queue takes it; after ``max_requeues`` losses in one job it ends the job
  as failed with the reason instead (a stage that kills its worker every time).
"""

from __future__ import annotations

import logging

import redis
from celery import Celery

from queues.broker import restore_unacked, unacked_delivery_tag
from queues.presence import is_alive
from queues.settings import Settings
from workers.lifecycle import job_failed
from workers.runtime import job_store

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEUES = 3


def requeue_lost_stages(app: Celery, client: redis.Redis, settings: Settings,
                        max_requeues: int = DEFAULT_MAX_REQUEUES) -> list[str]:
    """Put back the stages of running jobs whose worker is gone; returns the jobs acted on."""
    jobs = job_store()
    acted = []
    for job_id in jobs.running():
        status = jobs.get(job_id)
        if not status.worker or is_alive(client, settings.namespace, status.worker):
            continue
        if app.AsyncResult(status.stage_task).state == "SUCCESS":
            continue  # it finished just before its worker died: the next stage is already queued
        lost = f"worker {status.worker} was lost during {status.stage}"
        tag = unacked_delivery_tag(client, status.stage_task)
        if status.requeues >= max_requeues:
            job_failed(job_id, status.stage, f"WorkerLost: {lost} ({status.requeues + 1} times)")
        elif tag is None:
            job_failed(job_id, status.stage, f"WorkerLost: {lost}; its message was not found to requeue")
        else:
            restore_unacked(app, tag)
            jobs.requeued(job_id, status.requeues + 1)
            log.warning("job %s: %s; the stage is back on its queue", job_id, lost)
        acted.append(job_id)
    return acted
