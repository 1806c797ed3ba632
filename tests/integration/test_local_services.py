"""The local services the project starts: `carina redis` keeps its data, and lets in only
clients that give its password."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil
import pytest
import redis

from carina.local import free_port, stop_process_group


def start_carina_redis(env: dict[str, str], client: redis.Redis) -> subprocess.Popen:
    """``carina redis`` in its own process group, once ``client`` (its admin) gets an answer."""
    server = subprocess.Popen([sys.executable, "-m", "carina", "redis"], env=env, stdout=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            assert time.monotonic() < deadline and server.poll() is None, "carina redis did not start"
            time.sleep(0.1)


def test_carina_redis_keeps_an_append_only_file_fsynced_every_second(tmp_path):
    port = free_port()
    env = {**os.environ, "CARINA_REDIS_URL": f"redis://:pw-{port}@127.0.0.1:{port}/0",
           "CARINA_REDIS_DIR": str(tmp_path / "aof")}
    client = redis.Redis(port=port, password=f"pw-{port}")
    server = start_carina_redis(env, client)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()  # a local user without the password
        assert f"pw-{port}" not in " ".join(psutil.Process(server.pid).cmdline())
        client.set("kept", "1")
        with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it stops
            client.shutdown()
    finally:
        client.close()
        stop_process_group(server)
    assert any((tmp_path / "aof").rglob("*.aof"))


def test_carina_redis_refuses_to_run_without_a_password(tmp_path):
    env = {**os.environ, "CARINA_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "CARINA_REDIS_DIR": str(tmp_path)}
    refused = subprocess.run([sys.executable, "-m", "carina", "redis"], env=env, capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 2 and "has no password" in refused.stderr


def test_carina_redis_creates_the_role_users_and_each_command_adopts_its_role(tmp_path):
    port = free_port()
    urls = {role: f"redis://carina-{role}:{role}-pw-{port}@127.0.0.1:{port}/0" for role in ("worker", "front")}
    env = {**os.environ, "CARINA_REDIS_URL": f"redis://:admin-{port}@127.0.0.1:{port}/0",
           "CARINA_REDIS_DIR": str(tmp_path / "aof"), "CARINA_REDIS_WORKER_URL": urls["worker"],
           "CARINA_REDIS_FRONT_URL": urls["front"]}
    admin = redis.Redis(port=port, password=f"admin-{port}")
    server = start_carina_redis(env, admin)
    try:
        front, worker = (redis.Redis.from_url(urls[role]) for role in ("front", "worker"))
        assert front.hset("carina:job:x", "state", "queued") == 1 and worker.get("carina:fastio:leases") is None
        with pytest.raises(redis.exceptions.NoPermissionError):
            front.get("carina:fastio:leases")
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.config_set("dir", str(tmp_path))
        assert not any(f"pw-{port}" in part for part in psutil.Process(server.pid).cmdline())
        # A front door's command with a wrong admin password still works: it uses its own user.
        status = subprocess.run([sys.executable, "-m", "carina", "status", "no-such-job"],
                                env={**env, "CARINA_REDIS_URL": f"redis://:wrong@127.0.0.1:{port}/0"},
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 2 and "no-such-job" in status.stderr and "auth" not in status.stderr.lower()
    finally:
        admin.close()
        stop_process_group(server)


def test_carina_redis_prints_the_role_users_for_another_servers_acl_file():
    env = {**os.environ, "CARINA_REDIS_WORKER_URL": "rediss://carina-worker:w-secret@redis.example:6380/0",
           "CARINA_REDIS_FRONT_URL": "rediss://carina-front:f-secret@redis.example:6380/0"}
    printed = subprocess.run([sys.executable, "-m", "carina", "redis", "--acl"], env=env, capture_output=True,
                             text=True, timeout=30)
    lines = printed.stdout.splitlines()
    assert printed.returncode == 0 and [line.split()[1] for line in lines] == ["carina-worker", "carina-front"]
    assert "secret" not in printed.stdout and all(" on #" in line for line in lines)


def test_carina_redis_refuses_a_role_url_without_a_user(tmp_path):
    port = free_port()
    env = {**os.environ, "CARINA_REDIS_URL": f"redis://:pw@127.0.0.1:{port}/0", "CARINA_REDIS_DIR": str(tmp_path),
           "CARINA_REDIS_FRONT_URL": f"redis://:secret@127.0.0.1:{port}/0"}
    refused = subprocess.run([sys.executable, "-m", "carina", "redis"], env=env, capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 2 and "CARINA_REDIS_FRONT_URL" in refused.stderr and "secret" not in refused.stderr
