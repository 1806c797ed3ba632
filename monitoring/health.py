"""``carina health``: is each part of a deployment there and answering?

Checks Redis (broker, results, registry), the Celery workers (a broadcast ping), Triton (its
KServe v2 readiness endpoint), FastIO on this host (the segment folder is writable, with
room; what is in use and pooled), and where they are configured the DICOM listener and each
destination of its results (a C-ECHO). Each check says what it found; none raises.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import redis
from celery import Celery

from fastio.registry import Registry
from queues.connection import connect, redacted
from queues.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_redis(client: redis.Redis, settings: Settings) -> Check:
    try:
        info = client.info("server")
    except (redis.ConnectionError, redis.TimeoutError) as e:
        return Check("redis", False, f"{redacted(settings.redis_url)}: {e}")
    return Check("redis", True, f"{redacted(settings.redis_url)}: redis {info.get('redis_version', '?')}")


def check_workers(app: Celery, timeout_s: float) -> Check:
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    except Exception as e:  # kombu raises several kinds when the broker is away
        return Check("workers", False, f"cannot ask the workers: {type(e).__name__}: {e}")
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Check("workers", False, f"no worker answered within {timeout_s:g} s")
    return Check("workers", True, f"{len(names)} answering: {', '.join(names)}")


def check_triton(url: str, timeout_s: float) -> Check:
    ready = f"{url}/v2/health/ready"
    try:
        with urllib.request.urlopen(ready, timeout=timeout_s) as response:
            return Check("triton", response.status == 200, f"{url}: ready")
    except urllib.error.HTTPError as e:
        return Check("triton", False, f"{url}: not ready (HTTP {e.code})")
    except (urllib.error.URLError, OSError) as e:
        return Check("triton", False, f"{url}: {getattr(e, 'reason', e)}")


def check_fastio(client: redis.Redis, settings: Settings) -> Check:
    config = settings.fastio_config()
    folder = config.shm_dir
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return Check("fastio", False, f"{folder} is not a writable folder")
    free = shutil.disk_usage(folder).free
    try:
        registry = Registry(client, config)
        in_use, pooled = len(registry.live()), len(registry.pooled())
    except (redis.ConnectionError, redis.TimeoutError):
        return Check("fastio", False, f"{folder}: {free / 2**30:.1f} GiB free; registry unreachable (Redis)")
    return Check("fastio", True, f"{folder}: {free / 2**30:.1f} GiB free; {in_use} segments in use, "
                                 f"{pooled} pooled on {config.host_id}")


def check_echo(name: str, calling: str, called: str, host: str, port: int, timeout_s: float) -> Check:
    """A C-ECHO to a DICOM peer as ``calling``: is it there, and does it take us?"""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    where = f"{called}@{host}:{port}"
    try:
        assoc = ae.associate(host, port, ae_title=called)
    except (OSError, RuntimeError, ValueError) as e:
        return Check(name, False, f"{where}: {e}")
    if not assoc.is_established:
        return Check(name, False, f"{where}: no association (refused, rejected or unreachable)")
    try:
        status = assoc.send_c_echo()
        ok = "Status" in status and int(status.Status) == 0
        return Check(name, ok, f"{where}: C-ECHO {'answered' if ok else 'failed'}")
    finally:
        assoc.release()


def check_dicom(settings: Settings, timeout_s: float) -> list[Check]:
    """The DICOM listener, where one is configured (CARINA_DICOM_ALLOWED_AES; the echo comes
    from the first of those titles), and each destination results are sent to."""
    from queues.dispatch import destinations

    checks = []
    if settings.dicom_allowed_aes:
        host = "127.0.0.1" if settings.dicom_host in ("0.0.0.0", "::") else settings.dicom_host
        checks.append(check_echo("dicom", settings.dicom_allowed_aes[0], settings.dicom_ae_title, host,
                                 settings.dicom_port, timeout_s))
    for destination in destinations(settings).values():
        if destination.url:
            checks.append(check_dicomweb(f"send:{destination.name}", destination.url, timeout_s))
        else:
            checks.append(check_echo(f"send:{destination.name}", settings.dicom_ae_title, destination.ae_title,
                                     destination.host, destination.port, timeout_s))
    return checks


def check_dicomweb(name: str, url: str, timeout_s: float) -> Check:
    """A DICOMweb service answers a QIDO-RS search (the cheapest request it must serve)."""
    try:
        with urllib.request.urlopen(f"{url}/studies?limit=1", timeout=timeout_s) as response:
            return Check(name, response.status in (200, 204), f"{url}: QIDO-RS answered {response.status}")
    except urllib.error.HTTPError as e:
        return Check(name, False, f"{url}: HTTP {e.code}")
    except (urllib.error.URLError, OSError) as e:
        return Check(name, False, f"{url}: {getattr(e, 'reason', e)}")


def check_all(settings: Settings, app: Celery, timeout_s: float = 3.0) -> list[Check]:
    client = connect(settings, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        checks = [check_redis(client, settings)]
        if checks[0].ok:
            checks.append(check_workers(app, timeout_s))
        else:
            checks.append(Check("workers", False, "not asked: Redis is unreachable"))
        checks.append(check_triton(settings.triton_http_url, timeout_s))
        checks.append(check_fastio(client, settings))
        checks += check_dicom(settings, timeout_s)
    finally:
        client.close()
    return checks
