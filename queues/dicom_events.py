"""What the DICOM listener and its outbox have done, counted in Redis for the metrics:
associations accepted and rejected, instances stored, duplicates and refused, series
complete, jobs started, results sent, retries and dead letters (one hash per AE title)."""

from __future__ import annotations

import redis

EVENTS = ("associations", "rejected", "instances", "duplicates", "refused", "series_complete", "jobs_started",
          "results_sent", "send_retries", "dead_letters")


def events_key(namespace: str, ae_title: str) -> str:
    return f"{namespace}:dicom:{ae_title}:events"


def count_event(client: redis.Redis | redis.client.Pipeline, namespace: str, ae_title: str, event: str,
                times: int = 1) -> None:
    """``times`` more ``event`` (of :data:`EVENTS`); best effort: a count lost while Redis is
    away stops nothing. On a pipeline it is queued with the pipeline's other commands."""
    try:
        client.hincrby(events_key(namespace, ae_title), event, times)
    except redis.RedisError:
        pass


def event_counts(client: redis.Redis, namespace: str, ae_title: str) -> dict[str, int]:
    """Every event's count so far (0 for those that have not happened)."""
    raw = {k.decode(): int(v) for k, v in client.hgetall(events_key(namespace, ae_title)).items()}
    return {event: raw.get(event, 0) for event in EVENTS}
