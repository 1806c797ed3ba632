"""Real servers for the tests: one redis-server per session on a free loopback port."""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pydicom
import pytest
import redis

from fastio import FastIOConfig
from carina.local import LocalRedis
from queues.signing import environment as signing_environment, make_keys

pytest_plugins = ["tests.triton_fixtures"]
SHM = Path("/dev/shm")
# Every job of the suite reads and writes inside these data roots (the workers and the API
# inherit them): pytest's temporary folders, the repository's test data, pydicom's files.
DATA_ROOTS = (Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}", Path(__file__).parent / "data",
              Path(pydicom.data.__file__).parent)
os.environ.setdefault("CARINA_DATA_ROOT", os.pathsep.join(str(root) for root in DATA_ROOTS))
# Every message the suite's processes send is signed with a key made for this session.
KEYS = Path(tempfile.mkdtemp(prefix="carina-test-keys-"))
make_keys(KEYS)
for _name, _value in signing_environment(KEYS).items():
    os.environ.setdefault(_name, _value)
_shm_before: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _shm_before.update(p.name for p in SHM.iterdir())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if the suite left anything in /dev/shm: FastIO segments and pools, Triton's
    regions, test folders. Runs after every fixture has been torn down."""
    shutil.rmtree(KEYS, ignore_errors=True)
    left = sorted(p.name for p in SHM.iterdir() if p.name not in _shm_before)
    if left:
        session.config.get_terminal_writer().line(
            f"the suite left {len(left)} entries in /dev/shm: {', '.join(left[:10])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def redis_server():
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server):
    """Database 0, emptied around each test (running deployments use other databases)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def shm_dir():
    """A private directory on tmpfs, so tests see only their own segments."""
    path = Path(tempfile.mkdtemp(prefix="carina-test-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fastio_config(shm_dir):
    return FastIOConfig(host_id="host-a", shm_dir=shm_dir, namespace=f"t{uuid.uuid4().hex[:8]}")
