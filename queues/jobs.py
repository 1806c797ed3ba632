"""Job records in Redis: what the front doors show (state, stage, progress, error, output).

Celery tracks tasks; a job is a chain of them, so its state is kept here, written by the
front door at submit and by the workers' stage hooks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from queues.errors import UnknownJob

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINISHED = (DONE, FAILED)


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
    created: float = 0.0
    updated: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class JobStore:
    """Reads and writes ``{ns}:job:{id}`` hashes; the connection is passed in."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: float) -> None:
        self.redis = client
        self.prefix = f"{namespace}:job:"
        self.index = f"{namespace}:jobs"
        self.ttl_s = int(ttl_s)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}"

    def create(self, job_id: str, pipeline: str, stages: list[str], params: dict[str, Any],
               priority: str = "") -> None:
        now = time.time()
        with self.redis.pipeline(transaction=True) as p:
            p.hset(self.key(job_id), mapping={
                "job_id": job_id, "pipeline": pipeline, "state": QUEUED, "stages": json.dumps(stages),
                "stage": "", "stage_index": 0, "error": "", "output": "", "params": json.dumps(params),
                "priority": priority, "progress_done": 0, "progress_total": 0,
                "created": now, "updated": now})
            p.expire(self.key(job_id), self.ttl_s)
            p.zadd(self.index, {job_id: now})
            p.execute()

    def delete(self, job_id: str) -> None:
        with self.redis.pipeline(transaction=True) as p:
            p.delete(self.key(job_id))
            p.zrem(self.index, job_id)
            p.execute()

    def stage_started(self, job_id: str, stage: str, index: int, task_id: str = "", worker: str = "") -> None:
        self._update(job_id, state=RUNNING, stage=stage, stage_index=index, stage_task=task_id, worker=worker)

    def requeued(self, job_id: str, requeues: int) -> None:
        """The stage under way went back to its queue: its worker was lost."""
        self._update(job_id, state=QUEUED, worker="", requeues=requeues)

    def pipelines_and_states(self) -> dict[str, tuple[str, str]]:
        """Every job kept: id → (pipeline, state), read in one round trip (jobs that expire
        meanwhile are left out)."""
        ids = [j.decode() for j in self.redis.zrange(self.index, 0, -1)]
        with self.redis.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(self.key(job_id), "pipeline", "state")
            rows = p.execute()
        return {job_id: (pipeline.decode(), state.decode())
                for job_id, (pipeline, state) in zip(ids, rows) if pipeline is not None}

    def running(self) -> list[str]:
        """Ids of the jobs whose state is running."""
        return [job_id for job_id, (_, state) in self.pipelines_and_states().items() if state == RUNNING]

    def progress(self, job_id: str, done: int, total: int) -> None:
        """Units of work (windows, tiles) done of ``total`` by the last stage that counts them."""
        self._update(job_id, progress_done=done, progress_total=total)

    def done(self, job_id: str, output: str) -> None:
        self._update(job_id, state=DONE, output=output)

    def failed(self, job_id: str, stage: str, error: str) -> None:
        self._update(job_id, state=FAILED, stage=stage, error=error)

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
            requeues=int(raw.get("requeues", 0)), created=float(raw["created"]), updated=float(raw["updated"]))

    def recent(self, limit: int = 20) -> list[str]:
        return [j.decode() for j in self.redis.zrevrange(self.index, 0, limit - 1)]

    def _update(self, job_id: str, **fields: Any) -> None:
        # A finished job stays finished: a late or redelivered stage must not revive it.
        script = self.redis.register_script(_UPDATE_UNLESS_FINISHED)
        flat = [str(x) for kv in {**fields, "updated": time.time()}.items() for x in kv]
        script(keys=[self.key(job_id)], args=flat)


_UPDATE_UNLESS_FINISHED = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'done' or state == 'failed' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
