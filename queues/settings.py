"""The one settings object: every ``CARINA_*`` variable, read and validated in one place.

The seed's ``CROP_START_X/Y/Z`` and ``CROP_SIZE_X/Y/Z`` are read here too: they are the
operator's environment in Clara, the defaults of a job that gives no crop of its own.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from fastio.config import POSIX_SHM_DIR, FastIOConfig
from queues.connection import parse_sentinel_url
from queues.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REDIS_MASTER_NAME = "carina"
# The Redis outage (a restart, a failover) every part rides out: a follower's wait for its
# job, a worker's commands, a stage's publish of the next one.
REDIS_OUTAGE_S = 60.0
DEFAULT_NAMESPACE = "carina"
DEFAULT_FASTIO_LEASE_S = 6 * 3600
DEFAULT_FASTIO_POOL_MB = 4096
DEFAULT_FASTIO_MAP_CACHE_MB = 8192
DEFAULT_JANITOR_INTERVAL_S = 60.0
# Above the longest job: Redis redelivers an unacknowledged (acks_late) task after this.
DEFAULT_VISIBILITY_TIMEOUT_S = 12 * 3600
DEFAULT_JOB_TTL_S = 7 * 24 * 3600
DEFAULT_STAGE_SOFT_TIME_LIMIT_S = 6 * 3600.0
DEFAULT_STAGE_TIME_LIMIT_S = DEFAULT_STAGE_SOFT_TIME_LIMIT_S + 600
DEFAULT_DATA_ROOT = "."
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8080
DEFAULT_API_MAX_BODY_BYTES = 64 * 1024
DEFAULT_TRITON_URL = "127.0.0.1:8000"
DEFAULT_TRITON_TIMEOUT_S = 120.0
DEFAULT_SW_BATCH_SIZE = 4
DEFAULT_TILE_BATCH_SIZE = 16  # nuclei_unet's max_batch_size
DEFAULT_WORKER_HEARTBEAT_S = 10.0
DEFAULT_MAX_DELIVERIES = 3
DEFAULT_HOST_LOST_S = 300.0
DEFAULT_LOST_MESSAGE_S = 60.0
DEFAULT_MAX_RESTARTS = 2
DEFAULT_MAX_WINDOWS = 20_000  # about 2.5 h of 96³ windows on one CPU-only worker
DEFAULT_MAX_TILES = 1_000_000  # a 100k × 200k px slide's tissue at 256 px tiles is about a third of it
DEFAULT_WATCH_STABLE_S = 10.0
DEFAULT_WATCH_POLL_S = 5.0
CROP_AXES = "XYZ"
# Clara's job priorities as Redis message priorities: the transport keeps one list per step
# and a worker takes from the lowest step first, so 0 is the most urgent.
PRIORITIES = {"immediate": 0, "higher": 3, "normal": 6, "lower": 9}
DEFAULT_PRIORITY = "normal"
# The kinds of queue a stage runs on; each host also has its own of each (`host_queue`).
QUEUE_KINDS = ("io", "cpu", "gpu")


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    # The primary's name, with a sentinel:// URL (Redis Sentinel).
    redis_master_name: str = DEFAULT_REDIS_MASTER_NAME
    # The URLs of the role users (queues/roles.py), each with its user and password: a
    # process the CLI starts as a worker or a front door reaches Redis as its role's user
    # where that URL is set (`adopt_role`), and `carina redis` creates both users.
    redis_worker_url: str = ""
    redis_front_url: str = ""
    # The CA that signed a rediss:// (TLS) server's certificate, where it is not one the
    # system trusts.
    redis_ca: Path | None = None
    host_id: str = field(default_factory=socket.gethostname)
    namespace: str = DEFAULT_NAMESPACE
    shm_dir: Path = POSIX_SHM_DIR
    fastio_lease_s: float = DEFAULT_FASTIO_LEASE_S
    fastio_pool_mb: int = DEFAULT_FASTIO_POOL_MB
    fastio_map_cache_mb: int = DEFAULT_FASTIO_MAP_CACHE_MB
    janitor_interval_s: float = DEFAULT_JANITOR_INTERVAL_S
    # Each worker says it is alive this often; three missed beats and its stages are requeued.
    worker_heartbeat_s: float = DEFAULT_WORKER_HEARTBEAT_S
    # Starts of one stage of a job (its process died each time) before the job fails.
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    # A host none of whose workers has beaten this long is lost: the jobs whose memory it
    # holds start again from their input elsewhere, at most this many times each.
    host_lost_s: float = DEFAULT_HOST_LOST_S
    max_restarts: int = DEFAULT_MAX_RESTARTS
    # A job that has waited this long for its next stage, whose message the broker holds
    # nowhere (lost between a consumer's BRPOP and its reply), starts again from its input.
    lost_message_s: float = DEFAULT_LOST_MESSAGE_S
    # The most work one job may ask for: sliding windows (spleen-seg), tissue tiles (nuclei-seg).
    max_windows: int = DEFAULT_MAX_WINDOWS
    max_tiles: int = DEFAULT_MAX_TILES
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    # A stage running longer is interrupted (soft: an exception in the stage) or stopped (hard:
    # its process killed); either way its job fails with the limit named.
    stage_soft_time_limit_s: float = DEFAULT_STAGE_SOFT_TIME_LIMIT_S
    stage_time_limit_s: float = DEFAULT_STAGE_TIME_LIMIT_S
    job_ttl_s: float = DEFAULT_JOB_TTL_S
    crop_start: tuple[int, int, int] = (-1, -1, -1)
    crop_size: tuple[int, int, int] = (-1, -1, -1)
    # CARINA_DATA_ROOT, one folder or several separated by ':': every file a job reads or
    # writes lies inside one of them (queues/confine.py). The first is where the API
    # resolves relative paths and puts its results.
    data_roots: tuple[Path, ...] = (Path(DEFAULT_DATA_ROOT),)
    api_token: str = ""
    api_host: str = DEFAULT_API_HOST
    api_port: int = DEFAULT_API_PORT
    api_max_body_bytes: int = DEFAULT_API_MAX_BODY_BYTES
    # Inference: any Triton (KServe v2) HTTP endpoint; `carina triton` runs one locally.
    triton_url: str = DEFAULT_TRITON_URL
    triton_timeout_s: float = DEFAULT_TRITON_TIMEOUT_S
    # Tensors through Triton's system shared memory where the server can map this host's
    # /dev/shm (it falls back to binary HTTP by itself where it cannot).
    triton_shared_memory: bool = True
    sw_batch_size: int = DEFAULT_SW_BATCH_SIZE
    # Whole-slide tissue tiles per model request (nuclei-seg).
    tile_batch_size: int = DEFAULT_TILE_BATCH_SIZE
    # Watch folders: an entry starts a job once unchanged this long; the inbox is scanned this often.
    watch_stable_s: float = DEFAULT_WATCH_STABLE_S
    watch_poll_s: float = DEFAULT_WATCH_POLL_S
    watch_inbox: Path = Path("inbox")
    watch_output: Path = Path("results")
    # The watch folder's rules file (queues/rules.py; unset: the default rules, see `carina watch
    # --help`), so a Procfile or compose service needs no arguments; --rules wins.
    watch_rules: Path | None = None
    # Flower's basic auth, "user:password" (several comma-separated); required beyond loopback.
    flower_auth: str = ""
    flower_port: int = 5555
    metrics_port: int = 9808
    # The bearer token Prometheus sends (its scrape config's `authorization`); required beyond loopback.
    metrics_token: str = ""
    # The virtualenv holding the local Triton server (`carina triton`; scripts/setup_triton.sh).
    triton_venv: Path | None = None
    # Message signing (queues/signing.py): this process's key and certificate, and the folder
    # of certificates whose messages the workers accept; all three, or none.
    signing_key: Path | None = None
    signing_cert: Path | None = None
    cert_store: Path | None = None
    # The DICOM listener (queues/dicom_listener.py): its AE title and address, the calling AE
    # titles it accepts (comma-separated), its spool, where its jobs write, how long a series
    # must be quiet to be complete, and what an instance of a series already processed starts.
    dicom_ae_title: str = "CARINA"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_allowed_aes: tuple[str, ...] = ()
    dicom_allowed_addresses: tuple[str, ...] = ()
    dicom_spool: Path = Path("dicom-spool")
    dicom_output: Path = Path("results")
    dicom_stable_s: float = 10.0
    dicom_resent: str = "new-job"
    dicom_aborted: str = "complete"
    # The rules that pick each complete series' pipeline (queues/rules.py; unset: CT abdomen →
    # spleen-seg, other DICOM → 3dblur), so a Procfile or compose service needs no arguments.
    dicom_rules: Path | None = None
    # When an instance reaches the disk: "each", before it is answered; "batch", fsynced with
    # those that came in the same fraction of a second (the listener's FLUSH_S); "series", with
    # the rest of its series once it is complete (as DCMTK's storescp, which never fsyncs, until
    # then: a host lost meanwhile shows as a series incomplete, never run). Always before its
    # series' job starts.
    dicom_fsync: str = "batch"
    # How long a series stays in the spool once its job is done and its results acknowledged
    # (unset: for ever); failed, unrouted and undelivered series are always kept.
    dicom_spool_retain_s: float | None = None
    # Where results are sent (queues/dispatch.py): NAME=AE_TITLE@HOST:PORT, comma-separated;
    # the outbox; attempts before the dead letter and the first wait between them (doubling).
    dicom_destinations: tuple[str, ...] = ()
    # The destinations that also get each result's Secondary Capture preview (some viewers show no SEG).
    dicom_send_preview: tuple[str, ...] = ()
    dicom_outbox: Path = Path("dicom-outbox")
    dicom_send_attempts: int = 5
    dicom_send_backoff_s: float = 2.0
    # The listener's associations at once (one more is rejected, "local limit exceeded"), and
    # how long an association may be silent before it is aborted.
    dicom_max_associations: int = 16
    dicom_timeout_s: float = 60.0
    # A folder of pipeline definitions beside the project's own (queues/catalogue.py).
    pipelines_dir: Path | None = None
    # Where `carina redis` keeps its append-only file.
    redis_dir: Path = Path("redis-data")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read ``env`` (default ``os.environ``). Raises ConfigError naming the bad variable."""
        env = os.environ if env is None else env
        kwargs: dict[str, object] = {}
        for name, convert in _VARIABLES.items():
            var = f"CARINA_{name.upper()}"
            if env.get(var, "") != "":
                try:
                    kwargs[name] = convert(env[var])
                except ValueError as e:
                    raise ConfigError(f"{var}={env[var]!r}: {e}") from e
        if "data_root" in kwargs:  # one variable, CARINA_DATA_ROOT, for one root or several
            kwargs["data_roots"] = kwargs.pop("data_root")
        kwargs["crop_start"] = tuple(_crop_var(env, f"CROP_START_{a}") for a in CROP_AXES)
        kwargs["crop_size"] = tuple(_crop_var(env, f"CROP_SIZE_{a}") for a in CROP_AXES)
        settings = cls(**kwargs)  # type: ignore[arg-type]
        settings.fastio_config()  # validates host id and namespace
        return settings

    def __post_init__(self) -> None:
        for url in (self.redis_url, self.redis_worker_url, self.redis_front_url):
            if url:
                parse_sentinel_url(url)
        for name in ("fastio_lease_s", "janitor_interval_s", "visibility_timeout_s", "job_ttl_s", "triton_timeout_s",
                     "sw_batch_size", "tile_batch_size", "watch_poll_s", "worker_heartbeat_s", "max_deliveries",
                     "host_lost_s", "max_windows", "max_tiles", "lost_message_s", "dicom_stable_s", "dicom_send_backoff_s",
                     "dicom_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"CARINA_{name.upper()} must be > 0")
        if self.flower_auth and not all(":" in pair.strip()[1:-1] for pair in self.flower_auth.split(",")):
            raise ConfigError("CARINA_FLOWER_AUTH must be user:password pairs, comma-separated")
        if not 0 < self.stage_soft_time_limit_s < self.stage_time_limit_s < self.visibility_timeout_s:
            raise ConfigError("CARINA_STAGE_SOFT_TIME_LIMIT_S < CARINA_STAGE_TIME_LIMIT_S < "
                              "CARINA_VISIBILITY_TIMEOUT_S is required (a stage stopped before Redis redelivers it)")
        if self.dicom_spool_retain_s is not None and not 0 <= self.dicom_spool_retain_s < self.job_ttl_s:
            raise ConfigError("CARINA_DICOM_SPOOL_RETAIN_S must be >= 0 and below CARINA_JOB_TTL_S (the listener "
                              "forgets a series with its job, and then no longer knows it may be removed)")
        if self.watch_stable_s < 0:
            raise ConfigError("CARINA_WATCH_STABLE_S must be >= 0")

    def role_url(self, role: str) -> str:
        """The Redis URL of ``role`` (worker, front): its own where set, else CARINA_REDIS_URL."""
        return {"worker": self.redis_worker_url, "front": self.redis_front_url}.get(role) or self.redis_url

    @property
    def triton_http_url(self) -> str:
        """CARINA_TRITON_URL with its scheme, for plain HTTP clients (tritonclient takes it without)."""
        return f"http://{self.triton_url.removeprefix('http://').rstrip('/')}"

    @property
    def data_root(self) -> Path:
        """The first data root: where the API resolves relative paths and writes its results."""
        return self.data_roots[0]

    def fastio_config(self) -> FastIOConfig:
        try:
            return FastIOConfig(
                host_id=self.host_id, shm_dir=self.shm_dir, namespace=self.namespace,
                lease_s=self.fastio_lease_s, pool_limit_bytes=self.fastio_pool_mb * 2**20,
                map_cache_bytes=self.fastio_map_cache_mb * 2**20)
        except ValueError as e:
            raise ConfigError(f"invalid FastIO setting: {e}") from e

    def host_queue(self, kind: str, host_id: str | None = None) -> str:
        """The queue of ``kind`` (io, cpu, gpu) bound to one host, for stages sharing memory."""
        return f"{kind}.{host_id or self.host_id}"

    def folder_key(self, kind: str, folder: Path) -> str:
        """The Redis key of what a front door records about one folder of this host (a watch
        folder's inbox, a DICOM listener's spool or outbox): two front doors of one name on
        different folders, or hosts, never share their records."""
        digest = hashlib.sha256(str(Path(folder).absolute()).encode()).hexdigest()[:16]
        return f"{self.namespace}:{kind}:{self.host_id}:{digest}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ConfigError("must be >= 0")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError("expected true/false (1/0, yes/no, on/off)")


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _paths(text: str) -> tuple[Path, ...]:
    paths = tuple(Path(p) for p in text.split(os.pathsep) if p.strip())
    if not paths:
        raise ConfigError("expected one folder, or several separated by ':'")
    return paths


def _crop_var(env: Mapping[str, str], name: str) -> int:
    text = env.get(name, "").strip()
    if text == "":
        return -1
    try:
        return int(text)
    except ValueError as e:
        raise ConfigError(f"{name}={text!r} is not an integer") from e


_VARIABLES = {
    "redis_url": str,
    "redis_master_name": str,
    "redis_worker_url": str,
    "redis_front_url": str,
    "redis_ca": Path,
    "host_id": str,
    "namespace": str,
    "shm_dir": Path,
    "fastio_lease_s": float,
    "fastio_pool_mb": _positive_int,
    "fastio_map_cache_mb": _positive_int,
    "janitor_interval_s": float,
    "worker_heartbeat_s": float,
    "max_deliveries": _positive_int,
    "host_lost_s": float,
    "max_restarts": _positive_int,
    "lost_message_s": float,
    "max_windows": _positive_int,
    "max_tiles": _positive_int,
    "visibility_timeout_s": float,
    "stage_soft_time_limit_s": float,
    "stage_time_limit_s": float,
    "job_ttl_s": float,
    "api_token": str,
    "api_host": str,
    "api_port": _positive_int,
    "api_max_body_bytes": _positive_int,
    "triton_url": str,
    "triton_timeout_s": float,
    "triton_shared_memory": _boolean,
    "sw_batch_size": _positive_int,
    "tile_batch_size": _positive_int,
    "watch_stable_s": float,
    "watch_rules": Path,
    "watch_poll_s": float,
    "flower_auth": str,
    "flower_port": _positive_int,
    "metrics_port": _positive_int,
    "metrics_token": str,
    "watch_inbox": Path,
    "watch_output": Path,
    "data_root": _paths,
    "signing_key": Path,
    "signing_cert": Path,
    "cert_store": Path,
    "triton_venv": Path,
    "redis_dir": Path,
    "pipelines_dir": Path,
    "dicom_ae_title": str,
    "dicom_host": str,
    "dicom_port": _positive_int,
    "dicom_allowed_aes": _names,
    "dicom_allowed_addresses": _names,
    "dicom_spool": Path,
    "dicom_output": Path,
    "dicom_stable_s": float,
    "dicom_resent": str,
    "dicom_aborted": str,
    "dicom_rules": Path,
    "dicom_fsync": str,
    "dicom_spool_retain_s": float,
    "dicom_destinations": _names,
    "dicom_send_preview": _names,
    "dicom_outbox": Path,
    "dicom_send_attempts": _positive_int,
    "dicom_send_backoff_s": float,
    "dicom_max_associations": _positive_int,
    "dicom_timeout_s": float,
}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings.from_env()


def adopt_role(role: str) -> Settings:
    """Make this process, and every process it starts (a worker's pool, a supervised child),
    reach Redis as ``role``'s user, where CARINA_REDIS_<ROLE>_URL is set; return the settings.
    The environment is where the URL goes, because Celery's children read theirs anew."""
    url = get_settings().role_url(role)
    if url != get_settings().redis_url:
        os.environ["CARINA_REDIS_URL"] = url
        get_settings.cache_clear()
    return get_settings()
