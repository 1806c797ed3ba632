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


def test_carina_redis_keeps_an_append_only_file_fsynced_every_second(tmp_path):
    port = free_port()
    env = {**os.environ, "CARINA_REDIS_URL": f"redis://:pw-{port}@127.0.0.1:{port}/0",
           "CARINA_REDIS_DIR": str(tmp_path / "aof")}
    server = subprocess.Popen([sys.executable, "-m", "carina", "redis"], env=env, stdout=subprocess.DEVNULL,
                              start_new_session=True)
    client = redis.Redis(port=port, password=f"pw-{port}")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, "carina redis did not start"
                time.sleep(0.1)
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
