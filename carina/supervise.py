"""``carina worker`` keeps its Celery workers running: each one a child process, started again
when it exits on its own (an unrecoverable error, the OOM killer), so that a host never goes
silent; the lifecycle's lost-stage recovery then takes over the stages the dead one held.

Every start has a new node name (``argv`` is asked for again), so the one that died is seen
as lost, not as alive again. A child that dies more than ``max_restarts`` times within
``window_s`` is given up on: the others are stopped and its exit status returned. A child
that exits 0 (a warm shutdown asked by an operator) is not restarted. SIGTERM and SIGINT are
passed on to the children, and then nothing is restarted.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
DEFAULT_MAX_RESTARTS = 5
DEFAULT_WINDOW_S = 300.0
POLL_S = 0.5


@dataclass
class Child:
    """One supervised worker: how to start it (a fresh argv each time), and its environment."""

    name: str
    argv: Callable[[], list[str]]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    deaths: deque = field(default_factory=deque)  # times it died, within the window

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv(), env=self.env)


def supervise(children: Sequence[Child], max_restarts: int = DEFAULT_MAX_RESTARTS,
              window_s: float = DEFAULT_WINDOW_S) -> int:
    """Run ``children`` until they are stopped; returns the highest exit status seen last."""
    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    for child in children:
        child.start()
    running = list(children)
    codes: dict[str, int] = {}
    while running:
        time.sleep(POLL_S)
        for child in list(running):
            code = child.process.poll()
            if code is None:
                continue
            codes[child.name] = code
            if stopping.is_set() or code == 0:
                running.remove(child)
            elif not _restart(child, code, max_restarts, window_s):
                forward(signal.SIGTERM, None)
                running.remove(child)
    return max((abs(c) for c in codes.values()), default=0)


def _restart(child: Child, code: int, max_restarts: int, window_s: float) -> bool:
    """Start ``child`` again after it exited with ``code``; False when it died too often."""
    now = time.monotonic()
    child.deaths.append(now)
    while child.deaths and now - child.deaths[0] > window_s:
        child.deaths.popleft()
    how = f"signal {-code}" if code < 0 else f"status {code}"
    if len(child.deaths) > max_restarts:
        log.error("worker %s exited (%s) %d times in %.0f s: giving up", child.name, how, len(child.deaths), window_s)
        return False
    log.error("worker %s exited (%s); starting it again", child.name, how)
    time.sleep(RESTART_DELAY_S)
    child.start()
    return True
