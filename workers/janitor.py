"""One janitor pass, the same from every worker's janitor thread and from ``carina janitor``."""

from __future__ import annotations

from fastio import JanitorReport, sweep
from queues.app import app
from queues.settings import Settings
from workers.lifecycle import job_failed, settle
from workers.recovery import (requeue_lost_stages, restart_jobs_of_lost_hosts, restart_jobs_whose_message_was_lost,
                              restore_stranded_messages)
from workers.runtime import job_store, redis_client


def janitor_pass(settings: Settings) -> tuple[JanitorReport, list[str]]:
    """Sweep this host's FastIO memory, end the jobs whose lease expired (their memory is
    already freed), settle the jobs under way (a cancel asked for, an end interrupted), start
    again elsewhere the jobs of lost hosts, requeue the stages of lost workers and start again
    the jobs whose next message the broker lost; returns the sweep's report and the jobs acted on."""
    report = sweep(redis_client(), settings.fastio_config())
    for job_id in job_store().active():
        settle(job_id)
    for job_id in report.expired_jobs:
        job_failed(job_id, "", f"LeaseExpired: its FastIO memory was held past the {settings.fastio_lease_s:.0f} s "
                               "lease and was reclaimed")
    lost = restart_jobs_of_lost_hosts(app, redis_client(), settings)
    lost += requeue_lost_stages(app, redis_client(), settings)
    lost += restart_jobs_whose_message_was_lost(app, redis_client(), settings)
    lost += restore_stranded_messages(app, redis_client(), settings)
    return report, lost
