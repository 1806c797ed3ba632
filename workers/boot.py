"""Worker process life cycle: warm heavy libraries before forking, beat a heartbeat, run the janitor."""

from __future__ import annotations

import logging
import os
import threading

from celery import signals

from queues.presence import beat
from queues.settings import get_settings
from queues.signing import signing_enabled
from workers.janitor import janitor_pass
from workers.runtime import redis_client

log = logging.getLogger(__name__)


_pool_processes = 1


@signals.worker_init.connect
def remember_pool_size(sender: object = None, **_: object) -> None:
    """Note how many pool processes will share this host's cores (children inherit it)."""
    global _pool_processes
    _pool_processes = max(1, int(getattr(sender, "concurrency", 1) or 1))


@signals.worker_process_init.connect
def share_cores(**_: object) -> None:
    """Give each pool process its share of the cores for numba's parallel loops.

    Otherwise every process starts one thread per core and N processes fight over them.
    """
    import numba

    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, (os.cpu_count() or 1) // _pool_processes)))


@signals.worker_init.connect
def warm_itk(**_: object) -> None:
    """Load ITK's wrappers in the parent so every forked child shares them.

    ITK loads each filter family lazily: seconds and hundreds of MB per process otherwise.
    """
    import numpy as np

    from ops.crop import crop_volume
    from ops.volume import image_view

    probe = np.zeros((2, 2, 2), np.int16)
    geometry = {"spacing": [1.0] * 3, "origin": [0.0] * 3, "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}
    crop_volume(probe, geometry, (0, 0, 0), (1, 1, 1))
    image_view(probe.astype(np.float32), geometry)
    import itk

    itk.ImageFileReader, itk.ImageFileWriter  # noqa: B018  (resolves the lazy IO modules)
    log.info("ITK warmed in the worker parent")


@signals.worker_ready.connect
def start_janitor(sender: object = None, **_: object) -> None:
    """From the worker's main process: beat its heartbeat, and periodically sweep this host's
    FastIO memory and requeue the stages of workers that were lost."""
    settings = get_settings()
    node = getattr(sender, "hostname", "") or ""
    queues = list(sender.app.amqp.queues.consume_from)
    kinds = [name for name in sender.app.tasks if not name.startswith("celery.")]
    stop = threading.Event()
    if not signing_enabled(settings):
        log.warning("messages are not signed: anyone who can write to Redis can run stages here; set "
                    "CARINA_SIGNING_KEY, CARINA_SIGNING_CERT and CARINA_CERT_STORE (carina keys)")

    def heartbeat() -> None:
        while True:
            try:
                beat(redis_client(), settings.namespace, node, settings.host_id, queues, settings.worker_heartbeat_s,
                     kinds)
            except Exception:
                log.exception("worker heartbeat failed")
            if stop.wait(settings.worker_heartbeat_s):
                return

    def janitor() -> None:
        while not stop.wait(settings.janitor_interval_s):
            try:
                janitor_pass(settings)
            except Exception:
                log.exception("janitor sweep failed")

    threading.Thread(target=heartbeat, name="carina-heartbeat", daemon=True).start()
    threading.Thread(target=janitor, name="carina-janitor", daemon=True).start()
    signals.worker_shutdown.connect(lambda **_: stop.set(), weak=False)
