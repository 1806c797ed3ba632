"""Signed messages: every task message is signed by the process that sends it (a front door,
or a worker queueing a job's next stage) and verified by the worker that takes it, through
Celery's ``auth`` serializer over JSON.

A message that is not signed, or signed by a key whose certificate is not in the store, is
refused and logged by the worker, and nothing runs: whoever can write to Redis still cannot
make a worker read or write a file. ``carina keys DIR`` makes a key and a self-signed
certificate for a deployment (the demo and the tests make their own); in production each host
has its own key and every host's certificate is in each store.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import TYPE_CHECKING

from queues.errors import ConfigError

if TYPE_CHECKING:
    from celery import Celery

    from queues.settings import Settings

KEY_FILE, CERT_FILE, STORE_DIR = "carina.key", "carina.pem", "certs"
DIGEST = "sha256"


def signing_enabled(settings: "Settings") -> bool:
    """True when the key, the certificate and the store are all set.

    Raises:
        ConfigError: some of them are set and not the others.
    """
    given = [settings.signing_key, settings.signing_cert, settings.cert_store]
    if any(given) and not all(given):
        raise ConfigError("CARINA_SIGNING_KEY, CARINA_SIGNING_CERT and CARINA_CERT_STORE go together")
    return all(given)


def configure(app: "Celery", settings: "Settings") -> None:
    """Make ``app`` sign what it sends and accept only signed task messages, if signing is set up.

    Raises:
        ConfigError: a file is missing or unreadable, or the settings are incomplete.
    """
    if not signing_enabled(settings):
        return
    for path in (settings.signing_key, settings.signing_cert, settings.cert_store):
        if not path.exists():
            raise ConfigError(f"{path} does not exist (CARINA_SIGNING_KEY, _CERT, CARINA_CERT_STORE)")
    app.conf.update(task_serializer="auth", accept_content=["auth"], security_key=str(settings.signing_key),
                    security_certificate=str(settings.signing_cert),
                    security_cert_store=str(settings.cert_store / "*.pem"), security_digest=DIGEST)
    # JSON stays allowed for what is not a task message (results, events). Celery disables
    # every other serializer first, and "auth" can only be named once it is registered (a
    # second app in this process): named then, or it would stay disabled.
    from kombu.serialization import registry

    allowed = ["json", "auth"] if "auth" in registry.name_to_type else ["json"]
    app.setup_security(allowed_serializers=allowed, serializer="json", digest=DIGEST)


def make_keys(folder: Path, name: str = "carina") -> tuple[Path, Path, Path]:
    """A 3072-bit RSA key and a self-signed certificate for it (ten years) in ``folder``, and a
    store (``folder/certs``) trusting it: (key, certificate, store). The key is 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    (folder / STORE_DIR).mkdir(exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    (folder / STORE_DIR / f"{name}.pem").write_bytes(pem)
    return key_path, cert_path, folder / STORE_DIR


def environment(folder: Path) -> dict[str, str]:
    """The ``CARINA_*`` variables that point a process at the keys :func:`make_keys` made in ``folder``."""
    return {"CARINA_SIGNING_KEY": str(folder / KEY_FILE), "CARINA_SIGNING_CERT": str(folder / CERT_FILE),
            "CARINA_CERT_STORE": str(folder / STORE_DIR)}
