"""Redis users per role (queues.roles): a whole job's path — CLI, API, watch folder, cancel,
workers, metrics — runs with the worker and front-door users and no denial, and each user is
refused what its role does not need."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid

import numpy as np
import pytest
import redis

from carina.local import LocalRedis, free_port, start_api, start_worker, stop_process_group
from ops.volume import write_volume
from queues.app import create_app
from queues.settings import Settings
from tests.helpers import GEOMETRY, wait_until, worker_env
from tests.integration.test_api import TOKEN, call, follow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Redis with the role users, one io+cpu worker as ``worker``, the API as ``front``."""
    namespace = f"roles{uuid.uuid4().hex[:6]}"
    root = tmp_path_factory.mktemp("roles-data")
    (root / "study").mkdir()
    write_volume(np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10), GEOMETRY, root / "study" / "ct.mhd")
    logs = tmp_path_factory.mktemp("roles-logs")
    shm = tempfile.mkdtemp(prefix="carina-roles-", dir="/dev/shm")
    with LocalRedis(role_users=True, namespace=namespace) as server:
        envs = {role: worker_env(server.url_for(role), namespace, "127.0.0.1:1", shm_dir=shm,
                                 CARINA_DATA_ROOT=str(root), CARINA_API_TOKEN=TOKEN) for role in ("worker", "front")}
        worker = start_worker(envs["worker"], logs / "worker.log", "io,cpu", concurrency=1, host_id="host-a")
        port = free_port()
        api = start_api(envs["front"], port, logs / "api.log")
        try:
            yield server, envs, root, f"http://127.0.0.1:{port}"
        finally:
            stop_process_group(api)
            stop_process_group(worker)
            shutil.rmtree(shm, ignore_errors=True)


def carina(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "carina", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def denials(server):
    """What the server refused, each as (user, command or key), but CLIENT: redis-py announces
    its name (CLIENT SETINFO) on every connection and goes on without it when refused, and
    CLIENT stays refused to both roles (it also lists, pauses and kills other clients)."""
    return [(entry["username"], entry["object"]) for entry in redis.Redis.from_url(server.url).acl_log()
            if entry["object"] != "client"]


def test_every_front_door_and_the_workers_run_a_job_with_their_own_users_and_no_denial(stack, tmp_path):
    server, envs, root, api = stack
    submitted = carina(envs["front"], "submit", "fastio-itk", "-i", str(root / "study"), "-o",
                       str(root / "cli-out"), "--crop-size", "4", "4", "2", "--wait")
    assert submitted.returncode == 0, (submitted.stderr[-2000:], denials(server))
    assert "state:    done" in carina(envs["front"], "status", submitted.stdout.strip()).stdout

    _, body = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "study"})
    assert follow(api, body["uid"])[0] == 200

    # A cancel through the API, while no worker takes from the io queue (the admin pauses it).
    control = create_app(Settings.from_env({**envs["worker"], "CARINA_REDIS_URL": server.url})).control
    assert control.cancel_consumer("io", reply=True, timeout=10)
    try:
        _, body = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "study"})
        assert call(f"{api}/job/{body['uid']}", "DELETE")[0] == 202
    finally:
        control.add_consumer("io", reply=True, timeout=10)
    assert follow(api, body["uid"])[0] == 410

    inbox = root / "inbox"
    inbox.mkdir()
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"pipeline": "fastio-itk", "kind": "volume"}]))
    watch = subprocess.Popen([sys.executable, "-m", "carina", "watch", str(inbox), "--rules", str(rules),
                              "--output", str(root / "watched"), "--stable-s", "0.5", "--poll-s", "0.2", "--poll"],
                             env=envs["front"],
                             stdout=(tmp_path / "watch.log").open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        write_volume(np.ones((4, 4, 4), np.int16), GEOMETRY, tmp_path / "drop.mhd")
        for name in ("drop.mhd", "drop.raw"):
            (tmp_path / name).rename(inbox / name)
        wait_until(lambda: (inbox / "done" / "drop.mhd").exists() or (inbox / "failed").exists(), 60, "the drop filed")
        assert (inbox / "done" / "drop.mhd").exists(), ((tmp_path / "watch.log").read_text()[-3000:], denials(server))
    finally:
        stop_process_group(watch)

    assert carina(envs["front"], "jobs").returncode == 0
    metrics = carina(envs["worker"], "metrics", "--once")
    assert metrics.returncode == 0 and 'carina_jobs{pipeline="fastio-itk",state="done"} 3.0' in metrics.stdout
    assert denials(server) == []


@pytest.mark.parametrize("role, command, args", [
    ("front", "get", ("{ns}:fastio:leases",)),  # where patient volumes lie in shared memory
    ("front", "hgetall", ("unacked",)),  # messages delivered to workers
    ("front", "brpop", ("io", 1)),  # taking a job's stage off its queue
    ("front", "delete", ("{ns}:job:x",)),
    ("front", "scan", (0,)),
    ("front", "config_set", ("dir", "/tmp")),
    ("front", "flushall", ()),
    ("worker", "config_set", ("dir", "/tmp")),  # Redis writing its files where it is told
    ("worker", "flushall", ()),
    ("worker", "keys", ("*",)),
    ("worker", "acl_setuser", ("intruder",)),
    ("worker", "shutdown", ()),
])
def test_each_user_is_refused_what_its_role_does_not_need(stack, role, command, args):
    server, envs, _, _ = stack
    namespace = envs[role]["CARINA_NAMESPACE"]
    client = redis.Redis.from_url(server.url_for(role))
    with pytest.raises(redis.exceptions.NoPermissionError):
        getattr(client, command)(*(a.format(ns=namespace) if isinstance(a, str) else a for a in args))
    assert client.ping()


def test_without_a_password_nothing_is_answered(stack):
    server, *_ = stack
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=server.port).get("anything")
