"""Results back to the hospital: a job's DICOM results sent to a destination by C-STORE,
through an outbox, with retries and a dead letter.

- **Destinations** are settings, ``CARINA_DICOM_DESTINATIONS``, comma-separated: ``NAME=
  AE_TITLE@HOST:PORT`` for C-STORE (``pacs=ORTHANC@10.0.0.5:4242``), ``NAME=URL`` for STOW-RS
  to a DICOMweb service (``web=https://pacs.example/dicom-web``); a rule's ``send_to`` names one.
- **Outbox**: when a job a rule sends ends done, its DICOM files (every ``*.dcm`` of its
  output: a segmentation's SEG, 3dblur's series) are copied into ``<outbox>/<job>/`` and the
  job recorded as pending in Redis, before anything is sent. The output itself is not touched.
  A segmentation's Secondary Capture of its preview goes only to the destinations named in
  ``CARINA_DICOM_SEND_PREVIEW`` (some viewers show no SEG; others would file a needless image).
- **Sending**: one association (or one STOW-RS request) per attempt, every file sent; the
  attempt succeeds when the destination answers success (or a warning) for each. A failed attempt is tried again after
  ``CARINA_DICOM_SEND_BACKOFF_S``, doubling, up to ``CARINA_DICOM_SEND_ATTEMPTS`` attempts;
  then the files move to ``<outbox>/dead-letter/<job>/`` with ``reason.txt``. The outcome is
  in the job's record (``carina status``: ``dispatch``). The outbox copy is removed only once
  the destination has acknowledged every file.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from queues.dicom_events import count_event
from queues.errors import ConfigError
from queues.jobs import JobStore
from queues.settings import Settings

log = logging.getLogger(__name__)

DEAD_LETTER = "dead-letter"
PENDING, SENT, DEAD = "pending", "sent", "dead-letter"
DESTINATION = re.compile(r"(?P<name>[A-Za-z0-9_-]+)=(?P<ae>[^@\\]{1,16})@(?P<host>[^:]+):(?P<port>[0-9]{1,5})")
STOW_DESTINATION = re.compile(r"(?P<name>[A-Za-z0-9_-]+)=(?P<url>https?://\S+)")
SUCCESS_OR_WARNING = (0x0000, 0xB000, 0xB007, 0xB006)


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to (a PACS, a viewer's store): by C-STORE to an AE title
    at a host and port, or by STOW-RS to a DICOMweb base URL."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.url or f'{self.ae_title}@{self.host}:{self.port}'})"


def destinations(settings: Settings) -> dict[str, Destination]:
    """The destinations of ``CARINA_DICOM_DESTINATIONS``, by name.

    Raises: ConfigError: an entry that is not ``NAME=AE_TITLE@HOST:PORT``, a name twice, or a
    name in CARINA_DICOM_SEND_PREVIEW that is no destination."""
    found: dict[str, Destination] = {}
    for entry in settings.dicom_destinations:
        web = STOW_DESTINATION.fullmatch(entry)
        match = DESTINATION.fullmatch(entry)
        if web is None and (match is None or not 0 < int(match["port"]) < 65536):
            raise ConfigError(f"CARINA_DICOM_DESTINATIONS: {entry!r} is neither NAME=AE_TITLE@HOST:PORT nor "
                              f"NAME=http(s)://… (a DICOMweb base URL)")
        name = (web or match)["name"]
        if name in found:
            raise ConfigError(f"CARINA_DICOM_DESTINATIONS: {name!r} is named twice")
        found[name] = (Destination(name, url=web["url"].rstrip("/")) if web else
                       Destination(name, match["ae"], match["host"], int(match["port"])))
    unknown = sorted(set(settings.dicom_send_preview) - found.keys())
    if unknown:
        raise ConfigError(f"CARINA_DICOM_SEND_PREVIEW: {', '.join(unknown)} not in CARINA_DICOM_DESTINATIONS "
                          f"({', '.join(found) or 'none'})")
    return found


def is_capture(path: Path) -> bool:
    """The file is a Secondary Capture (by its SOP class; False if it cannot be read)."""
    import pydicom
    from pydicom.uid import SecondaryCaptureImageStorage

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).get(
            "SOPClassUID") == SecondaryCaptureImageStorage
    except Exception:  # pydicom raises many kinds on a damaged file; sending will name it
        return False


@dataclass
class Delivery:
    """One job's results on their way to a destination (its record in Redis, as JSON)."""

    job: str
    destination: str
    files: list[str]
    attempts: int = 0
    next_try: float = 0.0
    state: str = PENDING
    reason: str = ""


class Outbox:
    """The outbox of one AE title: deliveries recorded in Redis, their files in ``folder``."""

    def __init__(self, folder: Path, settings: Settings, client: redis.Redis, name: str) -> None:
        self.folder = Path(folder)
        self.settings = settings
        self.redis = client
        self.jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
        self.key = settings.folder_key(f"dicom:{name}:outbox", self.folder)
        self.name = name
        self.destinations = destinations(settings)

    def deliveries(self) -> dict[str, Delivery]:
        return {k.decode(): Delivery(**json.loads(v)) for k, v in self.redis.hgetall(self.key).items()}

    def delivery(self, job: str) -> Delivery | None:
        """The delivery of ``job``'s results, or None (none was asked for, or it was forgotten)."""
        raw = self.redis.hget(self.key, job)
        return Delivery(**json.loads(raw)) if raw else None

    def _save(self, delivery: Delivery) -> None:
        self.redis.hset(self.key, delivery.job, json.dumps(asdict(delivery)))
        detail = {"destination": str(self.destinations.get(delivery.destination, delivery.destination)),
                  "state": delivery.state, "attempts": delivery.attempts, "files": len(delivery.files),
                  "reason": delivery.reason, "at": time.time()}
        self.jobs.record_dispatch(delivery.job, detail)

    def enqueue(self, job: str, output: Path, destination: str) -> Delivery | None:
        """Copy the DICOM results of ``job`` (under ``output``) into the outbox and record them
        pending; None (and a log line) where the job wrote no DICOM file.

        Raises: ConfigError: no such destination. OSError: the copy failed (nothing recorded)."""
        if destination not in self.destinations:
            raise ConfigError(f"destination {destination!r} is not in CARINA_DICOM_DESTINATIONS "
                              f"({', '.join(self.destinations) or 'none'})")
        results = sorted(p for p in Path(output).rglob("*.dcm") if p.is_file())
        if destination not in self.settings.dicom_send_preview:
            results = [p for p in results if not is_capture(p)]
        if not results:
            log.warning("dispatch: job %s wrote no DICOM file under %s; nothing to send", job, output)
            return None
        box = self.folder / job
        partial = self.folder / f".{job}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700, parents=True)  # patient data: this service's user only
        names = []
        for number, path in enumerate(results):
            name = f"{number:05d}-{path.name}"
            shutil.copy2(path, partial / name)
            names.append(name)
        if box.exists():  # an earlier try of this very step died after its rename
            shutil.rmtree(partial)
        else:
            partial.rename(box)
        delivery = Delivery(job, destination, names)
        self._save(delivery)
        log.info("dispatch: job %s: %d files for %s in the outbox", job, len(names), self.destinations[destination])
        return delivery

    def send_due(self, now: float | None = None) -> None:
        """Attempt every pending delivery whose time has come."""
        now = time.time() if now is None else now
        for delivery in self.deliveries().values():
            if delivery.state == PENDING and delivery.next_try <= now:
                self._attempt(delivery)
            elif delivery.state == SENT and now - delivery.next_try > self.settings.job_ttl_s:
                self.redis.hdel(self.key, delivery.job)  # acknowledged long ago: kept as long as its job

    def _attempt(self, delivery: Delivery) -> None:
        destination = self.destinations.get(delivery.destination)
        box = self.folder / delivery.job
        delivery.attempts += 1
        try:
            if destination is None:
                raise ConnectionError(f"destination {delivery.destination!r} is no longer configured")
            send(destination, [box / name for name in delivery.files], self.settings.dicom_ae_title)
        except (ConnectionError, OSError, ValueError, RuntimeError) as e:
            delivery.reason = str(e)
            if delivery.attempts >= self.settings.dicom_send_attempts:
                self._dead_letter(delivery, box)
                count_event(self.redis, self.settings.namespace, self.name, "dead_letters")
            else:
                count_event(self.redis, self.settings.namespace, self.name, "send_retries")
                delivery.next_try = time.time() + self.settings.dicom_send_backoff_s * 2 ** (delivery.attempts - 1)
                log.warning("dispatch: job %s to %s, attempt %d failed: %s; again in %.0f s", delivery.job,
                            destination or delivery.destination, delivery.attempts, e,
                            delivery.next_try - time.time())
            self._save(delivery)
            return
        delivery.state, delivery.reason, delivery.next_try = SENT, "", time.time()  # when it was acknowledged
        self._save(delivery)
        count_event(self.redis, self.settings.namespace, self.name, "results_sent")
        shutil.rmtree(box, ignore_errors=True)  # acknowledged, every file: the copy has served
        log.info("dispatch: job %s: %d files acknowledged by %s", delivery.job, len(delivery.files), destination)

    def _dead_letter(self, delivery: Delivery, box: Path) -> None:
        dead = self.folder / DEAD_LETTER / delivery.job
        dead.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if box.exists():
            box.rename(dead)
        (dead / "reason.txt").write_text(f"{delivery.destination}, {delivery.attempts} attempts: {delivery.reason}\n")
        delivery.state = DEAD
        log.error("dispatch: job %s: not delivered to %s after %d attempts (%s); kept in %s", delivery.job,
                  delivery.destination, delivery.attempts, delivery.reason, dead)


def send(destination: Destination, files: list[Path], calling_ae: str) -> None:
    """Send every file to ``destination``: over one association (C-STORE), or in one STOW-RS
    request.

    Raises:
        ConnectionError: no association or connection (refused, rejected, unreachable), or it broke.
        RuntimeError: the destination refused a file (its status named).
    """
    import pydicom

    datasets = [pydicom.dcmread(path) for path in files]
    if destination.url:
        _stow(destination, datasets)
        return
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets
                                                     if str(ds.SOPClassUID) == sop_class}))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {destination}")
    try:
        for path, dataset in zip(files, datasets):
            status = assoc.send_c_store(dataset)
            if "Status" not in status:
                raise ConnectionError(f"{destination} did not answer the C-STORE of {path.name}")
            if int(status.Status) not in SUCCESS_OR_WARNING:
                raise RuntimeError(f"{destination} refused {path.name}: status 0x{int(status.Status):04X}")
    finally:
        if assoc.is_established:
            assoc.release()


def _stow(destination: Destination, datasets: list) -> None:
    """STOW-RS of ``datasets`` to the DICOMweb service at ``destination.url`` (dicomweb-client)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    try:
        answer = DICOMwebClient(url=destination.url).store_instances(datasets)
    except requests.exceptions.HTTPError as e:
        raise RuntimeError(f"{destination} refused the results: HTTP {e.response.status_code}") from None
    except requests.exceptions.RequestException as e:
        raise ConnectionError(f"{destination} cannot be reached: {type(e).__name__}") from None
    failed = answer.get("FailedSOPSequence", []) if answer is not None else []
    if failed:
        reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
        raise RuntimeError(f"{destination} refused {len(failed)} of {len(datasets)} instances ({', '.join(reasons)})")
