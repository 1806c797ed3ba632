"""Carina's own Prometheus metrics, beside Flower's (``/metrics`` on Flower covers Celery tasks).

``carina metrics`` serves them (one per host, like node_exporter: the FastIO figures are the
host's own; the others are the deployment's and the same from every host):

- ``carina_up``: 1 when Redis answered this scrape; when it does not, the scrape still
  answers, with ``carina_up 0`` and nothing else, and the exporter logs why.
- ``carina_jobs{pipeline, state}``: jobs kept in the job store (queued, running, done, failed).
- ``carina_stage_seconds{stage, outcome}``: a histogram of stage durations, recorded by the
  workers as each stage ends (``outcome`` success or failure).
- ``carina_queue_messages{queue}``: messages waiting per Celery queue, every priority counted.
- ``carina_fastio_segments{host, use}``/``carina_fastio_bytes{host, use}``: this host's
  shared-memory segments in use by jobs and free in the pool, and their bytes.
- ``carina_fastio_reclaimed_total{host}``: segments the janitor has reclaimed.
- ``carina_dicom_events_total{ae_title, event}``: the DICOM listener's associations
  (accepted, rejected), instances (stored, duplicates, refused), series complete, jobs
  started, and its outbox's results sent, retries and dead letters (:mod:`queues.dicom_events`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis

from fastio import FastIOConfig
from fastio.registry import Registry
from fastio.segments import SegmentStore
from queues.connection import connect, redacted
from queues.dicom_events import event_counts
from queues.listeners import bearer_matches
from queues.jobs import JobStore
from queues.broker import known_queues, queue_depths
from queues.settings import Settings

log = logging.getLogger(__name__)

STAGE_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0)


def stage_key(namespace: str) -> str:
    return f"{namespace}:metrics:stages"


def record_stage(client: redis.Redis, namespace: str, stage: str, seconds: float, outcome: str) -> None:
    """Count one stage that took ``seconds`` into the histogram (cumulative buckets, as
    Prometheus keeps them), in one round trip."""
    prefix = f"{stage}\0{outcome}\0"
    with client.pipeline(transaction=False) as p:
        for bound in STAGE_BUCKETS_S:
            if seconds <= bound:
                p.hincrby(stage_key(namespace), f"{prefix}le={bound}", 1)
        p.hincrby(stage_key(namespace), f"{prefix}count", 1)
        p.hincrbyfloat(stage_key(namespace), f"{prefix}sum", seconds)
        p.execute()


class CarinaCollector:
    """A ``prometheus_client`` collector reading Redis (and this host's /dev/shm) on each scrape."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.client = client

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("carina_up", "1 when Redis answered this scrape")
        try:
            families = list(self._families())
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.error("metrics: Redis at %s unreachable: %s", redacted(self.settings.redis_url), e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        jobs = GaugeMetricFamily("carina_jobs", "jobs in the job store", labels=["pipeline", "state"])
        for (pipeline, state), count in sorted(self._job_counts().items()):
            jobs.add_metric([pipeline, state], count)
        yield jobs

        stages = HistogramMetricFamily("carina_stage_seconds", "pipeline stage durations",
                                       labels=["stage", "outcome"])
        for (stage, outcome), (buckets, total) in sorted(self._stage_histograms().items()):
            stages.add_metric([stage, outcome], buckets, total)
        yield stages

        queues = GaugeMetricFamily("carina_queue_messages", "messages waiting per queue", labels=["queue"])
        for queue, depth in sorted(queue_depths(self.client, known_queues(self.client, self.settings.namespace)).items()):
            queues.add_metric([queue], depth)
        yield queues

        config = self.settings.fastio_config()
        segments = GaugeMetricFamily("carina_fastio_segments", "shared-memory segments on this host",
                                     labels=["host", "use"])
        nbytes = GaugeMetricFamily("carina_fastio_bytes", "bytes of shared-memory segments on this host",
                                   labels=["host", "use"])
        for use, (count, size) in self._fastio(config).items():
            segments.add_metric([config.host_id, use], count)
            nbytes.add_metric([config.host_id, use], size)
        yield segments
        yield nbytes

        reclaimed = CounterMetricFamily("carina_fastio_reclaimed", "segments reclaimed by the janitor",
                                        labels=["host"])
        for host, count in sorted(Registry(self.client, config).reclaimed().items()):
            reclaimed.add_metric([host], count)
        yield reclaimed

        dicom = CounterMetricFamily("carina_dicom_events", "what the DICOM listener and its outbox have done",
                                    labels=["ae_title", "event"])
        ae_title = self.settings.dicom_ae_title
        for event, count in event_counts(self.client, self.settings.namespace, ae_title).items():
            dicom.add_metric([ae_title, event], count)
        yield dicom

    def _job_counts(self) -> Counter[tuple[str, str]]:
        jobs = JobStore(self.client, self.settings.namespace, self.settings.job_ttl_s)
        return jobs.counts()

    def _stage_histograms(self) -> dict[tuple[str, str], tuple[list[tuple[str, float]], float]]:
        raw = {k.decode(): v.decode() for k, v in self.client.hgetall(stage_key(self.settings.namespace)).items()}
        series: dict[tuple[str, str], dict[str, float]] = {}
        for field, value in raw.items():
            stage, outcome, what = field.split("\0")
            series.setdefault((stage, outcome), {})[what] = float(value)
        out = {}
        for key, values in series.items():
            buckets = [(str(bound), values.get(f"le={bound}", 0.0)) for bound in STAGE_BUCKETS_S]
            buckets.append(("+Inf", values.get("count", 0.0)))
            out[key] = (buckets, values.get("sum", 0.0))
        return out

    def _fastio(self, config: FastIOConfig) -> dict[str, tuple[int, int]]:
        registry = Registry(self.client, config)
        files = SegmentStore.for_config(config).list()
        live = [files[name][0] for name in registry.live() if name in files]
        pooled = list(registry.pooled().values())
        return {"in_use": (len(live), sum(live)), "pooled": (len(pooled), sum(pooled))}


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve ``/metrics`` on ``host:port`` until interrupted (``carina metrics``); with
    ``CARINA_METRICS_TOKEN`` set, only to requests bearing it."""
    from prometheus_client import CollectorRegistry, make_wsgi_app

    client = connect(settings, socket_connect_timeout=2, socket_timeout=5)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CarinaCollector(settings, client))
    server = make_server(host, port, _guarded(make_wsgi_app(registry), settings.metrics_token),
                         server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    log.info("metrics on http://%s:%d/metrics (Redis %s)", host, port, redacted(settings.redis_url))
    server.serve_forever()


def _guarded(app: Callable, token: str) -> Callable:
    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if token and not bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer"), ("Content-Type", "text/plain")])
            return [b"a valid bearer token is required\n"]
        return app(environ, start_response)

    return guarded


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # every scrape would be a log line
        pass


def dumps(settings: Settings, client: redis.Redis) -> str:
    """The metrics as Prometheus text, once (``carina metrics --once``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CarinaCollector(settings, client))
    return generate_latest(registry).decode()
