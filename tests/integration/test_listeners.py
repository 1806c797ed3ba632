"""One rule for every listener: nothing listens beyond loopback without credentials. The CLI's
commands that take a listening address are found by reading its parser, so a listener added
later is held to the rule too."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from carina.cli import parser
from carina.local import free_port
from tests.helpers import http_get

# Each listener, and the setting that gives it credentials.
CREDENTIALS = {"api": "CARINA_API_TOKEN", "flower": "CARINA_FLOWER_AUTH", "metrics": "CARINA_METRICS_TOKEN",
               "redis": "CARINA_REDIS_URL", "dicom-listen": "CARINA_DICOM_ALLOWED_AES"}


def listeners() -> dict[str, str]:
    """CLI command → its option naming the address to listen on."""
    [commands] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    found = {}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if {"--host", "--address"} & set(action.option_strings):
                found[name] = action.option_strings[0]
    return found


def test_every_listener_is_known_and_refuses_every_interface_without_credentials(redis_server):
    assert set(listeners()) == set(CREDENTIALS)  # a new listener: give it credentials and list it here
    bare = {k: v for k, v in os.environ.items() if k not in CREDENTIALS.values()}
    bare["CARINA_REDIS_URL"] = f"redis://127.0.0.1:{redis_server.port}/0"  # Redis's credentials: none
    for command, option in listeners().items():
        refused = subprocess.run([sys.executable, "-m", "carina", command, option, "0.0.0.0"], env=bare,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, (command, refused.stderr[-2000:])
        assert "without credentials" in refused.stderr and CREDENTIALS[command] in refused.stderr


@pytest.mark.parametrize("authorization, expected", [(None, 401), ("Bearer wrong", 401), ("Bearer m3trics", 200),
                                                     ("bearer m3trics", 200)])
def test_metrics_with_a_token_answer_only_to_it(redis_server, authorization, expected, tmp_path):
    port = free_port()
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url, "CARINA_METRICS_TOKEN": "m3trics"}
    with open(tmp_path / "metrics.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "carina", "metrics", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        http_get(f"http://127.0.0.1:{port}/metrics", 30, headers={"Authorization": "Bearer m3trics"})
        headers = {"Authorization": authorization} if authorization else {}
        status, text = http_get(f"http://127.0.0.1:{port}/metrics", 5, headers=headers)
        assert status == expected
        assert ("carina_up" in text) == (expected == 200)
    finally:
        server.terminate()
        server.wait(10)
