"""The Celery app's configuration. Tasks are registered by ``workers``; the front door
only names them by string, so importing this module pulls in no imaging code."""

from __future__ import annotations

from celery import Celery

from queues import signing
from queues.connection import celery_tls_options, celery_transport_options
from queues.settings import DEFAULT_PRIORITY, PRIORITIES, REDIS_OUTAGE_S, Settings, get_settings


PUBLISH_RETRY_MAX_S = 2.0
# Retries at most PUBLISH_RETRY_MAX_S apart (jittered): enough for REDIS_OUTAGE_S and more.
RESULT_STORE_RETRIES = int(2 * REDIS_OUTAGE_S / PUBLISH_RETRY_MAX_S)


def create_app(settings: Settings) -> Celery:
    app = Celery("carina", broker=settings.redis_url, backend=settings.redis_url)
    transport = {"visibility_timeout": settings.visibility_timeout_s, "socket_connect_timeout": 5,
                 **celery_transport_options(settings)}
    broker_transport = {**transport, "priority_steps": sorted(PRIORITIES.values())}
    tls = celery_tls_options(settings)
    app.conf.update(
        # JSON only: an ndarray (or anything pickled) in a message fails at send time.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Long imaging stages: acknowledge after the work, one message at a time per process,
        # and put the message back if the process running it dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Not cancelled on a broker connection loss: with Redis down, the message of a stage
        # so stopped cannot be put back either, and its job would wait for the visibility
        # timeout. A stage that runs on is dropped if it comes back after its job moved on.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,
        broker_transport_options=broker_transport,
        # A stage that ends while Redis is away publishes its next one when Redis is back;
        # Celery's default (three tries in 0.6 s) drops it, and the job stays running.
        task_publish_retry_policy={"max_retries": int(REDIS_OUTAGE_S / PUBLISH_RETRY_MAX_S) + 5,
                                   "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": PUBLISH_RETRY_MAX_S},
        task_default_priority=PRIORITIES[DEFAULT_PRIORITY],
        result_backend_transport_options=transport,
        # A stage that starts or ends while Redis is away stores its state when it is back
        # (Celery does not retry by default: the stage was lost, its job left running).
        result_backend_always_retry=True,
        result_backend_max_retries=RESULT_STORE_RETRIES,
        result_backend_max_sleep_between_retries_ms=int(PUBLISH_RETRY_MAX_S * 1000),
        broker_connection_retry_on_startup=True,
        task_default_queue="cpu",
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_extended=True,
        result_expires=int(settings.job_ttl_s),
        task_soft_time_limit=settings.stage_soft_time_limit_s,
        task_time_limit=settings.stage_time_limit_s,
        worker_hijack_root_logger=False,
        **({"broker_use_ssl": tls, "redis_backend_use_ssl": tls} if tls else {}),
    )
    signing.configure(app, settings)
    return app


app = create_app(get_settings())
