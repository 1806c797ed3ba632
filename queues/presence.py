"""Which workers are alive, and which queues they read.

Each worker's main process beats (:func:`beat`) every ``CARINA_WORKER_HEARTBEAT_S``: one field
of the hash ``<ns>:workers``, node name → ``{"host": host id, "queues": [...], "kinds": [the
stage kinds it registers], "beat": time, "ttl": seconds}``.
A worker is alive while its last beat is younger than its ttl (three beats). The front door
reads it to warn of a job waiting on a queue nobody reads; recovery (``workers.recovery``),
to find the stages of a worker that was lost and the hosts gone for good; metrics, to find
the per-host queues.

Node names are unique per worker start (``carina worker`` adds a random part), so a worker
restarted under the same host id is not mistaken for the one that died.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

HEARTBEATS_PER_TTL = 3
FORGOTTEN_AFTER_S = 24 * 3600  # a worker silent this long leaves the hash


@dataclass(frozen=True)
class Worker:
    node: str
    host: str
    queues: tuple[str, ...]
    beat: float
    ttl_s: float
    kinds: frozenset[str] | None = None  # the stage kinds it runs; None from a worker that does not say

    def reads(self, queue_kind: str) -> bool:
        """Whether it reads a queue of ``queue_kind`` (io, cpu, gpu), the shared one or a host's."""
        return any(q.split(".", 1)[0] == queue_kind for q in self.queues)

    def runs(self, kind: str) -> bool:
        """Whether it registers the stage kind ``kind`` (assumed of a worker that does not say)."""
        return self.kinds is None or kind in self.kinds

    def alive(self, now: float) -> bool:
        return now - self.beat < self.ttl_s


def workers_key(namespace: str) -> str:
    return f"{namespace}:workers"


def beat(client: redis.Redis, namespace: str, node: str, host: str, queues: Iterable[str],
         interval_s: float, kinds: Iterable[str] = ()) -> None:
    """Say that worker ``node`` of ``host``, reading ``queues`` and running the stage kinds
    ``kinds``, is alive for the next three intervals."""
    record = {"host": host, "queues": sorted(queues), "kinds": sorted(kinds), "beat": time.time(),
              "ttl": HEARTBEATS_PER_TTL * interval_s}
    client.hset(workers_key(namespace), node, json.dumps(record))


def workers(client: redis.Redis, namespace: str) -> dict[str, Worker]:
    """Every worker heard from in the last day, alive or not, by node name; older ones are
    dropped from the hash."""
    now, found, forgotten = time.time(), {}, []
    for node, raw in client.hgetall(workers_key(namespace)).items():
        worker = _parse(node.decode(), raw)
        if now - worker.beat > FORGOTTEN_AFTER_S:
            forgotten.append(node)
        else:
            found[worker.node] = worker
    if forgotten:
        client.hdel(workers_key(namespace), *forgotten)
    return found


def is_alive(client: redis.Redis, namespace: str, node: str) -> bool:
    raw = client.hget(workers_key(namespace), node)
    return raw is not None and _parse(node, raw).alive(time.time())


def _parse(node: str, raw: bytes) -> Worker:
    record = json.loads(raw)
    kinds = frozenset(record["kinds"]) if "kinds" in record else None
    return Worker(node, record.get("host", ""), tuple(record["queues"]), float(record["beat"]), float(record["ttl"]),
                  kinds)


def silent_for(client: redis.Redis, namespace: str, host: str) -> float | None:
    """Seconds since the last beat of any worker of ``host``; None while one of them is alive.
    A host no worker of which was heard from in the last day has been silent for ever (inf)."""
    now = time.time()
    beats = [w for w in workers(client, namespace).values() if w.host == host]
    if any(w.alive(now) for w in beats):
        return None
    return now - max((w.beat for w in beats), default=float("-inf"))


def live_workers(client: redis.Redis, namespace: str) -> list[Worker]:
    """The workers alive now."""
    now = time.time()
    return [w for w in workers(client, namespace).values() if w.alive(now)]


def seen_queues(client: redis.Redis, namespace: str) -> set[str]:
    """The queues read by any worker heard from in the last day."""
    return {q for w in workers(client, namespace).values() for q in w.queues}
