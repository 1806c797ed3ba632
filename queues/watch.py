"""``carina watch INBOX``: the watch-folder ingest daemon.

A study or slide dropped into the inbox — a file, or a folder (a DICOM series, the seed's input
folder) — starts a job once it is **stable**: nothing in it has changed for ``stable_s``
seconds, since scanners and copies write slowly. Names that copies use while writing
(hidden files, ``*.part``, ``*.tmp``, ``*.crdownload``) are left alone until renamed.

- **Rules** map an entry to a pipeline (first match wins): by name (a glob), by kind (slide,
  volume, dicom) and, for DICOM, by header tags (``Modality``, ``BodyPartExamined``, ...). See
  :mod:`queues.rules` for the JSON file of ``--rules``.
- **Exactly once**: an entry's job is recorded in Redis (per inbox) before it is submitted,
  under a job id chosen first, so a daemon that restarts — or dies between the two — follows
  the same job instead of starting another, and picks up what arrived while it was down.
- **Nothing is lost**: inputs are never changed or deleted. When its job ends, an entry moves
  to ``done/`` or ``failed/`` (with ``<name>.error.txt`` saying why); an entry that matches no
  rule, or mixes kinds, goes to ``failed/`` at once with the reason.
- Jobs run on this host (its host queues): the inbox is on this host's disk.
- Changes are noticed through watchdog (inotify) as they happen; a scan every ``poll_s``
  seconds is the source of truth all the same, and the only means with ``--poll`` (network
  filesystems, where inotify sees nothing). An inbox that disappears is waited for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from queues.confine import check_input, inside, real_roots
from queues.connection import connect
from queues.errors import BrokerUnavailable, CarinaError, ConfigError, PathRefused, UnknownJob
from queues.headers import header_data_files
from queues.jobs import JobStore
from queues.pipelines import submit
from queues.rules import DICOM_TAGS, Rule
from queues.settings import Settings

log = logging.getLogger(__name__)

DONE_DIR, FAILED_DIR = "done", "failed"
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart", "~")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
VOLUME_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr")
# Files a study folder may hold beside its images (render config, notes) that decide nothing.
SIDECAR_SUFFIXES = (".json", ".txt", ".raw", ".zraw", ".xml")
# --- what an entry is -------------------------------------------------------------------------

def is_partial(name: str) -> bool:
    """Whether a name is one that copies and downloads use while still writing (or hidden)."""
    return name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES)


DETACHED_HEADERS = (".mhd", ".nhdr")  # headers whose pixels are in a file of their own
# Names a data file beside its header may take; anything else (a volume, a slide, a folder) is
# a drop of its own, which no header can claim and move.
DATA_FILE_SUFFIXES = ("", ".raw", ".zraw", ".raw.gz", ".gz", ".img", ".dat", ".bin")


def companions(entry: Path) -> list[Path]:
    """The files beside a detached header (MetaImage ``.mhd``, NRRD ``.nhdr``) that hold its
    pixels and so belong to the same drop: the data file it names and ``<stem>.raw`` (and
    ``.zraw``, ``.raw.gz``), whether or not they have arrived yet (a header is often copied
    before its data). Only plain data files in the same folder count: a header naming a
    folder, a volume or a slide (another drop), or a file elsewhere, claims nothing; its job
    fails on it, and the other drop is left alone."""
    if entry.is_symlink() or not entry.is_file() or entry.suffix.lower() not in DETACHED_HEADERS:
        return []
    names = {f"{entry.stem}.raw", f"{entry.stem}.zraw", f"{entry.stem}.raw.gz"}
    try:
        named = header_data_files(entry)
    except CarinaError:
        named = []
    names |= {p.name for p in named if p.parent == entry.parent}
    claimable = [entry.parent / name for name in sorted(names) if _data_file_name(name)]
    return [p for p in claimable if not p.is_dir() and not p.is_symlink() and not (p.is_file() and _file_kind(p))]


def _data_file_name(name: str) -> bool:
    lowered = name.lower()
    suffix = ".raw.gz" if lowered.endswith(".raw.gz") else Path(lowered).suffix
    return not is_partial(name) and suffix in DATA_FILE_SUFFIXES and not lowered.endswith(VOLUME_SUFFIXES)


def _files(entry: Path) -> list[Path]:
    if entry.is_file():
        return [entry, *(c for c in companions(entry) if c.is_file())]
    return sorted(p for p in entry.rglob("*") if p.is_file() and not any(is_partial(part) for part in
                                                                             p.relative_to(entry).parts))


def signature(entry: Path) -> str:
    """A digest of every file's relative path, size and modification time: it changes while
    anything is still being written."""
    digest = hashlib.sha256()
    for path in _files(entry):
        stat = path.stat()
        digest.update(f"{path.relative_to(entry) if entry.is_dir() else path.name}\0{stat.st_size}\0"
                      f"{stat.st_mtime_ns}\n".encode())
    if entry.is_dir():
        digest.update(b"dir")
    return digest.hexdigest()


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(SLIDE_SUFFIXES):
        return "slide"
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    if name.endswith(".dcm") or _has_dicom_preamble(path):
        return "dicom"
    return None


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_tags(path: Path) -> dict[str, str]:
    """The routing tags of one DICOM file's header ({} where it cannot be read: the job will
    then fail with the reader's own reason, rather than the watcher guessing)."""
    import pydicom  # only the watcher, and only for DICOM entries

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(DICOM_TAGS))
    except Exception as e:  # pydicom raises many kinds on a damaged file
        log.warning("watch: cannot read the DICOM header of %s: %s", path, e)
        return {}
    return {tag: str(header.get(tag, "") or "") for tag in DICOM_TAGS}


def describe(entry: Path) -> tuple[str, dict[str, str], str]:
    """``(kind, dicom tags, why)`` of an inbox entry: kind is slide, volume, dicom, or
    "unknown" / "mixed" with ``why`` saying what was found."""
    found: dict[str, list[Path]] = {}
    others = []
    for path in _files(entry):
        kind = _file_kind(path)
        if kind is not None:
            found.setdefault(kind, []).append(path)
        elif path == entry or not path.name.lower().endswith(SIDECAR_SUFFIXES):
            others.append(path.name)  # a sidecar dropped alone is named too
    if len(found) > 1:
        counts = ", ".join(f"{len(paths)} {kind}" for kind, paths in sorted(found.items()))
        return "mixed", {}, f"mixed content ({counts} files): drop one study or slide per entry"
    if not found:
        shown = ", ".join(others[:5]) or "no files"
        return "unknown", {}, f"no slide, volume or DICOM file found ({shown})"
    [(kind, paths)] = found.items()
    tags = _dicom_tags(paths[0]) if kind == "dicom" else {}
    return kind, tags, ""


# --- the daemon --------------------------------------------------------------------------------

@dataclass
class _Seen:
    signature: str
    since: float


class Watcher:
    """Scans one inbox, starts jobs for stable entries and files them away when they end.

    Args:
        inbox: the folder watched; ``done/`` and ``failed/`` are made inside it.
        output_root: each job writes into ``<output_root>/<entry name>-<job id>``.
        rules: first match wins.
        settings, app, client: where jobs are submitted and the watcher's records kept.
        stable_s: how long an entry must stay unchanged before its job starts.
    """

    def __init__(self, inbox: Path, output_root: Path, rules: tuple[Rule, ...], settings: Settings, app: Celery,
                 client: redis.Redis, stable_s: float) -> None:
        self.inbox = Path(inbox).absolute()
        self.output_root = Path(output_root).absolute()
        self.rules = rules
        self.settings = settings
        self.app = app
        self.redis = client
        self.jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
        self.stable_s = stable_s
        self.records_key = settings.folder_key("watch", self.inbox)
        self._seen: dict[str, _Seen] = {}
        self._inbox_missing = False

    # one pass ----------------------------------------------------------------------------------
    def scan(self, now: float | None = None) -> None:
        """Follow submitted jobs, then start jobs for entries that have become stable."""
        now = time.monotonic() if now is None else now
        self._follow()
        if not self.inbox.is_dir():
            if not self._inbox_missing:
                log.error("watch: inbox %s is gone; waiting for it to come back", self.inbox)
                self._inbox_missing = True
            return
        if self._inbox_missing:
            log.info("watch: inbox %s is back", self.inbox)
            self._inbox_missing = False
        records = self.records()
        present = set()
        entries = sorted(self.inbox.iterdir())
        belonging = {c.name for entry in entries for c in companions(entry)}  # a header's data files
        for entry in entries:
            name = entry.name
            if name in (DONE_DIR, FAILED_DIR) or is_partial(name) or name in records or name in belonging:
                continue
            present.add(name)
            try:
                if entry.is_dir() and not _files(entry):
                    continue  # a folder made before its files are copied in is not a drop yet
                current = signature(entry)
            except OSError as e:  # vanished or unreadable between listing and stat
                log.warning("watch: %s: %s", entry, e)
                continue
            seen = self._seen.get(name)
            if seen is None or seen.signature != current:
                self._seen[name] = _Seen(current, now)
            elif now - seen.since >= self.stable_s:
                del self._seen[name]
                self._start(entry, current)
        for name in set(self._seen) - present:
            del self._seen[name]

    def _start(self, entry: Path, current: str) -> None:
        kind, tags, why = describe(entry)
        # A rule may take an unknown kind by its name; mixed content is never one study.
        rule = None if kind == "mixed" else next((r for r in self.rules if r.takes(entry.name, kind, tags)), None)
        if rule is None:
            reason = why or f"no rule matches {entry.name} (kind {kind}{', ' + str(tags) if tags else ''})"
            log.error("watch: %s: %s", entry.name, reason)
            self._file_away(entry, FAILED_DIR, reason)
            return
        job_id = uuid.uuid4().hex
        record = {"job": job_id, "signature": current, "pipeline": rule.pipeline}
        # Recorded first: a daemon that dies after submitting finds the job and follows it.
        self.redis.hset(self.records_key, entry.name, json.dumps(record))
        self._submit(entry, rule, job_id)

    def _submit(self, entry: Path, rule: Rule, job_id: str) -> None:
        output = self.output_root / f"{entry.name}-{job_id[:8]}"
        try:
            check_input(entry, real_roots(self.settings.data_roots), "drop")
            submit(self.app, self.settings, rule.pipeline, entry, output, params=dict(rule.params), job_id=job_id,
                   host=self.settings.host_id, priority=rule.priority, by=f"the watch folder {self.inbox}")
        except BrokerUnavailable:
            raise  # Redis away: the record stays, and the next scan submits it again
        except CarinaError as e:
            log.error("watch: %s: %s refused the job: %s", entry.name, rule.pipeline, e)
            self.redis.hdel(self.records_key, entry.name)
            self._file_away(entry, FAILED_DIR, f"{rule.pipeline} refused the job: {e}")
            return
        log.info("watch: %s → %s job %s (output %s)", entry.name, rule.pipeline, job_id, output)

    def _follow(self) -> None:
        for name, record in self.records().items():
            entry = self.inbox / name
            try:
                status = self.jobs.get(record["job"])
            except UnknownJob:
                if entry.exists():  # the daemon died between recording and submitting
                    rule = next((r for r in self.rules if r.pipeline == record["pipeline"]), None)
                    if rule is not None:
                        self._submit(entry, rule, record["job"])
                        continue
                self.redis.hdel(self.records_key, name)
                continue
            if not status.finished:
                continue
            if entry.exists():
                if status.state == "done":
                    self._file_away(entry, DONE_DIR, None, job=status.job_id)
                else:
                    self._file_away(entry, FAILED_DIR, f"{status.pipeline} job {status.job_id} {status.state} in "
                                    f"{status.stage}: {status.error}", job=status.job_id)
            self.redis.hdel(self.records_key, name)

    def records(self) -> dict[str, dict[str, Any]]:
        """Entries with a job under way: name → {"job", "signature", "pipeline"}."""
        return {k.decode(): json.loads(v) for k, v in self.redis.hgetall(self.records_key).items()}

    def _file_away(self, entry: Path, folder: str, error: str | None, job: str | None = None) -> Path:
        """Move ``entry`` (and its companions) into ``done/`` or ``failed/`` (never over another:
        a suffix is added), with ``<name>.error.txt`` beside it for a failure."""
        target_dir = self.inbox / folder
        target_dir.mkdir(exist_ok=True)
        suffix = ""
        moving = [entry, *(c for c in companions(entry) if c.exists())]
        if any((target_dir / p.name).exists() for p in moving) or (target_dir / f"{entry.name}.error.txt").exists():
            suffix = f".{job[:8] if job else uuid.uuid4().hex[:8]}"
        for path in moving:
            shutil.move(str(path), str(target_dir / f"{path.name}{suffix}"))
        target = target_dir / f"{entry.name}{suffix}"
        if error is not None:
            Path(f"{target}.error.txt").write_text(f"{error}\n")
        log.info("watch: %s → %s/%s", entry.name, folder, target.name)
        return target

    # the loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event, poll_s: float, use_watchdog: bool = True) -> None:
        """Scan until ``stop`` is set: every ``poll_s`` seconds, and as soon as watchdog reports
        a change in the inbox."""
        wake = threading.Event()
        observer = self._observe(wake) if use_watchdog else None
        log.info("watch: %s (%s), %d rules, stable after %.1f s", self.inbox,
                 "watchdog + polling" if observer else f"polling every {poll_s:g} s", len(self.rules), self.stable_s)
        try:
            while not stop.is_set():
                try:
                    self.scan()
                except (redis.ConnectionError, redis.TimeoutError, BrokerUnavailable) as e:
                    log.error("watch: Redis unreachable (%s); retrying", e)
                except OSError as e:
                    log.error("watch: %s", e)
                wake.wait(min(poll_s, max(self.stable_s / 2, 0.1)) if self._seen else poll_s)
                wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)

    def _observe(self, wake: threading.Event) -> Any:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return None

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        observer = Observer()
        try:
            observer.schedule(Wake(), str(self.inbox), recursive=True)
            observer.start()
        except OSError as e:  # no inotify (limits, some filesystems): polling alone
            log.warning("watch: no change notifications for %s (%s); polling", self.inbox, e)
            return None
        return observer


def watch(inbox: Path, output_root: Path, rules: tuple[Rule, ...], settings: Settings, stable_s: float,
          poll_s: float, use_watchdog: bool) -> None:
    """Run the daemon until interrupted (``carina watch``)."""
    from queues.app import create_app

    if not inbox.is_dir():
        raise ConfigError(f"inbox {inbox} is not a folder")
    roots = real_roots(settings.data_roots)
    for folder, what in ((inbox, "inbox"), (output_root, "output folder")):
        try:
            inside(folder, roots, f"the {what}")
        except PathRefused as e:
            raise ConfigError(f"{e}: set CARINA_DATA_ROOT to include it") from e
    client = connect(settings, socket_connect_timeout=5, socket_timeout=10)
    watcher = Watcher(inbox, output_root, rules, settings, create_app(settings), client, stable_s)
    stop = threading.Event()
    try:
        watcher.run(stop, poll_s, use_watchdog)
    except KeyboardInterrupt:
        stop.set()
    finally:
        client.close()
