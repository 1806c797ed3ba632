"""The Redis users of a deployment, one per role, as Redis ACL rules.

- ``admin`` (Redis's ``default`` user): whoever runs Redis; every command.
- ``worker``: the workers and the services that watch them (janitor, metrics, Flower,
  health): every key and channel, no administrative command (``@dangerous``: CONFIG, which
  would let it make Redis write files where it likes, FLUSHALL, DEBUG, SHUTDOWN, MODULE, ACL,
  replication, KEYS …).
- ``front``: the front doors (API, watch folder, CLI): job records, worker presence, the
  watch folder's records and the task queues — to queue a job's first stage and ask a worker
  to stop one — but not the FastIO registry, and no command that takes a message off a queue
  or deletes a key, so a front door can neither read where patient volumes lie in shared
  memory nor drop another job's stages. It has no administrative command either.

``user_rule`` writes a user's line in Redis's ACL syntax, with the password hashed (SHA-256,
as Redis stores it), for a configuration given on stdin or an ACL file.
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote, urlsplit

from queues.connection import redacted
from queues.errors import ConfigError
from queues.settings import QUEUE_KINDS, Settings

ROLES = ("admin", "worker", "front")
ADMIN_USER = "default"  # Redis's own: the user of requirepass and of a URL without a user name
# Commands a front door never needs: taking messages off a list, deleting keys, scanning
# the keyspace. (Celery's clients add their own reply lists, kept to the patterns below.)
FRONT_DENIED = ("lpop", "rpop", "blpop", "brpop", "brpoplpush", "blmove", "lmove", "rpoplpush", "lrem", "ltrim",
                "lset", "del", "unlink", "rename", "renamenx", "move", "copy", "scan", "flushdb", "flushall")


def user_name(role: str) -> str:
    """The Redis user of ``role``.

    Raises:
        ConfigError: no such role.
    """
    if role not in ROLES:
        raise ConfigError(f"Redis role {role!r}: one of {', '.join(ROLES)}")
    return ADMIN_USER if role == "admin" else f"carina-{role}"


def front_key_patterns(namespace: str) -> tuple[str, ...]:
    """The keys a front door touches: Carina's records but the FastIO registry, the queues of
    every kind (a host's own, ``io.<host>``, and kombu's per-priority lists, ``io\\x06\\x16<p>``,
    begin with the kind) and kombu's exchange bindings."""
    return (f"{namespace}:job:*", f"{namespace}:jobs", f"{namespace}:jobs:*", f"{namespace}:workers",
            f"{namespace}:watch:*", f"{namespace}:dicom:*", *(f"{kind}*" for kind in QUEUE_KINDS), "_kombu.binding*")


def user_rule(role: str, password: str, namespace: str, name: str | None = None) -> str:
    """The ACL line (``user NAME on #SHA256 …``) giving ``role`` what it needs and no more,
    for the user ``name`` (default :func:`user_name`)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    name = name or user_name(role)
    if role == "admin":
        grants = "~* &* +@all"
    elif role == "worker":
        grants = "~* &* +@all -@dangerous"
    else:
        keys = " ".join(f"~{pattern}" for pattern in front_key_patterns(namespace))
        grants = f"{keys} &* +@all -@dangerous " + " ".join(f"-{command}" for command in FRONT_DENIED)
    return f"user {name} reset on #{digest} {grants}"


def deployment_rules(settings: Settings) -> list[str]:
    """The ACL lines of the role users whose URLs the settings give (CARINA_REDIS_WORKER_URL,
    CARINA_REDIS_FRONT_URL), for ``carina redis`` to create.

    Raises:
        ConfigError: such a URL names no user or no password.
    """
    rules = []
    for role in ("worker", "front"):
        url = settings.role_url(role)
        if url == settings.redis_url:
            continue
        parts = urlsplit(url)
        if not parts.username or not parts.password:
            raise ConfigError(f"CARINA_REDIS_{role.upper()}_URL={redacted(url)!r}: give the user and its password, "
                              f"redis://{user_name(role)}:PASSWORD@HOST:PORT/DB")
        rules.append(user_rule(role, unquote(parts.password), settings.namespace, name=unquote(parts.username)))
    return rules

