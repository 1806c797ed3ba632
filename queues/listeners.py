"""One rule for every listener Carina opens (the API, Flower, metrics, and any added later):
nothing listens beyond loopback without credentials."""

from __future__ import annotations

import hmac

from queues.errors import ConfigError

# Addresses a service may listen on without credentials: nobody off this host reaches them.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_listener(service: str, host: str, credentials: str, setting: str) -> None:
    """Refuse ``service`` listening on ``host`` beyond loopback while ``credentials`` are empty.

    Raises:
        ConfigError: naming the service, the address and the setting that would allow it.
    """
    if not credentials and host not in LOOPBACK_HOSTS:
        raise ConfigError(f"{service} would listen on {host} without credentials: set {setting} "
                          "or keep it on 127.0.0.1")


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` as a bearer token. The scheme is
    compared without regard to case, as RFC 7235 says; the token in constant time."""
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())
