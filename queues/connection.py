"""How every part of Carina reaches Redis: one server (``redis://``, ``rediss://``, ``unix://``)
or the primary that Redis Sentinel names (``sentinel://``).

``rediss://`` is Redis over TLS, for Redis on another host: the server's certificate is
verified, against ``CARINA_REDIS_CA`` where given (a private CA), else the system's CAs, and
its host name checked; the password then travels encrypted.

The sentinel form is kombu's and Celery's: ``sentinel://[:password@]host:port[/db]``, one per
sentinel, joined by ``;``; the primary's name comes from ``CARINA_REDIS_MASTER_NAME``. A
client made here asks the sentinels for the primary on each new connection, so after a
failover its retries land on the promoted replica.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel

from queues.errors import ConfigError

if TYPE_CHECKING:
    from queues.settings import Settings

DIRECT_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelAddress:
    """The sentinels of a ``sentinel://`` URL, and the database and password of the primary."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelAddress | None:
    """The sentinels named by ``url``; None for a direct URL.

    Raises:
        ConfigError: the URL is of neither form, or a sentinel lacks a host or port.
    """
    scheme = url.split("://", 1)[0]
    if scheme in DIRECT_SCHEMES and "://" in url:
        return None
    if scheme != SENTINEL_SCHEME:
        raise ConfigError(f"CARINA_REDIS_URL={url!r}: expected redis://host:port/db or "
                          "sentinel://host:port;sentinel://host:port")
    sentinels, dbs, password = [], set(), None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname or port is None:
            raise ConfigError(f"CARINA_REDIS_URL: {part!r} is not sentinel://host:port")
        sentinels.append((parts.hostname, port))
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ConfigError(f"CARINA_REDIS_URL: {part!r}: the database must be a number")
        dbs.add(int(db))
        password = password or parts.password
    if len(dbs) > 1:
        # kombu reads each part on its own: a database named on one part only would be 0 on the others.
        raise ConfigError(f"CARINA_REDIS_URL={url!r}: every sentinel:// part must name the same database")
    return SentinelAddress(tuple(sentinels), dbs.pop(), password)


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``: the form for logs and messages."""
    return re.sub(r"(?<=://)([^:@/;]*):[^@/;]*@", r"\1:***@", url)


def tls_options(settings: "Settings") -> dict[str, Any]:
    """What redis-py needs for a ``rediss://`` URL (none for others): the server's certificate
    required and verified."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    return {"ssl_cert_reqs": "required", **({"ssl_ca_certs": str(settings.redis_ca)} if settings.redis_ca else {})}


def celery_tls_options(settings: "Settings") -> dict[str, Any] | None:
    """The same for kombu's broker and Celery's result backend (``broker_use_ssl``,
    ``redis_backend_use_ssl``), which take the ssl module's constant; None without TLS."""
    options = tls_options(settings)
    return {**options, "ssl_cert_reqs": ssl.CERT_REQUIRED} if options else None


def connect(settings: "Settings", **options: Any) -> redis.Redis:
    """A client of the deployment's Redis, with ``options`` (timeouts, retry) as redis-py takes them."""
    address = parse_sentinel_url(settings.redis_url)
    if address is None:
        return redis.Redis.from_url(settings.redis_url, **tls_options(settings), **options)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(address.sentinels), sentinel_kwargs=timeouts)
    return sentinel.master_for(settings.redis_master_name, db=address.db, password=address.password, **options)


def celery_transport_options(settings: "Settings") -> dict[str, Any]:
    """What kombu's transport and Celery's result backend need beyond the URL."""
    if parse_sentinel_url(settings.redis_url) is None:
        return {}
    return {"master_name": settings.redis_master_name}
