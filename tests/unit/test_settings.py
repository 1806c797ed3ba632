"""The one settings object: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from queues.errors import ConfigError
from queues.settings import DEFAULT_REDIS_URL, Settings


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s.redis_url == DEFAULT_REDIS_URL and s.namespace == "carina"
    assert s.crop_start == (-1, -1, -1) and s.crop_size == (-1, -1, -1)
    assert s.fastio_config().shm_dir == Path("/dev/shm")


def test_variables_are_read_and_converted():
    s = Settings.from_env({"CARINA_REDIS_URL": "redis://r:1/2", "CARINA_HOST_ID": "gpu-07",
                           "CARINA_FASTIO_POOL_MB": "16", "CROP_START_Z": "5", "CROP_SIZE_X": " 7 "})
    assert s.redis_url == "redis://r:1/2" and s.host_queue("gpu") == "gpu.gpu-07"
    assert s.fastio_config().pool_limit_bytes == 16 * 2**20
    assert s.crop_start == (-1, -1, 5) and s.crop_size == (7, -1, -1)


def test_each_folder_of_each_host_has_its_own_records(tmp_path, monkeypatch):
    """Two DICOM listeners of one AE title (or two watch folders) on different spools, or hosts,
    must not decide on each other's series; one restarted on its spool finds its own."""
    monkeypatch.chdir(tmp_path)
    here, there = Settings.from_env({"CARINA_HOST_ID": "a"}), Settings.from_env({"CARINA_HOST_ID": "b"})
    assert here.folder_key("dicom:CARINA", Path("spool")) == here.folder_key("dicom:CARINA", tmp_path / "spool")
    keys = {here.folder_key("dicom:CARINA", tmp_path / "spool"), here.folder_key("dicom:CARINA", tmp_path / "other"),
            there.folder_key("dicom:CARINA", tmp_path / "spool"), here.folder_key("dicom:PEER", tmp_path / "spool")}
    assert len(keys) == 4 and all(k.startswith("carina:dicom:") for k in keys)


@pytest.mark.parametrize("text, expected", [("0", False), ("off", False), ("No", False), ("1", True), ("true", True)])
def test_booleans(text, expected):
    assert Settings.from_env({}).triton_shared_memory is True
    assert Settings.from_env({"CARINA_TRITON_SHARED_MEMORY": text}).triton_shared_memory is expected


@pytest.mark.parametrize("env, message", [
    ({"CARINA_FASTIO_POOL_MB": "lots"}, "CARINA_FASTIO_POOL_MB='lots'"),
    ({"CARINA_FASTIO_LEASE_S": "0"}, "CARINA_FASTIO_LEASE_S must be > 0"),
    ({"CARINA_REDIS_URL": "http://x"}, "expected redis://"),
    ({"CARINA_REDIS_URL": "sentinel://h:1/2;sentinel://g:1"}, "every sentinel:// part must name the same database"),
    ({"CARINA_REDIS_URL": "sentinel://h"}, "'sentinel://h' is not sentinel://host:port"),
    ({"CARINA_HOST_ID": "a/b"}, "host_id"),
    ({"CROP_START_X": "1.5"}, "CROP_START_X='1.5' is not an integer"),
    ({"CARINA_TRITON_SHARED_MEMORY": "maybe"}, "CARINA_TRITON_SHARED_MEMORY='maybe': expected true/false"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_the_sentinel_form_names_each_sentinel_the_database_and_the_primarys_password():
    from queues.connection import SentinelAddress, parse_sentinel_url

    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    assert parse_sentinel_url("sentinel://:pw@a:26379/3; sentinel://:pw@b:26380/3") == SentinelAddress(
        (("a", 26379), ("b", 26380)), 3, "pw")


@pytest.mark.parametrize("retain", ["-1", "3600"])
def test_a_spool_retention_must_end_before_the_listener_forgets_the_series(retain):
    with pytest.raises(ConfigError, match="CARINA_DICOM_SPOOL_RETAIN_S must be >= 0 and below CARINA_JOB_TTL_S"):
        Settings.from_env({"CARINA_DICOM_SPOOL_RETAIN_S": retain, "CARINA_JOB_TTL_S": "3600"})
