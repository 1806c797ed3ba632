"""Job records in Redis: what the front doors show (state, stage, progress, error, output).

Celery tracks tasks; a job is a chain of them, so its state is kept here: created by the
front door at submit, advanced and ended by the workers' job lifecycle (``workers.lifecycle``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from queues.connection import connect, redacted
from queues.errors import BrokerUnavailable, JobStateError, UnknownJob
from queues.settings import Settings

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
MOVED_PAST = -1  # what stage_started answers for a stage its job has moved past
RECENT_PAGE = 200  # job ids read at a time when listing recent jobs
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    pipeline: str
    state: str
    stages: list[str]
    stage: str = ""
    stage_index: int = 0
    error: str = ""
    output: str = ""
    progress_done: int = 0
    progress_total: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    priority: str = ""
    stage_task: str = ""  # the Celery task id of the stage under way
    worker: str = ""  # the worker node running it
    requeues: int = 0  # times a stage was put back after its worker was lost
    restarts: int = 0  # times the job started again from its input, its host lost
    origin: dict[str, Any] = field(default_factory=dict)  # the first payload, to start again from
    host: str = ""  # the host the job was submitted to run on, if any
    submitted_by: str = ""  # who submitted it, through which front door (at ``created``)
    deliveries: int = 0  # starts of the stage under way (more than one: its process died)
    ending: dict[str, Any] = field(default_factory=dict)  # an end under way: {"state", "fields"}
    cancel: dict[str, Any] = field(default_factory=dict)  # a cancel asked for: {"by", "at"}
    staging: str = ""  # where the stages write the results until the job ends
    dispatch: dict[str, Any] = field(default_factory=dict)  # results on their way (queues/dispatch.py)
    # The message the job waits for: its next stage's task id, that stage's index, and since
    # when (queued at submit, or when the stage before it ended). See workers/recovery.py.
    awaiting_task: str = ""
    awaiting_index: int = 0
    awaiting_since: float = 0.0
    created: float = 0.0
    updated: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextmanager
def connected_store(settings: Settings) -> Iterator["JobStore"]:
    """A job store on a connection of its own, closed afterwards; Redis unreachable (or lost
    on the way) is raised as BrokerUnavailable naming the URL."""
    client = connect(settings, socket_connect_timeout=3, socket_timeout=5)
    try:
        yield JobStore(client, settings.namespace, settings.job_ttl_s)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BrokerUnavailable(f"cannot reach Redis at {redacted(settings.redis_url)}: {e}") from e
    finally:
        client.close()


class JobStore:
    """Job records in Redis; the connection is passed in. Keys, under the namespace ``ns``:

    - ``ns:job:<id>``: the record (a hash), expiring ``ttl_s`` after its creation;
    - ``ns:jobs``: every kept job, scored by when its record expires (for ``recent``);
    - ``ns:jobs:active``: the jobs queued or running, scored by creation;
    - ``ns:jobs:ended:<state>:<pipeline>``: the ended jobs, scored by expiry.

    The sets scored by expiry are trimmed as they are read or written, so nothing grows for
    ever, and what periodic work reads (``active``, ``counts``) costs in proportion to the
    jobs under way, not to every job kept. Only :mod:`workers.lifecycle` ends a job.
    """

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: float) -> None:
        self.redis = client
        self.prefix = f"{namespace}:job:"
        self.index = f"{namespace}:jobs"
        self.active_index = f"{namespace}:jobs:active"
        self.ended_prefix = f"{namespace}:jobs:ended:"
        self.pipelines = f"{namespace}:jobs:pipelines"
        self.ttl_s = int(ttl_s)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}"

    def ended_key(self, state: str, pipeline: str) -> str:
        return f"{self.ended_prefix}{state}:{pipeline}"

    def create(self, job_id: str, pipeline: str, stages: list[str], params: dict[str, Any],
               priority: str = "", origin: dict[str, Any] | None = None, host: str = "", by: str = "") -> None:
        """Record a new job, queued. ``origin`` is its first payload (what a restart starts
        from); ``host``, the host it was submitted to run on; ``by``, who submitted it and how."""
        now = time.time()
        with self.redis.pipeline(transaction=True) as p:
            p.hset(self.key(job_id), mapping={
                "job_id": job_id, "pipeline": pipeline, "state": QUEUED, "stages": json.dumps(stages),
                "stage": "", "stage_index": 0, "error": "", "output": "", "params": json.dumps(params),
                "priority": priority, "progress_done": 0, "progress_total": 0, "restarts": 0,
                "origin": json.dumps(origin or {}), "host": host, "submitted_by": by, "created": now,
                "updated": now})
            p.expire(self.key(job_id), self.ttl_s)
            p.zremrangebyscore(self.index, "-inf", now)
            p.zadd(self.index, {job_id: now + self.ttl_s})
            p.zadd(self.active_index, {job_id: now})
            p.sadd(self.pipelines, pipeline)
            p.execute()

    def stage_started(self, job_id: str, stage: str, index: int, task_id: str = "", worker: str = "",
                      attempt: str = "", restarts: int = 0) -> int:
        """Record the stage under way; returns how many times this ``attempt`` (a message: its
        task id and retry count) has started, 1 the first time; 0 if the job has ended or is
        unknown; MOVED_PAST if a later stage (``index`` higher) has started already, or if the
        message was queued before the job's last restart (``restarts`` lower than recorded)."""
        script = self.redis.register_script(_START_STAGE)
        fields = {"state": RUNNING, "stage": stage, "stage_index": index, "stage_task": task_id, "worker": worker,
                  "attempt": attempt, "updated": time.time()}
        return int(script(keys=[self.key(job_id)],
                          args=[attempt, index, restarts, *(str(x) for kv in fields.items() for x in kv)]))

    def restart(self, job_id: str, restarts: int) -> bool:
        """Start the job again from its first stage, as restart number ``restarts + 1``; False
        (nothing changed) if it has ended, or if it has restarted since it was read as
        ``restarts`` (another host's janitor got there first)."""
        script = self.redis.register_script(_RESTART)
        fields = {"state": QUEUED, "stage": "", "stage_index": 0, "stage_task": "", "worker": "", "attempt": "",
                  "deliveries": 0, "progress_done": 0, "progress_total": 0, "staging": "",
                  "restarts": restarts + 1, "updated": time.time()}
        return bool(script(keys=[self.key(job_id)],
                           args=[restarts, *(str(x) for kv in fields.items() for x in kv)]))

    def awaiting(self, job_id: str, task_id: str, index: int) -> None:
        """The message of stage ``index`` (task ``task_id``) is about to be queued: from now the
        job waits for it. Noted before the message is sent, so its start always comes after."""
        self._update(job_id, awaiting_task=task_id, awaiting_index=index, awaiting_since=time.time())

    def requeued(self, job_id: str, requeues: int) -> None:
        """The stage under way went back to its queue: its worker was lost."""
        self._update(job_id, state=QUEUED, worker="", requeues=requeues)

    def progress(self, job_id: str, done: int, total: int) -> None:
        """Units of work (windows, tiles) done of ``total`` by the last stage that counts them."""
        self._update(job_id, progress_done=done, progress_total=total)

    def staging_started(self, job_id: str, staging: str) -> bool:
        """Note the folder where the job's stages write its results until it ends; False for
        a job that has ended or that the store does not know."""
        return self._update(job_id, staging=staging)

    def record_dispatch(self, job_id: str, detail: dict[str, Any]) -> None:
        """Note where the job's results are being sent and how that goes (after it ended, so
        not through the update that keeps a finished job finished); nothing for an unknown job."""
        self.redis.register_script(_SET_IF_KNOWN)(keys=[self.key(job_id)], args=["dispatch", json.dumps(detail)])

    def request_cancel(self, job_id: str, by: str) -> bool:
        """Note that ``by`` asked for the job to be cancelled (now); False if it had ended.
        The workers' lifecycle ends it (:func:`workers.lifecycle.settle`)."""
        return self._update(job_id, cancel=json.dumps({"by": by, "at": time.time()}))

    def ending(self, job_id: str, state: str, **fields: Any) -> None:
        """Note that the job is ending as ``state`` with ``fields``, before its memory is
        freed: whoever finds it so (a redelivered stage) completes that end."""
        self._check_final(state)
        self._update(job_id, ending=json.dumps({"state": state, "fields": fields}))

    def end(self, job_id: str, state: str, **fields: Any) -> bool:
        """Record the job's final ``state`` (done, failed or cancelled) with ``fields`` (output,
        stage, error); False if it had already ended (the first end stands) or is unknown.
        Call :func:`workers.lifecycle.end_job`, which frees the job's memory first."""
        self._check_final(state)
        script = self.redis.register_script(_END_UNLESS_FINISHED)
        now = time.time()
        flat = [str(x) for kv in {**fields, "state": state, "updated": now}.items() for x in kv]
        ended = script(keys=[self.key(job_id), self.active_index],
                       args=[job_id, state, self.ended_prefix, now, *flat])
        return bool(ended)

    def active(self) -> dict[str, tuple[str, str]]:
        """The jobs queued or running: id → (pipeline, state), in one round trip; ids whose
        record expired meanwhile are dropped from the set."""
        ids = [j.decode() for j in self.redis.zrange(self.active_index, 0, -1)]
        with self.redis.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(self.key(job_id), "pipeline", "state")
            rows = p.execute()
        gone = [job_id for job_id, (pipeline, _) in zip(ids, rows) if pipeline is None]
        if gone:
            self.redis.zrem(self.active_index, *gone)
        return {job_id: (pipeline.decode(), state.decode())
                for job_id, (pipeline, state) in zip(ids, rows) if pipeline is not None}

    def active_statuses(self) -> list[JobStatus]:
        """The records of the jobs queued or running (one that expires meanwhile is left out)."""
        statuses = []
        for job_id in self.active():
            try:
                statuses.append(self.get(job_id))
            except UnknownJob:
                continue
        return statuses

    def running(self) -> list[str]:
        """Ids of the jobs whose state is running."""
        return [job_id for job_id, (_, state) in self.active().items() if state == RUNNING]

    def counts(self) -> Counter[tuple[str, str]]:
        """Jobs kept, by (pipeline, state): the active ones read one by one, the ended ones
        counted from their sets (trimmed of the expired first)."""
        counts = Counter(self.active().values())
        pipelines = sorted(p.decode() for p in self.redis.smembers(self.pipelines))
        keys = [(pipeline, state) for pipeline in pipelines for state in FINISHED]
        now = time.time()
        with self.redis.pipeline(transaction=False) as p:
            for pipeline, state in keys:
                p.zremrangebyscore(self.ended_key(state, pipeline), "-inf", now)
                p.zcard(self.ended_key(state, pipeline))
            sizes = p.execute()[1::2]
        counts.update({key: size for key, size in zip(keys, sizes) if size})
        return counts

    def get(self, job_id: str) -> JobStatus:
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key(job_id)).items()}
        if not raw:
            raise UnknownJob(f"no job {job_id!r} (unknown, or expired)")
        return JobStatus(
            job_id=raw["job_id"], pipeline=raw["pipeline"], state=raw["state"],
            stages=json.loads(raw["stages"]), stage=raw["stage"], stage_index=int(raw["stage_index"]),
            error=raw["error"], output=raw["output"], params=json.loads(raw["params"]),
            progress_done=int(raw.get("progress_done", 0)), progress_total=int(raw.get("progress_total", 0)),
            priority=raw.get("priority", ""), stage_task=raw.get("stage_task", ""), worker=raw.get("worker", ""),
            requeues=int(raw.get("requeues", 0)), restarts=int(raw.get("restarts", 0)),
            origin=json.loads(raw.get("origin") or "{}"), host=raw.get("host", ""),
            submitted_by=raw.get("submitted_by", ""), deliveries=int(raw.get("deliveries", 0)), ending=json.loads(raw.get("ending") or "{}"),
            dispatch=json.loads(raw.get("dispatch") or "{}"),
            cancel=json.loads(raw.get("cancel") or "{}"), staging=raw.get("staging", ""),
            awaiting_task=raw.get("awaiting_task", ""), awaiting_index=int(raw.get("awaiting_index", 0)),
            awaiting_since=float(raw.get("awaiting_since", 0.0)),
            created=float(raw["created"]), updated=float(raw["updated"]))

    def recent(self, limit: int = 20, offset: int = 0) -> list[str]:
        """Ids of the ``limit`` jobs created last (of those kept) after the ``offset`` newest,
        newest first."""
        self.redis.zremrangebyscore(self.index, "-inf", time.time())
        return [j.decode() for j in self.redis.zrevrange(self.index, offset, offset + limit - 1)]

    @staticmethod
    def _check_final(state: str) -> None:
        if state not in FINISHED:
            raise JobStateError(f"{state!r} is not a final state")

    def recent_statuses(self, limit: int = 20, state: str | None = None, pipeline: str | None = None,
                        scan_limit: int = 10_000) -> list[JobStatus]:
        """The ``limit`` jobs created last, newest first, of ``state`` and ``pipeline`` if given
        (looking through at most ``scan_limit`` of the jobs kept; those that expire meanwhile
        are left out)."""
        found: list[JobStatus] = []
        for offset in range(0, scan_limit, RECENT_PAGE):
            ids = self.recent(RECENT_PAGE, offset)
            for job_id in ids:
                try:
                    job = self.get(job_id)
                except UnknownJob:
                    continue
                if (state is None or job.state == state) and (pipeline is None or job.pipeline == pipeline):
                    found.append(job)
                    if len(found) == limit:
                        return found
            if len(ids) < RECENT_PAGE:
                return found
        return found

    def _update(self, job_id: str, **fields: Any) -> bool:
        # A finished job stays finished: a late or redelivered stage must not revive it.
        script = self.redis.register_script(_UPDATE_UNLESS_FINISHED)
        flat = [str(x) for kv in {**fields, "updated": time.time()}.items() for x in kv]
        return bool(script(keys=[self.key(job_id)], args=flat))


# A field set on a job record that exists, finished or not (never a stray record made of it alone).
_SET_IF_KNOWN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
_FINISHED_TEST = " or ".join(f"state == '{s}'" for s in FINISHED)
_UPDATE_UNLESS_FINISHED = f"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state or {_FINISHED_TEST} then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
# ARGV: the attempt, the stage's index, the restarts the message was queued after, then
# field/value pairs. Counts the starts of one attempt in "deliveries"; refuses a stage
# earlier than the one recorded, and one from before the job's last restart.
_START_STAGE = f"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state or {_FINISHED_TEST} then return 0 end
if tonumber(ARGV[3]) < tonumber(redis.call('HGET', KEYS[1], 'restarts') or '0') then return {MOVED_PAST} end
if tonumber(ARGV[2]) < tonumber(redis.call('HGET', KEYS[1], 'stage_index') or '0') then return {MOVED_PAST} end
local deliveries = 1
if redis.call('HGET', KEYS[1], 'attempt') == ARGV[1] then
  deliveries = tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0') + 1
  redis.call('HSET', KEYS[1], 'progress_done', 0)  -- the new attempt counts from the start
end
redis.call('HSET', KEYS[1], 'deliveries', deliveries, unpack(ARGV, 4))
return deliveries
"""
# ARGV: the restarts read, then field/value pairs.
_RESTART = f"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state or {_FINISHED_TEST} then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'restarts') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
# ARGV: job id, final state, the ended sets' prefix, now, then field/value pairs. The ended
# set's key is built here from the record's pipeline (one Redis, not a cluster).
_END_UNLESS_FINISHED = f"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state or {_FINISHED_TEST} then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
local pipeline = redis.call('HGET', KEYS[1], 'pipeline')
local expires = tonumber(ARGV[4]) + math.max(redis.call('PTTL', KEYS[1]), 0) / 1000
redis.call('ZADD', ARGV[3] .. ARGV[2] .. ':' .. pipeline, expires, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
