"""Redis over TLS (rediss://), as on several hosts: a worker and the front doors verify the
server's certificate against a private CA and run a job; without the CA, or in plain text,
nothing gets through."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid

import numpy as np
import pytest
import redis

from carina.errors import ServiceError
from carina.local import LocalRedis, start_worker, stop_process_group, tls_redis_server_binary
from ops.volume import write_volume
from tests.helpers import GEOMETRY, worker_env


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory):
    try:
        tls_redis_server_binary()
    except ServiceError as e:
        pytest.skip(str(e))
    namespace = f"tls{uuid.uuid4().hex[:6]}"
    root = tmp_path_factory.mktemp("tls-data")
    shm = tempfile.mkdtemp(prefix="carina-tls-", dir="/dev/shm")
    with LocalRedis(tls=True, role_users=True, namespace=namespace) as server:
        envs = {role: worker_env(server.url_for(role), namespace, "127.0.0.1:1", shm_dir=shm,
                                 CARINA_DATA_ROOT=str(root), CARINA_REDIS_CA=str(server.tls_files.ca))
                for role in ("worker", "front")}
        worker = start_worker(envs["worker"], root / "worker.log", "io,cpu", concurrency=1, host_id="host-a")
        try:
            yield server, envs, root
        finally:
            stop_process_group(worker)
            shutil.rmtree(shm, ignore_errors=True)


def test_a_job_runs_with_every_connection_on_tls(tls_stack):
    server, envs, root = tls_stack
    write_volume(np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8), GEOMETRY, root / "ct.mhd")
    done = subprocess.run([sys.executable, "-m", "carina", "submit", "fastio-itk", "-i", str(root / "ct.mhd"),
                           "-o", str(root / "out"), "--crop-size", "4", "4", "2", "--wait"],
                          env=envs["front"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "out" / "output.mhd").exists()
    admin = redis.Redis.from_url(server.url, ssl_ca_certs=str(server.tls_files.ca), ssl_cert_reqs="required")
    clients = admin.client_list()
    assert clients and all(client["user"] in ("default", "carina-worker") for client in clients)


def test_without_the_ca_or_without_tls_nothing_gets_through(tls_stack):
    server, envs, _ = tls_stack
    unverified = subprocess.run([sys.executable, "-m", "carina", "jobs"],
                                env={**envs["front"], "CARINA_REDIS_CA": ""}, capture_output=True, text=True,
                                timeout=120)
    assert unverified.returncode == 2 and "certificate verify failed" in unverified.stderr
    assert len(unverified.stderr.strip().splitlines()) == 1  # one line, no traceback
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=server.port, password=server.password, socket_timeout=2).ping()
