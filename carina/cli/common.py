"""What the CLI's modules share: exit statuses and logging."""

from __future__ import annotations

import logging

EXIT_FAILED = 1
EXIT_REFUSED = 2


def log_to_stderr() -> None:
    """Timestamped log lines for the long-running services."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
