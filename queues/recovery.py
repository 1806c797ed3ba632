"""Stages whose worker was lost: put back on their queue, so no job stays "running" for ever.

A stage is acknowledged late (after its work), so when a *pool process* dies Celery's parent
puts the message back at once. When the *whole worker* dies (SIGKILL, power, OOM-killer on
the parent), Redis keeps the message as unacknowledged until the visibility timeout, hours
away — Clara 0.8.1's known issue of jobs stuck running. Here:

- every worker's main process keeps a heartbeat key alive (:func:`beat`, TTL three beats);
- a stage records its task id and its worker's node name in the job record as it starts;
- :func:`requeue_lost_stages` (the janitor of every worker, and ``carina janitor``) finds
  running jobs whose worker has no heartbeat and whose stage has not succeeded, and moves the
  stage's message from Redis' unacknowledged set back to the front of its queue, where any
  worker of that queue takes it; after ``max_requeues`` losses in one job it fails the job
  with the reason instead (a stage that kills its worker every time).

Node names are unique per worker start (``carina worker`` adds a random part), so a worker
restarted under the same host id is not mistaken for the one that died.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from celery import Celery

from queues.jobs import JobStore
from queues.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEUES = 3
UNACKED_KEY = "unacked"  # kombu's Redis transport: delivery tag → [message, exchange, routing key]
HEARTBEATS_PER_TTL = 3


def heartbeat_key(namespace: str, node: str) -> str:
    return f"{namespace}:worker:{node}"


def beat(client: redis.Redis, namespace: str, node: str, interval_s: float) -> None:
    """Say that worker ``node`` is alive for the next ``HEARTBEATS_PER_TTL`` intervals."""
    client.set(heartbeat_key(namespace, node), time.time(), px=int(HEARTBEATS_PER_TTL * interval_s * 1000))


def _unacked_tag(client: redis.Redis, task_id: str) -> str | None:
    """The delivery tag under which ``task_id``'s message waits unacknowledged, if it does."""
    for tag, raw in client.hscan_iter(UNACKED_KEY):
        message = json.loads(raw)[0]
        if message.get("headers", {}).get("id") == task_id:
            return tag.decode()
    return None


def requeue_lost_stages(app: Celery, client: redis.Redis, settings: Settings,
                        max_requeues: int = DEFAULT_MAX_REQUEUES) -> list[str]:
    """Put back the stages of running jobs whose worker is gone; returns the jobs acted on."""
    jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
    acted = []
    for job_id in jobs.running():
        status = jobs.get(job_id)
        if not status.worker or client.exists(heartbeat_key(settings.namespace, status.worker)):
            continue
        if app.AsyncResult(status.stage_task).state == "SUCCESS":
            continue  # it finished just before its worker died: the next stage is already queued
        lost = f"worker {status.worker} was lost during {status.stage}"
        if status.requeues >= max_requeues:
            log.error("job %s: %s, %d times: failing it", job_id, lost, status.requeues + 1)
            jobs.failed(job_id, status.stage, f"WorkerLost: {lost} ({status.requeues + 1} times)")
            acted.append(job_id)
            continue
        tag = _unacked_tag(client, status.stage_task)
        if tag is None:
            log.error("job %s: %s and its message is gone: failing it", job_id, lost)
            jobs.failed(job_id, status.stage, f"WorkerLost: {lost}; its message was not found to requeue")
        else:
            with app.connection_for_write() as connection:
                connection.default_channel.qos.restore_by_tag(tag)  # to the front: rpush
            jobs.requeued(job_id, status.requeues + 1)
            log.warning("job %s: %s; the stage is back on its queue", job_id, lost)
        acted.append(job_id)
    return acted
