"""``submit``, ``cancel`` and ``wait``: a job is a Celery chain of its pipeline's stages, as
the catalogue (:mod:`queues.catalogue`) defines them.

Every stage takes the job payload (:class:`queues.payload.Payload`, a small JSON dict) as
its first argument and returns it, updated, for the next one.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import redis
from celery import Celery, chain

from queues.catalogue import Pipeline, catalogue, get_pipeline
from queues.errors import InvalidJobRequest
from queues.jobs import RUNNING, JobStatus, JobStore, connected_store
from queues.payload import Payload, first_payload
from queues.presence import Worker
from queues.settings import DEFAULT_PRIORITY, PRIORITIES, REDIS_OUTAGE_S, Settings

OUTAGE_POLL_S = 1.0
MODEL_CHECK_TIMEOUT_S = 2.0  # Triton's answer to "is this model ready", at submit
CANCEL_TASK = "carina.lifecycle.cancel"  # registered by workers.lifecycle


def cancel(app: Celery, settings: Settings, job_id: str, by: str) -> JobStatus:
    """Ask for a job to be cancelled on behalf of ``by``; returns its status now.

    The request is recorded, the stage under way (if any) is stopped (its process killed),
    and an io worker, sent on to the host holding the job's memory, ends the job: memory
    freed, then the state ``cancelled`` with who and when. Stages still queued are dropped as
    they come. A job that has already ended is left as it is.

    Raises:
        UnknownJob: no such job. BrokerUnavailable: Redis cannot be reached.
    """
    with connected_store(settings) as jobs:
        status = jobs.get(job_id)
        if status.finished or not jobs.request_cancel(job_id, by):
            return jobs.get(job_id)
        if status.state == RUNNING and status.stage_task:
            app.control.revoke(status.stage_task, terminate=True, signal="SIGKILL")
        app.send_task(CANCEL_TASK, args=[job_id], queue="io", priority=PRIORITIES["immediate"])
        return jobs.get(job_id)


def unserved_stages(settings: Settings, status: JobStatus, live: list[Worker]) -> list[tuple[str, str, str]]:
    """The stages still ahead of a job (the one under way included) that no live worker would
    take: ``[(stage kind, queue kind, why)]``, ``why`` being ``"queue"`` (no live worker reads
    that kind of queue) or ``"kind"`` (those that do do not run that stage kind: the package
    providing it is not installed there). Such a job waits in silence until one starts."""
    spec = catalogue(settings).get(status.pipeline)
    if spec is None or status.finished:
        return []
    unserved = []
    for stage in spec.stages[max(status.stage_index - 1, 0):]:
        readers = [w for w in live if w.reads(stage.queue)]
        if not readers:
            unserved.append((stage.task, stage.queue, "queue"))
        elif not any(w.runs(stage.task) for w in readers):
            unserved.append((stage.task, stage.queue, "kind"))
    return unserved


def submit(app: Celery, settings: Settings, pipeline: str, input: str | Path, output: str | Path,
           config: str | Path | None = None, params: dict[str, Any] | None = None,
           job_id: str | None = None, host: str | None = None, priority: str = DEFAULT_PRIORITY,
           by: str = "an app (queues.submit)") -> str:
    """Queue a job and return its id (``job_id`` if given, else a new one).

    ``priority`` is one of Clara's (lower, normal, higher, immediate): every stage of the job
    is queued with it, so an immediate job's stages go ahead of any waiting normal ones.

    ``by`` says who asked, through which front door; the job record keeps it (the audit trail).

    ``host`` runs the whole job on that host (its first stage goes to the host's queue; the
    rest follow the memory): for inputs on a disk only that host sees, such as a watch folder.

    Paths are the workers' paths and are checked there (a missing input fails the job with
    the reason); relative ones are made absolute here, against the caller's directory.

    Raises:
        UnknownPipeline, InvalidJobRequest: refused before anything is queued (a crop
            outside the volume its header describes, a model Triton does not serve).
        BrokerUnavailable: Redis cannot be reached; nothing was queued.
    """
    spec = get_pipeline(settings, pipeline)
    if priority not in PRIORITIES:
        raise InvalidJobRequest(f"priority={priority!r}: one of {', '.join(PRIORITIES)}")
    if not str(input) or not str(output):
        raise InvalidJobRequest("both an input and an output are required")
    params = spec.validate(dict(params or {}))
    spec.check_input(Path(input), params)
    check_model_served(settings, params)
    job_id = job_id or uuid.uuid4().hex
    payload = first_payload(job_id, pipeline, str(Path(input).absolute()), str(Path(output).absolute()),
                            str(Path(config).absolute()) if config else None, params, spec.settings)
    with connected_store(settings) as jobs:
        jobs.redis.ping()
        jobs.create(job_id, pipeline, [s.task for s in spec.stages], params, priority, origin=dict(payload),
                    host=host or "", by=by)
        _queue_chain(app, settings, jobs, spec, payload, priority, host)
    return job_id


def check_model_served(settings: Settings, params: dict[str, Any]) -> None:
    """Refuse a job whose ``model`` parameter names a model the Triton at CARINA_TRITON_URL
    says it does not serve. Where Triton does not answer, nothing is said: the job goes ahead
    and, if the model is still missing when its stage runs, fails with that reason.

    Raises: InvalidJobRequest: Triton answered that the model is unknown or not ready."""
    model = params.get("model")
    if not isinstance(model, str):
        return
    url = f"{settings.triton_http_url}/v2/models/{urllib.parse.quote(model, safe='')}/ready"
    try:
        with urllib.request.urlopen(url, timeout=MODEL_CHECK_TIMEOUT_S):
            return
    except urllib.error.HTTPError as e:
        if e.code in (400, 404):
            raise InvalidJobRequest(f"model={model!r}: the Triton at {settings.triton_url} does not serve it "
                                    f"(HTTP {e.code} from /v2/models/{model}/ready)") from None
    except (urllib.error.URLError, OSError):
        pass  # Triton away or not there: the stage says so, if it still is


def queue_restart(app: Celery, settings: Settings, jobs: JobStore, status: JobStatus) -> None:
    """Queue the job of ``status`` again from its first stage, on the shared queues (any
    host). The caller has recorded the restart (``JobStore.restart``) and freed the job's
    memory: the new chain publishes its names again."""
    payload = Payload(**{**status.origin, "restarts": status.restarts + 1})  # type: ignore[typeddict-item]
    _queue_chain(app, settings, jobs, get_pipeline(settings, status.pipeline), payload,
                 status.priority or DEFAULT_PRIORITY)


def _queue_chain(app: Celery, settings: Settings, jobs: JobStore, spec: Pipeline, payload: Payload, priority: str,
                 host: str | None = None) -> None:
    first, *rest = spec.stages
    first_queue = settings.host_queue(first.queue, host) if host else first.queue
    level = PRIORITIES[priority]
    # The first chain's last task takes the job id; a restart's a new one, so that no two
    # messages (the lost host's may still be about) share an id to revoke or look up.
    last_id = payload["job"] if not payload.get("restarts") else uuid.uuid4().hex
    first_id = last_id if not rest else uuid.uuid4().hex
    signatures = [app.signature(first.task, args=(payload,), queue=first_queue, priority=level, task_id=first_id)]
    signatures += [app.signature(s.task, queue=s.queue, priority=level) for s in rest]
    jobs.awaiting(payload["job"], first_id, 1)
    chain(*signatures).apply_async(
        task_id=last_id, retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})


def wait(jobs: JobStore, job_id: str, timeout_s: float, on_change: Callable[[JobStatus], None] | None = None,
         poll_s: float = 0.2, outage_s: float = REDIS_OUTAGE_S) -> JobStatus:
    """Poll a job until it finishes or ``timeout_s`` passes; returns its last status. Redis
    away for up to ``outage_s`` (a restart, a failover) is waited out.

    Raises:
        redis.ConnectionError, redis.TimeoutError: Redis was away longer than ``outage_s``.
    """
    deadline = time.monotonic() + timeout_s
    last: tuple[str, str, int] | None = None
    away_since: float | None = None
    while True:
        try:
            status = jobs.get(job_id)
            away_since = None
        except (redis.ConnectionError, redis.TimeoutError):
            away_since = away_since or time.monotonic()
            if time.monotonic() - away_since > outage_s:
                raise
            time.sleep(OUTAGE_POLL_S)
            continue
        if on_change is not None and (status.state, status.stage, status.progress_done) != last:
            on_change(status)
            last = (status.state, status.stage, status.progress_done)
        if status.finished or time.monotonic() >= deadline:
            return status
        time.sleep(poll_s)
