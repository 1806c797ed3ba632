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

A stage put back on a host's own queue waits for that host, where the job's memory is. When
no worker of the host has beaten for ``CARINA_HOST_LOST_S``, the host is taken as lost for
good: :func:`restart_jobs_of_lost_hosts` starts its jobs again from their input on the shared
queues, where any host takes them (a job whose input only the lost host saw then fails with
that reason). Messages of the run before a restart are dropped when they start (the job
record counts restarts); the lost host's segments are reclaimed by its own janitor if it
comes back.

A message can also be lost by the broker itself: kombu's consumer takes a message off its
list with BRPOP and records it as unacknowledged only once the reply is read, so a
connection that drops in between (Redis restarted at that instant) loses it. The job record
names the message each job waits for (its next stage's task id, noted before it is sent);
:func:`restart_jobs_whose_message_was_lost` starts again from its input, like a lost host's,
a job that has waited ``CARINA_LOST_MESSAGE_S`` for a message the broker holds nowhere.

And a message can be stranded: delivered to a consumer whose connection then dropped, it
stays unacknowledged when kombu cannot put it back (Redis was down as the consumer closed),
and no worker runs it until the visibility timeout.
:func:`restore_stranded_messages` puts it back on its queue when its stage has not started
``CARINA_LOST_MESSAGE_S`` after its delivery and no live worker, asked, holds it.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery

from fastio.registry import Registry
from queues.broker import known_queues, messages_held, restore_unacked, unacked_deliveries, unacked_delivery_tag
from queues.errors import UnknownJob
from queues.jobs import JobStatus
from queues.pipelines import queue_restart
from queues.presence import is_alive, live_workers, silent_for
from queues.settings import QUEUE_KINDS, Settings
from workers.lifecycle import job_failed
from workers.runtime import fastio_context, job_store

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEUES = 3
LOOK_AGAIN_S = 1.0  # a message is off its list and not yet unacknowledged for an instant
ASK_WORKERS_S = 2.0  # how long to wait for every live worker to say which messages it holds


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


def restart_jobs_of_lost_hosts(app: Celery, client: redis.Redis, settings: Settings) -> list[str]:
    """Start again from their input, on any host, the jobs under way whose memory is on a
    lost host or that were submitted to one; a job that has started again
    ``CARINA_MAX_RESTARTS`` times fails instead. Returns the jobs acted on."""
    jobs = job_store()
    registry = Registry(client, settings.fastio_config())
    silence: dict[str, float | None] = {}
    acted = []
    for status in jobs.active_statuses():
        job_id = status.job_id
        hosts = set(registry.job_segments(job_id).values()) | ({status.host} if status.host else set())
        hosts.discard(settings.host_id)  # this one is alive: it runs this pass
        for host in hosts - silence.keys():
            silence[host] = silent_for(client, settings.namespace, host)
        lost = sorted(h for h in hosts if (silence[h] or 0.0) > settings.host_lost_s)
        if lost:
            _start_again(app, settings, status, "HostLost", f"host {lost[0]} was lost (no worker heard from for "
                                                            f"{silence[lost[0]]:.0f} s; CARINA_HOST_LOST_S="
                                                            f"{settings.host_lost_s:g})")
            acted.append(job_id)
    return acted


def _waits_for_lost_message(status: JobStatus, now: float, settings: Settings) -> bool:
    """The job has waited longer than CARINA_LOST_MESSAGE_S for a stage that has not started."""
    return (not status.finished and not status.cancel and bool(status.awaiting_task)
            and status.stage_index < status.awaiting_index and now - status.awaiting_since > settings.lost_message_s)


def _awaited_stage(status: JobStatus) -> str:
    """The name of the stage whose message the job waits for ('?' past its stages)."""
    return status.stages[status.awaiting_index - 1] if status.awaiting_index <= len(status.stages) else "?"


def restart_jobs_whose_message_was_lost(app: Celery, client: redis.Redis, settings: Settings) -> list[str]:
    """Start again from their input the jobs that have waited ``CARINA_LOST_MESSAGE_S`` for
    their next stage while the broker holds its message nowhere (not queued, not delivered):
    looked for twice, :data:`LOOK_AGAIN_S` apart. Returns the jobs acted on."""
    jobs = job_store()
    waiting = [s for s in jobs.active_statuses() if _waits_for_lost_message(s, time.time(), settings)]
    if not waiting:
        return []
    queues = set(known_queues(client, settings.namespace))
    queues |= {settings.host_queue(kind, s.host) for s in waiting if s.host for kind in QUEUE_KINDS}
    missing = [s for s in waiting if s.awaiting_task not in messages_held(client, queues)]
    if not missing:
        return []
    time.sleep(LOOK_AGAIN_S)
    held = messages_held(client, queues)
    acted = []
    for status in missing:
        try:
            now = jobs.get(status.job_id)
        except UnknownJob:
            continue
        if (now.awaiting_task == status.awaiting_task and now.awaiting_task not in held
                and _waits_for_lost_message(now, time.time(), settings)):
            _start_again(app, settings, now, "MessageLost",
                         f"the message of its stage {_awaited_stage(now)} was lost by the broker (not queued nor delivered "
                         f"{time.time() - now.awaiting_since:.0f} s after it was sent; CARINA_LOST_MESSAGE_S="
                         f"{settings.lost_message_s:g})")
            acted.append(now.job_id)
    return acted


def restore_stranded_messages(app: Celery, client: redis.Redis, settings: Settings,
                              max_requeues: int = DEFAULT_MAX_REQUEUES) -> list[str]:
    """Put back on its queue the next stage's message of each job that has waited
    ``CARINA_LOST_MESSAGE_S`` for it, when the broker has held it unacknowledged for as long
    and none of the live workers holds it (each is asked; with one silent nothing is done,
    as a stage run twice would be worse than a pass's delay). After ``max_requeues`` in one
    job, the job fails with the reason instead. Returns the jobs acted on."""
    now = time.time()
    waiting = [s for s in job_store().active_statuses() if _waits_for_lost_message(s, now, settings)]
    if not waiting:
        return []
    delivered = unacked_deliveries(client)
    stranded = [s for s in waiting if s.awaiting_task in delivered
                and now - delivered[s.awaiting_task][1] > settings.lost_message_s]
    if not stranded:
        return []
    held = _held_by_live_workers(app, client, settings)
    if held is None:
        return []
    acted = []
    for status in stranded:
        if status.awaiting_task in held:
            continue
        why = (f"the message of its stage {_awaited_stage(status)} was delivered {now - delivered[status.awaiting_task][1]:.0f} s ago "
               "to a consumer that no longer holds it (its connection dropped while Redis was down)")
        if status.requeues >= max_requeues:
            job_failed(status.job_id, status.stage, f"MessageStranded: {why} ({status.requeues + 1} times)")
        else:
            restore_unacked(app, delivered[status.awaiting_task][0])
            job_store().requeued(status.job_id, status.requeues + 1)
            log.warning("job %s: %s; back on its queue", status.job_id, why)
        acted.append(status.job_id)
    return acted


def _held_by_live_workers(app: Celery, client: redis.Redis, settings: Settings) -> set[str] | None:
    """The task ids every live worker says it runs, holds reserved or holds for later (a
    countdown); None when one of them did not answer within :data:`ASK_WORKERS_S`."""
    nodes = {w.node for w in live_workers(client, settings.namespace)}
    if not nodes:
        return set()
    ask = app.control.inspect(destination=sorted(nodes), timeout=ASK_WORKERS_S)
    active, reserved, scheduled = ask.active() or {}, ask.reserved() or {}, ask.scheduled() or {}
    if not nodes <= active.keys() & reserved.keys() & scheduled.keys():
        return None
    held = {task["id"] for answers in (active, reserved) for tasks in answers.values() for task in tasks}
    return held | {entry["request"]["id"] for entries in scheduled.values() for entry in entries}


def _start_again(app: Celery, settings: Settings, status: JobStatus, kind: str, why: str) -> None:
    """Start the job again from its input on the shared queues, as restart number
    ``restarts + 1``; past CARINA_MAX_RESTARTS it fails, with ``kind: why`` as the reason."""
    if status.restarts >= settings.max_restarts:
        job_failed(status.job_id, status.stage, f"{kind}: {why}; the job had started again {status.restarts} "
                                                f"times (CARINA_MAX_RESTARTS={settings.max_restarts})")
    elif not status.origin:
        job_failed(status.job_id, status.stage, f"{kind}: {why}; the job has no first payload to start "
                                                "again from (submitted by an older version)")
    elif job_store().restart(status.job_id, status.restarts):  # another host's janitor may be first
        fastio_context(status.job_id).free_all()
        queue_restart(app, settings, job_store(), status)
        log.warning("job %s: %s; started again from its input (restart %d)", status.job_id, why,
                    status.restarts + 1)
