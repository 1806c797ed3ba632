"""The front door: settings, the Celery app's configuration, the pipeline catalogue, submit,
job status and the CLI. It names worker tasks by string and never imports ``workers`` or
``ops``.

For apps::

    import queues
    job_id = queues.submit("fastio-itk", "/data/in/ct.mhd", "/data/out/ct", crop_size=[64, 64, 32])
    queues.status(job_id).state            # queued, running, done or failed

Settings come from the ``CARINA_*`` environment (see :mod:`queues.settings`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from queues.jobs import JobStatus, JobStore


def submit(pipeline: str, input: str, output: str, config: str | None = None, priority: str = "normal",
           **params: Any) -> str:
    """Queue a job with the process's settings and ``priority`` (lower, normal, higher,
    immediate); returns its id. See :func:`queues.pipelines.submit`."""
    from queues.app import app
    from queues.pipelines import submit as submit_job
    from queues.settings import get_settings

    return submit_job(app, get_settings(), pipeline, input, output, config, params, priority=priority)


def status(job_id: str) -> "JobStatus":
    """The job's state, stage, error and output. Raises UnknownJob."""
    with _jobs() as jobs:
        return jobs.get(job_id)


def wait(job_id: str, timeout_s: float = 3600.0,
         on_change: "Callable[[JobStatus], None] | None" = None) -> "JobStatus":
    """Follow a job until it is done or failed, or ``timeout_s`` passes; returns its status."""
    from queues.pipelines import wait as wait_job

    with _jobs() as jobs:
        return wait_job(jobs, job_id, timeout_s, on_change)


def cancel(job_id: str, by: str = "app") -> "JobStatus":
    """Ask for the job to be cancelled; returns its status now (``cancelled`` once a worker has
    ended it). See :func:`queues.pipelines.cancel`. Raises UnknownJob, BrokerUnavailable."""
    from queues.app import app
    from queues.pipelines import cancel as cancel_job
    from queues.settings import get_settings

    return cancel_job(app, get_settings(), job_id, by)


def recent(limit: int = 20, state: str | None = None, pipeline: str | None = None,
           scan_limit: int = 10_000) -> "list[JobStatus]":
    """The ``limit`` jobs created last, newest first, of ``state`` and ``pipeline`` if given
    (looking through at most ``scan_limit`` of the jobs kept)."""
    from queues.errors import UnknownJob

    found: list[JobStatus] = []
    with _jobs() as jobs:
        for offset in range(0, scan_limit, RECENT_PAGE):
            ids = jobs.recent(RECENT_PAGE, offset)
            for job_id in ids:
                try:
                    job = jobs.get(job_id)
                except UnknownJob:  # expired meanwhile
                    continue
                if (state is None or job.state == state) and (pipeline is None or job.pipeline == pipeline):
                    found.append(job)
                    if len(found) == limit:
                        return found
            if len(ids) < RECENT_PAGE:
                break
    return found


def unserved(job_id: str) -> list[tuple[str, str]]:
    """The stages still ahead of the job whose queue kind no live worker reads:
    ``[(stage task, queue kind)]`` (see :func:`queues.pipelines.unserved_stages`)."""
    from queues.pipelines import unserved_stages
    from queues.presence import live_queues
    from queues.settings import get_settings

    with _jobs() as jobs:
        return unserved_stages(jobs.get(job_id), live_queues(jobs.redis, get_settings().namespace))


RECENT_PAGE = 200


@contextmanager
def _jobs() -> "Iterator[JobStore]":
    import redis

    from queues.errors import BrokerUnavailable
    from queues.jobs import JobStore
    from queues.settings import get_settings

    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    try:
        yield JobStore(client, settings.namespace, settings.job_ttl_s)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise BrokerUnavailable(f"cannot reach Redis at {settings.redis_url}: {e}") from e
    finally:
        client.close()
