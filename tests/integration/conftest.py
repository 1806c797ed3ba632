"""Real Celery workers (prefork subprocesses, as in production) for pipeline tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from queues.app import create_app
from queues.jobs import JobStore
from carina.local import start_worker, stop_process_group
from queues.settings import Settings

from tests.helpers import remove_segments

@dataclass
class Deployment:
    """One namespace on the session's redis-server, running workers. Segments lie in /dev/shm
    itself, as in production (POSIX shm names: Triton can map them), told apart by the
    namespace that starts their names."""

    env: dict[str, str]
    settings: Settings
    logs: list[Path]

    def segment_files(self, hosts: tuple[str, ...] | None = None) -> set[str]:
        """Names of this deployment's segment files: of ``hosts``, or of every host."""
        prefixes = [f"{self.settings.namespace}-"] if hosts is None else [
            self.settings_for(h).fastio_config().segment_prefix for h in hosts]
        return {p.name for p in self.settings.shm_dir.iterdir() if p.name.startswith(tuple(prefixes))}

    def settings_for(self, host_id: str) -> Settings:
        return Settings.from_env({**self.env, "CARINA_HOST_ID": host_id})

    @property
    def app(self):
        return create_app(self.settings)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url)

    def jobs(self) -> JobStore:
        return JobStore(self.client(), self.settings.namespace, self.settings.job_ttl_s)

    def log_tail(self, nchars: int = 3000) -> str:
        """The last ``nchars`` of each worker group's log."""
        return "\n".join(p.read_text()[-nchars:] for p in self.logs)


@pytest.fixture(scope="session")
def deployment(redis_server, project_triton):
    """Two worker groups on this one machine posing as hosts ``host-a`` and ``host-b``."""
    logdir = Path(tempfile.mkdtemp(prefix="carina-it-logs-"))
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/1"),
           "CARINA_NAMESPACE": f"it{uuid.uuid4().hex[:8]}", "CARINA_SHM_DIR": "/dev/shm",
           "CARINA_HOST_ID": "host-a", "CARINA_JANITOR_INTERVAL_S": "3600",
           "CARINA_TRITON_URL": project_triton.url, "CARINA_TRITON_TIMEOUT_S": "60"}
    for name in [k for k in env if k.startswith("CROP_")]:
        del env[name]
    logs = [logdir / "host-a.log", logdir / "host-b.log"]
    deployment = Deployment(env, Settings.from_env(env), logs)
    procs = []
    try:
        procs.append(start_worker(env, logs[0], "io,cpu,gpu", concurrency=1, host_id="host-a"))
        procs.append(start_worker(env, logs[1], "io,cpu,gpu", concurrency=1, host_id="host-b"))
        yield deployment
    finally:
        for proc in procs:
            stop_process_group(proc)
        remove_segments(deployment.settings)
        shutil.rmtree(logdir, ignore_errors=True)


@pytest.fixture
def sample(tmp_path):
    """A small (z, y, x) int16 volume written as ``in/ct.mhd``: ``(path, array)``."""
    import numpy as np

    from ops.volume import write_volume
    from tests.helpers import GEOMETRY

    volume = (np.arange(12 * 20 * 16, dtype=np.int16) % 1000).reshape(12, 20, 16)
    (tmp_path / "in").mkdir()
    return write_volume(volume, GEOMETRY, tmp_path / "in" / "ct.mhd"), volume
