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

from typing import TYPE_CHECKING, Any, Callable, ContextManager

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


def recent(limit: int = 20, state: str | None = None, pipeline: str | None = None) -> "list[JobStatus]":
    """The ``limit`` jobs created last, newest first, of ``state`` and ``pipeline`` if given."""
    with _jobs() as jobs:
        return jobs.recent_statuses(limit, state, pipeline)


def unserved(job_id: str) -> list[tuple[str, str, str]]:
    """The stages still ahead of the job that no live worker would take:
    ``[(stage kind, queue kind, why)]`` (see :func:`queues.pipelines.unserved_stages`)."""
    from queues.pipelines import unserved_stages
    from queues.presence import live_workers
    from queues.settings import get_settings

    with _jobs() as jobs:
        return unserved_stages(get_settings(), jobs.get(job_id), live_workers(jobs.redis, get_settings().namespace))



def _jobs() -> "ContextManager[JobStore]":
    from queues.jobs import connected_store
    from queues.settings import get_settings

    return connected_store(get_settings())
