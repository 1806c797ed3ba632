"""The base of every pipeline stage: Celery's hooks wired to the job lifecycle, and locality.

A stage that publishes memory pins the rest of its chain to this host's queues; a stage
that lands on a host not holding its input is re-routed to the holder. How a job starts,
drops a stale stage and ends is :mod:`workers.lifecycle`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded

from fastio import AlreadyPublished, FastIOAllocation, NotLocal
from monitoring.metrics import record_stage
from queues.confine import check_job
from queues.errors import UnknownJob
from queues.jobs import MOVED_PAST
from queues.payload import Payload
from queues.settings import get_settings
from workers import lifecycle
from workers.runtime import fastio_context, job_store, redis_client

log = logging.getLogger(__name__)
MAX_REROUTES = 3
_STARTED: dict[str, float] = {}  # task id → when this process started it


def queue_kind(queue: str) -> str:
    """'cpu' for both 'cpu' and the host-bound 'cpu.<host>'."""
    return queue.split(".", 1)[0]


class StageTask(Task):
    """Celery task base for pipeline stages; the task body is ``fn(self, payload, ...)``."""

    abstract = True
    acks_late = True

    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        _STARTED[task_id] = time.monotonic()

    def __call__(self, payload: Payload, *args: Any, **kwargs: Any) -> Any:
        index = 0 if self.request.called_directly else self._start(payload)
        try:
            result = super().__call__(payload, *args, **kwargs)
        except NotLocal as e:
            if self.request.retries >= MAX_REROUTES or self.request.called_directly:
                raise
            queue = get_settings().host_queue(queue_kind(self._queue()), e.holder)
            log.warning("job %s: %s re-routed to %s (%s)", payload["job"], self.name, queue, e)
            raise self.retry(exc=e, queue=queue, countdown=0, max_retries=MAX_REROUTES)
        if self.request.called_directly:
            return result
        if self.request.chain:
            # Before Celery sends the next stage: from here the job waits for that message,
            # which a broker can lose (workers/recovery.py finds such jobs).
            if index:
                following = self.request.chain[-1]
                job_store().awaiting(payload["job"], following.get("options", {}).get("task_id", ""), index + 1)
        else:
            # The last stage ends its job here, before Celery stores the stage's success: a
            # process lost after that store (in on_success) would leave the job running for ever,
            # as the stage is then not redelivered. Lost before it, the stage is redelivered and
            # dropped above.
            ended = result if isinstance(result, dict) else payload
            lifecycle.job_done(ended["job"], ended.get("output", ""))
        return result

    def _start(self, payload: Payload) -> int:
        """The lifecycle's start of this delivery; returns the stage's position in its job
        (1 for the first; 0 for a stage of no job the store knows). Raises Ignore where the
        stage must not run."""
        job_id = payload["job"]
        if lifecycle.settle(job_id):
            # A stale redelivery: a message whose acknowledgement was lost with a Redis restart
            # comes back after the visibility timeout, or the process ending the job died on the
            # way. The job's end is completed; nothing runs.
            log.warning("job %s has ended; %s redelivered late, dropped", job_id, self.name)
            self._drop()
        stages = self._stages(payload)
        index = stages.index(self.name) + 1 if self.name in stages else 0
        attempt = f"{self.request.id}/{self.request.retries}"
        # .get: a message queued before restarts were counted is of the first run.
        deliveries = lifecycle.stage_started(job_id, self.name, index, self.request.id, self.request.hostname or "",
                                             attempt, payload.get("restarts", 0))
        if deliveries == MOVED_PAST:
            # It finished, but its acknowledgement was lost (the broker went away): the job
            # is at a later stage already. Or it was queued before the job started again.
            log.warning("job %s has moved past %s; a late delivery, dropped", job_id, self.name)
            self._drop()
        if lifecycle.too_many_deliveries(job_id, self.name, deliveries):
            self._drop()
        if deliveries > 1:
            lifecycle.free_dead_attempt(job_id)
        if index == 1:
            # In the worker too: what was inside when submitted may hold a link, or a header
            # naming a file, that leads out. Raised, the job fails with the file named.
            check_job(payload["input"], payload["output"], payload.get("config"), get_settings().data_roots)
        return index

    def _drop(self) -> None:
        _STARTED.pop(self.request.id, None)
        raise Ignore()

    # helpers for task bodies ------------------------------------------------------------
    def staging(self, payload: Payload) -> Path:
        """The folder to write the job's results into: they reach ``payload["output"]`` whole,
        when the job ends done (see :mod:`workers.results`)."""
        if self.request.called_directly:
            output = Path(payload["output"])
            output.mkdir(parents=True, exist_ok=True)
            return output
        return lifecycle.staging_dir(payload["job"], payload["output"])

    @staticmethod
    def result(payload: Payload, written: Path) -> str:
        """Where a file written at the top of the staging folder lies once the job is done."""
        return str(Path(payload["output"]) / written.name)

    def published(self, payload: Payload, name: str) -> FastIOAllocation:
        """The allocation an earlier stage of this job published as ``name`` (zero copy).
        Raises NotLocal where it lies on another host (the stage is then re-routed there)."""
        return fastio_context(payload["job"]).get(payload["handles"][name])

    def publish(self, payload: Payload, array: np.ndarray, name: str, metadata: dict[str, Any],
                **changes: Any) -> Payload:
        """Publish ``array`` as ``name`` for this job, pin the chain here, and return the
        payload for the next stage (with ``changes``).

        A name this stage already published (its message was redelivered after a crash) is
        replaced: the next stage has not run yet, so no reader can have seen it.
        """
        ctx = fastio_context(payload["job"])
        try:
            ctx.publish_array(array, name, metadata)
        except AlreadyPublished:
            ctx.get(name).free()
            ctx.publish_array(array, name, metadata)
        self._pin_chain_here()
        return self.advance(payload, handles={**payload["handles"], name: name}, **changes)

    def report_progress(self, payload: Payload, done: int, total: int) -> None:
        """Units done in this stage: in the job record (``carina status``) and the task state
        (Flower). Best effort: a report lost while Redis is away does not stop the work."""
        try:
            job_store().progress(payload["job"], done, total)
            if not self.request.called_directly:
                self.update_state(state="PROGRESS", meta={"job": payload["job"], "stage": self.name, "done": done,
                                                          "total": total, "percent": round(100 * done / total, 1)})
        except redis.RedisError as e:
            log.warning("job %s: progress %d/%d not recorded: %s", payload["job"], done, total, e)

    def advance(self, payload: Payload, **changes: Any) -> Payload:
        """The payload for the next stage, with this stage recorded in its trace."""
        trace = [*payload["trace"], {"stage": self.name, "host": get_settings().host_id}]
        return {**payload, **changes, "trace": trace}

    # Celery hooks -------------------------------------------------------------------------
    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        self._record_duration(task_id, "success")

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        self._record_duration(task_id, "failure")
        payload = args[0] if args else {}
        job_id = payload.get("job") if isinstance(payload, dict) else None
        if not job_id:
            return
        lifecycle.job_failed(job_id, self.name, self._reason(exc))

    def _reason(self, exc: BaseException) -> str:
        """What the job's record says of the exception that failed this stage."""
        settings = get_settings()
        if isinstance(exc, SoftTimeLimitExceeded):
            return (f"StageTimeLimit: {self.name} ran past CARINA_STAGE_SOFT_TIME_LIMIT_S="
                    f"{settings.stage_soft_time_limit_s:g} s and was interrupted")
        if isinstance(exc, TimeLimitExceeded):
            return (f"StageTimeLimit: {self.name} ran past CARINA_STAGE_TIME_LIMIT_S={settings.stage_time_limit_s:g} s "
                    "and its process was stopped")
        return f"{type(exc).__name__}: {exc}"

    def _record_duration(self, task_id: str, outcome: str) -> None:
        started = _STARTED.pop(task_id, None)
        if started is None:
            return
        try:
            record_stage(redis_client(), get_settings().namespace, self.name, time.monotonic() - started, outcome)
        except redis.RedisError:  # a metric lost is no reason to fail a stage
            log.warning("could not record the duration of %s", self.name, exc_info=True)

    def _pin_chain_here(self) -> None:
        """Send the remaining stages to this host's queues, where the memory is."""
        settings = get_settings()
        for signature in self.request.chain or []:
            options = signature.setdefault("options", {})
            options["queue"] = settings.host_queue(queue_kind(options.get("queue") or "cpu"))

    def _queue(self) -> str:
        info = self.request.delivery_info or {}
        return info.get("routing_key") or self.queue or "cpu"

    @staticmethod
    def _stages(payload: Payload) -> list[str]:
        """The job's stages as its record has them (from the definition it was submitted
        with: a worker needs the stage kinds, not the definitions); [] for an unknown job."""
        try:
            return job_store().get(payload["job"]).stages
        except UnknownJob:
            return []
