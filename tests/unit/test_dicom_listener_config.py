"""queues.dicom_listener without a network: who may send, the policy for a series sent again,
which UIDs may become path parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from queues.dicom_listener import ListenerConfig, is_uid
from queues.errors import ConfigError
from queues.settings import Settings


def config(**changes):
    return ListenerConfig(**{"ae_title": "CARINA", "host": "127.0.0.1", "port": 11112, "allowed_aes": ("CT1",),
                             "spool": Path("spool"), "output_root": Path("out"), "stable_s": 10.0,
                             "outbox": Path("outbox"), **changes})


@pytest.mark.parametrize("changes, message", [
    ({"allowed_aes": ()}, "accepts no calling AE title: set CARINA_DICOM_ALLOWED_AES"),
    ({"resent": "merge"}, "CARINA_DICOM_RESENT='merge': one of new-job, ignore"),
    ({"aborted": "drop"}, "CARINA_DICOM_ABORTED='drop': one of complete, incomplete"),
    ({"fsync": "never"}, "CARINA_DICOM_FSYNC='never': one of batch, series, each"),
    ({"ae_title": "A" * 17}, "1 to 16 printable characters"),
    ({"allowed_aes": ("CT\\1",)}, "no backslash"),
])
def test_a_listener_nobody_may_send_to_or_with_a_bad_policy_is_refused(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config(**changes)


def test_the_settings_read_the_allowed_titles_as_a_list():
    settings = Settings.from_env({"CARINA_DICOM_ALLOWED_AES": "CT1, MR2,,PACS", "CARINA_DICOM_STABLE_S": "2.5"})
    assert settings.dicom_allowed_aes == ("CT1", "MR2", "PACS") and settings.dicom_stable_s == 2.5
    with pytest.raises(ConfigError, match="CARINA_DICOM_STABLE_S must be > 0"):
        Settings.from_env({"CARINA_DICOM_STABLE_S": "0"})


@pytest.mark.parametrize("value, ok", [("1.2.840.10008.5.1.4.1.1.2", True), ("1", True), ("../../x", False),
                                       ("1..2", False), ("1.2.", False), ("1" * 65, False), ("", False),
                                       ("1.2/3", False), (None, False)])
def test_only_a_dicom_uid_may_become_a_folder_name(value, ok):
    assert is_uid(value) is ok
