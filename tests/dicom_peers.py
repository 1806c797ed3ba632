"""``carina dicom-listen`` run as its users run it, for the tests that send it studies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from carina.local import free_port
from queues.dicom_listener import SUBMITTED, Series
from queues.settings import Settings
from tests.helpers import wait_until

STABLE_S = 1.5  # the tests' series are quiet this long once sent


class RunningListener:
    """``carina dicom-listen`` in a process group of its own, on a free loopback port, its
    spool, results and outbox under ``root``, its log in ``root/listener.log``.

    Args:
        env: the deployment's environment; ``variables`` add ``CARINA_*`` ones.
        rules: the rules file's content; allow: the calling AE titles it accepts; spool: its
            spool (default ``root/spool``).
    """

    def __init__(self, env: dict[str, str], root: Path, rules: list[dict], allow: str, spool: Path | None = None,
                 **variables: str):
        self.root, self.port = root, free_port()
        self.spool, self.output, self.log = spool or root / "spool", root / "results", root / "listener.log"
        self.outbox = root / "outbox"
        self.env = {**env, **variables}
        (root / "rules.json").write_text(json.dumps(rules))
        self.argv = [sys.executable, "-m", "carina", "dicom-listen", "--port", str(self.port), "--allow", allow,
                     "--spool", str(self.spool), "--output", str(self.output), "--rules", str(root / "rules.json"),
                     "--stable-s", str(STABLE_S), "--outbox", str(self.outbox)]
        self.process: subprocess.Popen | None = None
        self.records_key = Settings.from_env(self.env).folder_key("dicom:CARINA", self.spool)

    def start(self) -> None:
        out = open(self.log, "a")
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until(lambda: "listening on" in self.log.read_text() or self.process.poll() is not None, 60,
                   "the listener")
        assert self.process.poll() is None, self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def records(self, client: redis.Redis) -> dict[str, Series]:
        return {k.decode(): Series(**json.loads(v)) for k, v in client.hgetall(self.records_key).items()}

    def finished(self, client: redis.Redis, series_uid: str, generation: int = 1, timeout_s: float = 180) -> Series:
        """The series' record once its job (of ``generation``) has ended, or no rule took it."""
        def ended() -> bool:
            record = self.records(client).get(series_uid)
            return record is not None and record.generation == generation and record.state not in ("receiving",
                                                                                                       SUBMITTED)
        wait_until(ended, timeout_s, f"series {series_uid} generation {generation}")
        return self.records(client)[series_uid]
