"""Everything Carina knows of kombu's Redis transport, in one place.

Celery hides the broker behind kombu, but three jobs need to look inside: recovery (a stage
whose whole worker died stays in kombu's ``unacked`` hash until the visibility timeout; we
find it by task id and put it back at the front of its queue), the search for a job's lost
message (is it anywhere?), and metrics (queue depths, summed over the per-priority lists
kombu keeps). kombu's layout, as of kombu 5:

- a queue ``q`` is the list ``q`` for priority 0 and ``q\\x06\\x16<p>`` for each other step
  ``p`` of ``priority_steps``; publishers ``LPUSH``, consumers ``BRPOP`` (the right end is
  the front);
- ``unacked`` hashes delivery tag → ``[message, exchange, routing key]`` for every message
  delivered and not yet acknowledged (``unacked_index`` scores them by delivery time). A
  consumer whose connection drops puts its unacknowledged messages back as it closes; with
  Redis down at that moment they stay here until the visibility timeout.

``tests/integration/test_broker.py`` holds this module to the real transport.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import redis
from celery import Celery

from queues.presence import seen_queues
from queues.settings import PRIORITIES, QUEUE_KINDS

UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = tuple(sorted(set(PRIORITIES.values())))


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, one per priority step."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def known_queues(client: redis.Redis, namespace: str) -> list[str]:
    """The shared queues of every kind, and every queue a worker heard from lately reads, sorted."""
    return sorted(set(QUEUE_KINDS) | seen_queues(client, namespace))


def queue_depths(client: redis.Redis, names: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each of the queues ``names``, every priority counted, in one round trip."""
    names = list(names)
    with client.pipeline(transaction=False) as p:
        for name in names:
            for key in priority_lists(name):
                p.llen(key)
        lengths = p.execute()
    steps = len(PRIORITY_STEPS)
    return {name: sum(lengths[i * steps:(i + 1) * steps]) for i, name in enumerate(names)}


def unacked_delivery_tag(client: redis.Redis, task_id: str) -> str | None:
    """The delivery tag under which Celery task ``task_id``'s message waits unacknowledged,
    or None (acknowledged, restored, or never delivered)."""
    delivered = unacked_deliveries(client).get(task_id)
    return delivered[0] if delivered else None


def unacked_deliveries(client: redis.Redis) -> dict[str, tuple[str, float]]:
    """Task id → (delivery tag, delivery time in epoch seconds) of every message delivered
    and not yet acknowledged."""
    delivered_at = {tag.decode(): score for tag, score in client.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True)}
    deliveries = {}
    for tag, raw in client.hscan_iter(UNACKED_KEY):
        tag = tag.decode()
        deliveries[_task_id(json.loads(raw)[0])] = (tag, delivered_at.get(tag, 0.0))
    deliveries.pop("", None)
    return deliveries


def _task_id(message: dict) -> str:
    """The Celery task id a kombu message carries ('' for none)."""
    return message.get("headers", {}).get("id", "")


def messages_held(client: redis.Redis, queues: Iterable[str]) -> set[str]:
    """The task ids of every message the broker holds for ``queues`` — waiting in their lists,
    at any priority, or delivered and not yet acknowledged. A message in neither is gone: a
    consumer's BRPOP took it off its list and the connection dropped before the reply (kombu
    records it as unacknowledged only once the reply is read)."""
    held = set(unacked_deliveries(client))
    for queue in queues:
        for key in priority_lists(queue):
            held |= {_task_id(json.loads(raw)) for raw in client.lrange(key, 0, -1)}
    held.discard("")
    return held


def restore_unacked(app: Celery, delivery_tag: str) -> None:
    """Move an unacknowledged message back to the front of its queue (at its priority), as
    kombu does for a consumer that closed cleanly."""
    with app.connection_for_write() as connection:
        connection.default_channel.qos.restore_by_tag(delivery_tag)
