"""``carina dicom-listen``: studies from a PACS or a modality over DICOM (C-ECHO and C-STORE SCP).

- **Who may send**: the calling AE title must be on ``CARINA_DICOM_ALLOWED_AES``; any other is
  rejected at association ("calling AE title not recognised"; the upper layer is
  :mod:`queues.dicom_scp`, its docstring says why it is not pynetdicom's). Where
  ``CARINA_DICOM_ALLOWED_ADDRESSES`` is set, a connection from another address is closed
  before its association is read. Only the storage
  SOP classes of :data:`ACCEPTED_SOP_CLASSES` are accepted, in any transfer syntax (instances
  are kept as they came, never decoded here).
- **Spool**: each instance is written to ``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>-g<generation>/
  <SOPInstanceUID>.dcm`` under a temporary name and renamed into place, so a
  series folder only ever holds whole files. UIDs are checked before they become path parts
  (digits and dots, 64 characters at most). An instance already there is stored once.
- **Series**: a series is complete once no instance of it has arrived for ``stable_s``
  seconds. Then the watch folder's rules (:class:`queues.watch.Rule`, kind ``dicom``, its
  header's ``Modality``, ``BodyPartExamined``, ``SeriesDescription`` … and the sender's
  ``CallingAETitle``) choose the pipeline, and one job per series is submitted.
- **Exactly once**: every arrival and every decision is recorded in Redis (one hash per AE
  title, host and spool: two listeners never decide on each other's series) before it is
  acted on, with the job id chosen first, so a listener that restarts neither loses a series
  nor starts its job twice: it goes on waiting for the series it was
  receiving and follows (or submits, under the recorded id) the jobs it had decided on. The
  record of a series that ended is forgotten after ``CARINA_JOB_TTL_S``, as its job is; a
  series sent after that still opens a generation of its own (the spool's folders say which).
- **Sent again**: an instance of a series whose job has started opens the series' next
  generation (a folder of its own and, when it is complete, a job of its own): a series is
  never merged silently with what was already processed. With ``CARINA_DICOM_RESENT=ignore``
  such instances are answered with success, logged and not stored (the sender still holds
  them).
- **Aborted**: what an aborted association sent is kept; its series completes as any other,
  or, with ``CARINA_DICOM_ABORTED=incomplete``, is recorded ``unrouted`` (incomplete) and not
  run until it is sent again.
- **Nothing lost**: a write that fails (a full disk) is answered 0xA700 (out of resources)
  and leaves no partial file; a series with an instance that could not be stored is never
  run (it is recorded ``unrouted``, incomplete, with the reason) until it is sent again.
- **Retention**: a series leaves the spool only with ``CARINA_DICOM_SPOOL_RETAIN_S`` set, that
  long after its job ended done and, where its rule sends the results, after the destination
  acknowledged them. A series whose job failed, that no rule took, that is incomplete or whose
  results went to the dead letter stays for someone to look at.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from queues.dicom_events import count_event
from queues.dicom_part10 import Header, file_meta, read_header
from queues.dicom_scp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, VERIFICATION, Acceptor, \
    Association, Server, StoreRequest
from queues.dispatch import SENT, Outbox
from queues.errors import BrokerUnavailable, CarinaError, ConfigError, UnknownJob
from queues.jobs import JobStore
from queues.pipelines import submit
from queues.settings import Settings
from queues.rules import DICOM_TAGS, Rule

log = logging.getLogger(__name__)

UID = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX = 64
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND, NOT_THE_SOP_CLASS = 0x0000, 0xA700, 0xC000, 0xA900
RESENT_POLICIES = ("new-job", "ignore")
ABORTED_POLICIES = ("complete", "incomplete")
FSYNC_POLICIES = ("batch", "series", "each")
FLUSH_S = 0.2  # with CARINA_DICOM_FSYNC=batch, how long an answered instance may wait to reach the disk
MAX_PDU_BYTES = 4 * 2**20  # the largest PDU this listener offers to receive: a CT slice in one
HEAD_BYTES = 64 * 2**10  # a data set's first bytes kept in memory as it arrives: its header, in all but the largest
RECEIVING, SUBMITTED, DONE, FAILED, UNROUTED = "receiving", "submitted", "done", "failed", "unrouted"
ENDED = (DONE, FAILED, UNROUTED)
# The storage SOP classes a segmentation or blur pipeline can take (pydicom's names).
ACCEPTED_SOP_CLASSES = ("CTImageStorage", "EnhancedCTImageStorage", "MRImageStorage", "EnhancedMRImageStorage",
                        "PositronEmissionTomographyImageStorage", "SecondaryCaptureImageStorage",
                        "NuclearMedicineImageStorage")


@dataclass(frozen=True)
class ListenerConfig:
    """Who the listener is, who may send to it, and where what arrives goes."""

    ae_title: str
    host: str
    port: int
    allowed_aes: tuple[str, ...]
    spool: Path
    output_root: Path
    stable_s: float
    outbox: Path
    # The defaults are the settings' (queues/settings.py says what each means).
    resent: str = Settings.dicom_resent
    aborted: str = Settings.dicom_aborted  # a series whose association was aborted: "complete" or "incomplete"
    # When an instance is fsynced: before it is answered ("each"), within FLUSH_S ("batch"), or
    # with the rest of its series once it is complete, before its job ("series").
    fsync: str = Settings.dicom_fsync
    allowed_addresses: tuple[str, ...] = ()  # the peers' IP addresses it takes connections from; () any
    max_associations: int = Settings.dicom_max_associations  # at once; one more is rejected
    timeout_s: float = Settings.dicom_timeout_s  # an association silent this long is aborted

    def __post_init__(self) -> None:
        if not self.allowed_aes:
            raise ConfigError("the DICOM listener accepts no calling AE title: set CARINA_DICOM_ALLOWED_AES "
                              "(comma-separated) or pass --allow")
        if self.resent not in RESENT_POLICIES:
            raise ConfigError(f"CARINA_DICOM_RESENT={self.resent!r}: one of {', '.join(RESENT_POLICIES)}")
        if self.aborted not in ABORTED_POLICIES:
            raise ConfigError(f"CARINA_DICOM_ABORTED={self.aborted!r}: one of {', '.join(ABORTED_POLICIES)}")
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"CARINA_DICOM_FSYNC={self.fsync!r}: one of {', '.join(FSYNC_POLICIES)}")
        for title in (self.ae_title, *self.allowed_aes):
            if not 0 < len(title) <= 16 or "\\" in title or not title.isprintable():
                raise ConfigError(f"AE title {title!r}: 1 to 16 printable characters, no backslash")


@dataclass
class Series:
    """What the listener knows of one series (its record in Redis, as JSON)."""

    study: str
    series: str
    calling_ae: str
    address: str
    generation: int = 1
    instances: int = 0
    duplicates: int = 0
    first: float = field(default_factory=time.time)
    last: float = field(default_factory=time.time)
    state: str = RECEIVING
    job: str = ""
    pipeline: str = ""
    reason: str = ""
    previous_jobs: list[str] = field(default_factory=list)
    send_to: str | None = None  # the rule's destination for the job's DICOM results
    unstored: list[str] = field(default_factory=list)  # SOP instance UIDs refused for a failed write
    aborted: bool = False  # an association that sent some of it was aborted
    removed: bool = False  # its spool folder was removed (CARINA_DICOM_SPOOL_RETAIN_S)

    def folder(self, spool: Path) -> Path:
        return spool / self.study / f"{self.series}-g{self.generation}"


def pixel_data_problem(dataset: Any, present: int | None) -> str | None:
    """What is wrong with an instance's native (uncompressed) pixel data of ``present`` bytes,
    or None: shorter than its rows, columns, samples, bits and frames say is how a transfer cut
    short shows. Pixel data not measured (None: none, encapsulated) is not checked here."""
    if present is None:
        return None
    try:
        expected = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
                    * int(dataset.get("NumberOfFrames", 1) or 1) * int(dataset.BitsAllocated) + 7) // 8
    except Exception as e:  # pydicom raises many kinds on reading a damaged element (NotImplementedError among them)
        return f"its image description cannot be read: {e}"
    if present < expected:
        return f"its pixel data is {present} bytes where its header says {expected}: cut short"
    return None


class Flusher:
    """Files written and renamed into place but not yet fsynced, and their folders: ``flush``
    puts them on disk (several instances' fsyncs off the path of the answer: CARINA_DICOM_FSYNC=batch
    and series)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[Path] = []

    def add(self, path: Path) -> None:
        with self.lock:
            self.pending.append(path)

    def flush(self, folder: Path | None = None) -> None:
        """fsync every pending file (in ``folder`` only, if given), then each of their folders (the renames).

        Raises:
            OSError: a file or folder could not be synced (the files not yet synced stay pending).
        """
        with self.lock:
            pending = [path for path in self.pending if folder is None or path.parent == folder]
            self.pending = [path for path in self.pending if folder is not None and path.parent != folder]
        try:
            for path in pending:
                _fsync(path, os.O_RDONLY)
            for parent in {path.parent for path in pending}:
                _fsync(parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            with self.lock:
                self.pending[:0] = pending
            raise


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def next_generation(spool: Path, study: str, series: str) -> int:
    """The first generation of a series with no folder in the spool yet."""
    taken = [int(p.name.rsplit("-g", 1)[1]) for p in (spool / study).glob(f"{series}-g*")
             if p.name.rsplit("-g", 1)[1].isdigit()]
    return max(taken, default=0) + 1


def is_uid(value: Any) -> bool:
    """Whether ``value`` is a DICOM UID (digits and dots, at most 64): safe as a path part."""
    return isinstance(value, str) and len(value) <= UID_MAX and UID.fullmatch(value) is not None


class Receiving:
    """One instance as it arrives: its Part 10 file written into the listener's incoming folder
    fragment by fragment (while the sender sends the next), then filed whole by
    :meth:`Listener.file`, or removed. Only the data set's first :data:`HEAD_BYTES` stay in
    memory: its header, where the file could not be written."""

    def __init__(self, listener: "Listener", request: StoreRequest) -> None:
        self.listener, self.request = listener, request
        self.head = bytearray()
        self.size = 0  # the data set's bytes received
        self.partial: Path | None = None
        self.meta_bytes = 0  # where the data set starts in the partial file
        self.descriptor: int | None = None
        self.failure: OSError | None = None

    def add(self, fragment: memoryview) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += fragment[:HEAD_BYTES - len(self.head)]
        self.size += len(fragment)
        if self.failure is not None:
            return
        try:
            if self.descriptor is None:
                self._open()
            _write_all(self.descriptor, fragment)
        except OSError as e:
            self.failure = e

    def _open(self) -> None:
        request = self.request
        self.partial = self.listener.incoming / f".{uuid.uuid4().hex}.part"
        # Patient data: readable by this service's user only.
        self.descriptor = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        meta = file_meta(request.sop_class, request.sop_instance if is_uid(request.sop_instance) else "",
                         request.transfer_syntax, request.association.calling_ae, IMPLEMENTATION_CLASS_UID,
                         IMPLEMENTATION_VERSION)
        _write_all(self.descriptor, meta)
        self.meta_bytes = len(meta)

    @property
    def written(self) -> Path | None:
        """The whole instance's Part 10 file, or None where it could not be written (:attr:`failure`)."""
        return None if self.failure is not None else self.partial

    def header(self) -> Header:
        """The data set's header, from its file (or from its first bytes where that could not be written).

        Raises:
            UnreadableDataSet: its elements cannot be parsed (or lie past HEAD_BYTES, unwritten).
            OSError: its file cannot be read back.
        """
        if self.written is None:
            return read_header(io.BytesIO(self.head), self.size, self.request.transfer_syntax)
        with open(self.written, "rb") as stream:
            stream.seek(self.meta_bytes)
            return read_header(stream, self.size, self.request.transfer_syntax)

    def end(self) -> int:
        try:
            self._close(sync=self.listener.config.fsync == "each")
            return self.listener.file(self)
        finally:
            self.drop()

    def _close(self, sync: bool) -> None:
        if self.descriptor is None:
            return
        descriptor, self.descriptor = self.descriptor, None
        try:
            if sync and self.failure is None:
                os.fsync(descriptor)
        except OSError as e:
            self.failure = e
        finally:
            os.close(descriptor)

    def drop(self) -> None:
        """Close and remove what was written (nothing, once it was filed)."""
        self._close(sync=False)
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)


def _write_all(descriptor: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


class Listener:
    """The C-STORE and C-ECHO handlers, and the pass that turns complete series into jobs.

    Args:
        config: see :class:`ListenerConfig`.
        rules: the watch folder's rules; first match wins.
        settings, app, client: where jobs are submitted and the records kept.
    """

    def __init__(self, config: ListenerConfig, rules: tuple[Rule, ...], settings: Settings, app: Celery,
                 client: redis.Redis) -> None:
        self.config = config
        self.rules = rules
        self.settings = settings
        self.app = app
        self.redis = client
        self.jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
        self.records_key = settings.folder_key(f"dicom:{config.ae_title}", config.spool)
        self.lock = threading.Lock()
        self.outbox = Outbox(config.outbox, settings, client, config.ae_title)
        self.sent_on: dict[int, set[str]] = {}  # association (its id()) → the series it sent into
        self.flusher = Flusher()
        # Instances being received, written here and renamed into their series' folder when whole.
        self.incoming = config.spool / ".incoming" / config.ae_title
        for folder in (self.incoming.parent, self.incoming):  # each level private (parents=True would not be)
            folder.mkdir(mode=0o700, exist_ok=True)
        for partial in self.incoming.glob("*.part"):  # a stopped listener's: never answered, so never taken
            partial.unlink(missing_ok=True)
        # The records as this listener last wrote them (JSON): only it writes them, so an
        # arrival needs no read from Redis.
        self.saved: dict[str, str] = {}
        # With CARINA_DICOM_FSYNC=batch (or series), one more instance of a series already recorded
        # is written to Redis with the others of the same FLUSH_S, after their fsync (batch;
        # save_unsaved): what a killed listener had not yet recorded is on disk, and counted at
        # its decision (and what a lost host had not yet written shows there as missing).
        self.unsaved: dict[str, str] = {}
        self.uncounted: Counter[str] = Counter()
        self.deferring = config.fsync != "each"  # off while Redis refuses the deferred writes

    # records -----------------------------------------------------------------------------------
    def records(self) -> dict[str, Series]:
        """Every series recorded, by SeriesInstanceUID."""
        return {k.decode(): Series(**json.loads(v)) for k, v in self.redis.hgetall(self.records_key).items()}

    def _save(self, record: Series, event: str | None = None) -> None:
        """Save ``record``, counting ``event`` (of queues.dicom_events.EVENTS) in the same round trip."""
        raw = json.dumps(asdict(record))
        writes = self.redis.pipeline(transaction=False)
        writes.hset(self.records_key, record.series, raw)
        if event is not None:
            count_event(writes, self.settings.namespace, self.config.ae_title, event)
        writes.execute()
        self.saved[record.series] = raw
        self.unsaved.pop(record.series, None)

    def _note(self, record: Series, event: str) -> None:
        """Save ``record`` with the next :meth:`save_unsaved` (or now, when not deferring)."""
        if not self.deferring:
            self._save(record, event)
            return
        raw = json.dumps(asdict(record))
        self.saved[record.series] = self.unsaved[record.series] = raw
        self.uncounted[event] += 1

    def save_unsaved(self) -> None:
        """Write the records and counts :meth:`_note` kept, in one round trip. A failure is
        logged and they are kept for the next try; meanwhile every arrival is saved before it
        is answered (and refused while Redis is away)."""
        with self.lock:
            if not self.unsaved and not self.uncounted:
                return
            writes = self.redis.pipeline(transaction=False)
            for series, raw in self.unsaved.items():
                writes.hset(self.records_key, series, raw)
            for event, times in self.uncounted.items():
                count_event(writes, self.settings.namespace, self.config.ae_title, event, times)
            try:
                writes.execute()
            except redis.RedisError as e:
                if self.deferring:
                    log.error("dicom: the arrivals of %d series cannot be recorded (Redis: %s); tried again, "
                              "and instances are refused until they are", len(self.unsaved), e)
                self.deferring = False
                return
            self.unsaved.clear()
            self.uncounted.clear()
            self.deferring = self.config.fsync != "each"

    def _load(self, series: str) -> Series | None:
        raw = self.saved.get(series)
        if raw is None:
            raw = self.redis.hget(self.records_key, series)
        return None if raw is None else Series(**json.loads(raw))

    def _forget(self, series: str) -> None:
        self.redis.hdel(self.records_key, series)
        self.saved.pop(series, None)

    # the upper layer's handlers (one thread per association) ----------------------------------
    def count(self, event: str) -> None:
        count_event(self.redis, self.settings.namespace, self.config.ae_title, event)

    def on_accepted(self, association: Association) -> None:
        self.count("associations")

    def on_aborted(self, association: Association) -> None:
        """Mark what an aborted association sent: kept, and completed or reported incomplete
        as CARINA_DICOM_ABORTED says."""
        with self.lock:
            for series in sorted(self.sent_on.pop(id(association), ())):
                record = self._load(series)
                if record is not None and record.state == RECEIVING:
                    record.aborted = True
                    self._save(record)
                    log.warning("dicom: series %s: the association from %s sending it was aborted (%d instances "
                                "kept)", series, record.calling_ae, record.instances)

    def on_released(self, association: Association) -> None:
        with self.lock:
            self.sent_on.pop(id(association), None)

    def address_allowed(self, address: str) -> bool:
        """Whether a new connection from ``address`` may go on (others are closed before any
        association is read)."""
        if address in self.config.allowed_addresses:
            return True
        log.warning("dicom: a connection from %s refused: not in CARINA_DICOM_ALLOWED_ADDRESSES", address)
        self.count("rejected")
        return False

    def on_rejected(self, calling_ae: str, address: str) -> None:
        log.warning("dicom: association from %s at %s rejected", calling_ae, address)
        self.count("rejected")

    def on_store(self, request: StoreRequest) -> Receiving:
        return Receiving(self, request)

    def file(self, received: Receiving) -> int:
        """File one whole instance (its Part 10 file :attr:`Receiving.written` in the incoming
        folder, or :attr:`Receiving.failure`, why it could not be) into its series' folder and
        record its arrival; the status to answer."""
        request = received.request
        calling, address = request.association.calling_ae, request.association.address
        try:
            header = received.header()
            dataset = header.dataset
            sop, series, study = (dataset.get(k) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"))
        except Exception as e:  # UnreadableDataSet, OSError, or one of pydicom's many kinds on reading an element
            if received.failure is not None:
                log.error("dicom: an instance from %s cannot be stored: %s", calling, received.failure)
                return OUT_OF_RESOURCES
            return self._refuse(CANNOT_UNDERSTAND, "%s at %s: an instance that cannot be read: %s", calling, address, e)
        if not all(is_uid(str(uid)) for uid in (sop, series, study) if uid is not None) or None in (sop, series, study):
            return self._refuse(NOT_THE_SOP_CLASS, "%s at %s: an instance without valid SOP/series/study instance "
                                "UIDs (%r, %r, %r)", calling, address, sop, series, study)
        sop, series, study = str(sop), str(series), str(study)
        if sop != request.sop_instance:
            return self._refuse(NOT_THE_SOP_CLASS, "%s from %s at %s: its C-STORE command named SOP instance %r; "
                                "refused", sop, calling, address, request.sop_instance)
        problem = pixel_data_problem(dataset, header.pixel_bytes)
        if problem:
            return self._refuse(CANNOT_UNDERSTAND, "%s from %s at %s: %s; refused", sop, calling, address, problem)
        with self.lock:
            try:
                record = self._load(series)
                known = record is not None and record.state == RECEIVING and not record.unstored
                if record is None:  # new, or its record trimmed: never into a generation already spooled
                    record = Series(study, series, calling, address,
                                    generation=next_generation(self.config.spool, study, series))
                elif record.state != RECEIVING:
                    if self.config.resent == "ignore":
                        log.warning("dicom: %s from %s: series %s has been processed (job %s); instance ignored "
                                    "(CARINA_DICOM_RESENT=ignore)", sop, calling, series, record.job)
                        return SUCCESS
                    record = Series(study, series, calling, address, generation=record.generation + 1,
                                    previous_jobs=[*record.previous_jobs, record.job])
                    log.info("dicom: series %s sent again by %s: generation %d", series, calling, record.generation)
                try:
                    stored = self._place(received.written, received.failure, record.folder(self.config.spool), sop)
                except OSError as e:
                    if sop not in record.unstored:
                        record.unstored.append(sop)
                    record.reason, record.last = f"{sop} could not be stored: {e}", time.time()
                    self._save(record)
                    raise
                if sop in record.unstored:
                    record.unstored.remove(sop)
                if stored:
                    record.instances += 1
                else:
                    record.duplicates += 1
                record.last = time.time()
                if known:  # a series recorded already: one more of it is recorded with the next flush
                    self._note(record, "instances" if stored else "duplicates")
                else:
                    self._save(record, "instances" if stored else "duplicates")
                self.sent_on.setdefault(id(request.association), set()).add(series)
            except OSError as e:
                log.error("dicom: %s from %s: cannot be stored: %s", sop, calling, e)
                return OUT_OF_RESOURCES
            except redis.RedisError as e:
                log.error("dicom: %s from %s: its arrival cannot be recorded (Redis: %s)", sop, calling, e)
                return OUT_OF_RESOURCES
        return SUCCESS

    def _refuse(self, status: int, message: str, *args: Any) -> int:
        """Log why an instance is refused (``message`` % ``args``), count it; ``status``, the answer."""
        log.error("dicom: " + message, *args)
        self.count("refused")
        return status

    def _place(self, written: Path | None, failure: OSError | None, folder: Path, sop: str) -> bool:
        """Rename ``written`` into ``folder`` as the instance's file; False if already there.

        Raises:
            OSError: ``failure``, or the folder or the rename failed.
        """
        target = folder / f"{sop}.dcm"
        if target.exists():
            return False
        if failure is not None or written is None:
            raise failure or OSError(f"{sop}: nothing was written")
        for level in (folder.parent, folder):  # the study's folder, the series': each private
            level.mkdir(mode=0o700, exist_ok=True)
        os.replace(written, target)
        if self.config.fsync == "each":
            _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)
        else:
            self.flusher.add(target)
        return True

    # complete series → jobs ---------------------------------------------------------------------
    def complete_pass(self, now: float | None = None) -> None:
        """Start the jobs of series that have become complete; follow those started; forget
        those that ended longer ago than jobs are kept (CARINA_JOB_TTL_S)."""
        now = time.time() if now is None else now
        for record in self.records().values():
            if record.state in ENDED and now - record.last > self.settings.job_ttl_s:
                with self.lock:
                    current = self._load(record.series)
                    if current is not None and current.state in ENDED and current.last == record.last:
                        self._forget(record.series)
                continue
            if self._may_remove(record, now):
                self._remove(record)
            if record.state == RECEIVING and now - record.last >= self.config.stable_s:
                with self.lock:
                    current = self._load(record.series)
                    if current is None or current.last != record.last or current.state != RECEIVING:
                        continue  # an instance came in meanwhile: wait again
                    self._decide(current)
            elif record.state == SUBMITTED:
                self._follow(record)

    def _may_remove(self, record: Series, now: float) -> bool:
        """The series' job ended done CARINA_DICOM_SPOOL_RETAIN_S ago and its results, if its
        rule sends them, were acknowledged."""
        retain = self.settings.dicom_spool_retain_s
        if retain is None or record.state != DONE or record.removed or now - record.last < retain:
            return False
        if not record.send_to:
            return True
        delivery = self.outbox.delivery(record.job)
        return delivery is not None and delivery.state == SENT

    def _remove(self, record: Series) -> None:
        with self.lock:
            current = self._load(record.series)
            if current is None or current.generation != record.generation or current.removed:
                return  # sent again meanwhile: the new generation is not this one
            folder = current.folder(self.config.spool)
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # the study's folder, once its last series has gone
            current.removed = True
            self._save(current)
        log.info("dicom: series %s: removed from the spool, job %s done%s (CARINA_DICOM_SPOOL_RETAIN_S=%g)",
                 record.series, record.job, " and its results acknowledged" if record.send_to else "",
                 self.settings.dicom_spool_retain_s)

    def _decide(self, record: Series) -> None:
        self.count("series_complete")
        folder = record.folder(self.config.spool)
        self.flusher.flush(folder)  # a job only ever reads instances that are on disk
        on_disk = sum(1 for _ in folder.glob("*.dcm"))
        if on_disk > record.instances:  # stored and answered, but the listener stopped before recording them
            log.info("dicom: series %s: %d instances on disk where %d were recorded", record.series, on_disk,
                     record.instances)
            record.instances = on_disk
        if on_disk < record.instances:  # the host went down before they reached the disk
            record.state = UNROUTED
            record.reason = (f"incomplete: {record.instances} instances were received, {on_disk} are in {folder} "
                             f"(lost before they reached the disk); not run")
            log.error("dicom: series %s from %s: %s", record.series, record.calling_ae, record.reason)
            self._save(record)
            return
        if record.unstored or (record.aborted and self.config.aborted == "incomplete"):
            # Never a job on a series with holes: it waits to be sent again.
            record.state = UNROUTED
            record.reason = (f"incomplete: {len(record.unstored)} instances could not be stored ({record.reason}); "
                             f"kept in {folder}, not run" if record.unstored else
                             f"incomplete: the association sending it was aborted after {record.instances} "
                             f"instances (CARINA_DICOM_ABORTED=incomplete); kept in {folder}, not run")
            log.error("dicom: series %s from %s: %s", record.series, record.calling_ae, record.reason)
            self._save(record)
            return
        tags = {**series_tags(folder), "CallingAETitle": record.calling_ae}
        rule = next((r for r in self.rules if r.takes(record.series, "dicom", tags)), None)
        if rule is None:
            record.state, record.reason = UNROUTED, f"no rule matches ({tags})"
            log.error("dicom: series %s from %s: %s; kept in %s", record.series, record.calling_ae, record.reason,
                      folder)
            self._save(record)
            return
        # Recorded first: a listener that dies after submitting finds the job and follows it.
        record.state, record.job, record.pipeline = SUBMITTED, uuid.uuid4().hex, rule.pipeline
        record.send_to = rule.send_to
        self._save(record)
        self._submit(record, rule)

    def _submit(self, record: Series, rule: Rule) -> None:
        folder = record.folder(self.config.spool)
        output = self.config.output_root / f"{folder.name}-{record.job[:8]}"
        try:
            submit(self.app, self.settings, rule.pipeline, folder, output, params=dict(rule.params), job_id=record.job,
                   priority=rule.priority, by=f"the DICOM listener {self.config.ae_title} "
                                              f"({record.calling_ae} at {record.address})")
        except BrokerUnavailable:
            raise  # Redis away: the record says submitted, and the next pass submits it again
        except CarinaError as e:
            record.state, record.reason = FAILED, f"{rule.pipeline} refused the job: {e}"
            log.error("dicom: series %s: %s", record.series, record.reason)
            self._save(record)
            return
        self.count("jobs_started")
        log.info("dicom: series %s (%d instances from %s) → %s job %s, output %s", record.series, record.instances,
                 record.calling_ae, rule.pipeline, record.job, output)

    def _follow(self, record: Series) -> None:
        try:
            status = self.jobs.get(record.job)
        except UnknownJob:  # the listener died between recording and submitting
            rule = next((r for r in self.rules if r.pipeline == record.pipeline), None)
            if rule is not None:
                self._submit(record, rule)
            return
        if status.finished:
            with self.lock:
                current = self._load(record.series)
                if current is None or current.job != record.job:
                    return  # sent again meanwhile: the new generation has its own record
                if status.state == "done" and current.send_to:
                    self.outbox.enqueue(current.job, Path(status.output), current.send_to)
                current.state, current.last = (DONE if status.state == "done" else FAILED), time.time()
                current.reason = "" if status.state == "done" else f"{status.state} in {status.stage}: {status.error}"
                self._save(current)
            log.info("dicom: series %s job %s %s", record.series, record.job, status.state)


def series_tags(folder: Path) -> dict[str, str]:
    """The routing tags of a series, from the header of its first instance ({} if unreadable)."""
    import pydicom

    for path in sorted(folder.glob("*.dcm")):
        try:  # the elements are read lazily: a damaged one raises when it is read
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(DICOM_TAGS))
            return {tag: str(header.get(tag, "") or "") for tag in DICOM_TAGS}
        except Exception as e:  # pydicom raises many kinds on a damaged file
            log.warning("dicom: cannot read the header of %s: %s", path, e)
    return {}


def keep_flushing(listener: Listener, stop: threading.Event) -> None:
    """Every FLUSH_S until ``stop`` is set: what arrived to disk (but with CARINA_DICOM_FSYNC=series,
    where a series reaches the disk at its decision), then its records to Redis."""
    while not stop.wait(FLUSH_S):
        try:
            if listener.config.fsync == "batch":
                listener.flusher.flush()
        except OSError as e:
            log.error("dicom: instances received could not be synced to disk (tried again): %s", e)
            continue
        listener.save_unsaved()


def serve(listener: Listener, stop: threading.Event, poll_s: float = 1.0) -> None:
    """Listen until ``stop`` is set, running the completion pass every ``poll_s`` seconds."""
    import pydicom.uid

    config = listener.config
    acceptor = Acceptor(allowed_aes=frozenset(config.allowed_aes),
                        abstract_syntaxes=frozenset((VERIFICATION, *(getattr(pydicom.uid, name)
                                                                      for name in ACCEPTED_SOP_CLASSES))),
                        transfer_syntaxes=frozenset(pydicom.uid.AllTransferSyntaxes), max_pdu_bytes=MAX_PDU_BYTES,
                        max_associations=config.max_associations, timeout_s=config.timeout_s)
    server = Server((config.host, config.port), acceptor, listener,
                    listener.address_allowed if config.allowed_addresses else None)
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    threading.Thread(target=keep_flushing, args=(listener, stop), name="dicom-flusher", daemon=True).start()
    log.info("dicom: %s listening on %s:%d for %s; spool %s", config.ae_title, config.host, config.port,
             ", ".join(config.allowed_aes), config.spool)
    try:
        while not stop.wait(poll_s):
            try:
                listener.complete_pass()
                listener.outbox.send_due()
            except (redis.ConnectionError, redis.TimeoutError, BrokerUnavailable) as e:
                log.warning("dicom: Redis away (%s); the pass is tried again", e)
    finally:
        server.shutdown()
        server.server_close()
        listener.flusher.flush()
        listener.save_unsaved()


def listen(config: ListenerConfig, rules: tuple[Rule, ...], settings: Settings) -> None:
    """Run the listener until interrupted (``carina dicom-listen``).

    Raises:
        ConfigError: the spool or the output folder lies outside the data roots.
    """
    import pydicom.config

    from queues.app import create_app
    from queues.confine import inside, real_roots
    from queues.connection import connect
    from queues.errors import PathRefused

    # The listener checks what it uses of a received header (its UIDs, its pixel data's length)
    # and logs one line for what is wrong; pydicom's own warnings on each odd value would add
    # several lines of a library's text per damaged instance.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    roots = real_roots(settings.data_roots)
    for folder, what in ((config.spool, "spool"), (config.output_root, "output folder"), (config.outbox, "outbox")):
        folder.mkdir(parents=True, exist_ok=True)
        if folder != config.output_root:
            folder.chmod(0o700)  # what arrives, and the results sent back, are patient data
        try:
            inside(folder, roots, f"the {what}")
        except PathRefused as e:
            raise ConfigError(f"{e}: set CARINA_DATA_ROOT to include it") from e
    client = connect(settings, socket_connect_timeout=5, socket_timeout=10)
    stop = threading.Event()
    try:
        serve(Listener(config, rules, settings, create_app(settings), client), stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        client.close()
