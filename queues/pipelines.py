"""The pipeline catalogue and ``submit``: each pipeline is a Celery chain of named tasks.

Every stage takes the job payload (:class:`queues.payload.Payload`, a small JSON dict) as
its first argument and returns it, updated, for the next one.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import redis
from celery import Celery, chain

from queues.crop import DEFAULT as DEFAULT_CROP
from queues.crop import resolve_crop
from queues.errors import InvalidJobRequest, UnknownPipeline
from queues.headers import volume_file, volume_size
from queues.jobs import RUNNING, JobStatus, JobStore, connected_store
from queues.payload import Payload, first_payload
from queues.settings import DEFAULT_PRIORITY, PRIORITIES, REDIS_OUTAGE_S, Settings

OUTAGE_POLL_S = 1.0


@dataclass(frozen=True)
class Stage:
    """A task by name and the kind of queue (io, cpu, gpu) it runs on."""

    task: str
    queue: str


@dataclass(frozen=True)
class Pipeline:
    """A pipeline: its stages, and the checks of a submission. ``validate`` takes the job's
    parameters and returns them checked, with defaults; ``check_header`` holds the checked
    parameters to the input where the front door can read it (its header), and raises
    InvalidJobRequest."""

    name: str
    stages: tuple[Stage, ...]
    description: str
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    check_header: Callable[[Path, dict[str, Any]], None] | None = None


def _xyz(params: dict[str, Any], key: str) -> list[int] | None:
    value = params.get(key)
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
        raise InvalidJobRequest(f"{key}={value!r}: expected three integers X Y Z")
    return list(value)


def _fastio_itk_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - {"crop_start", "crop_size"}
    if unknown:
        raise InvalidJobRequest(f"fastio-itk does not take {sorted(unknown)}")
    return {k: v for k in ("crop_start", "crop_size") if (v := _xyz(params, k)) is not None}


def _fastio_itk_header(input: Path, params: dict[str, Any]) -> None:
    """The crop against the size the input's header declares; a volume the front door cannot
    size here (no such file on this host, an unreadable header) is left to the worker."""
    volume = volume_file(input)
    size = volume_size(volume) if volume else None
    if size is None or not ({"crop_start", "crop_size"} & params.keys()):
        return
    try:
        resolve_crop(size, params.get("crop_start", [DEFAULT_CROP] * 3), params.get("crop_size", [DEFAULT_CROP] * 3))
    except InvalidJobRequest as e:
        raise InvalidJobRequest(f"{volume.name}: {e}") from None


DEFAULT_SIGMA_MM = 1.0
MAX_OVERLAP = 0.9  # of a sliding window


def _blur_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - {"sigma_mm", "series_uid"}
    if unknown:
        raise InvalidJobRequest(f"3dblur does not take {sorted(unknown)}")
    sigma = params.get("sigma_mm", DEFAULT_SIGMA_MM)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < 1000:
        raise InvalidJobRequest(f"sigma_mm={sigma!r}: a number of millimetres > 0 (and < 1000)")
    checked: dict[str, Any] = {"sigma_mm": float(sigma)}
    series = params.get("series_uid")
    if series is not None:
        if not isinstance(series, str) or not series.replace(".", "").isdigit() or len(series) > 64:
            raise InvalidJobRequest(f"series_uid={series!r}: a DICOM UID (digits and dots)")
        checked["series_uid"] = series
    return checked


def _spleen_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - {"overlap", "sw_batch_size", "model"}
    if unknown:
        raise InvalidJobRequest(f"spleen-seg does not take {sorted(unknown)}")
    checked: dict[str, Any] = {}
    overlap = params.get("overlap", 0.25)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap <= MAX_OVERLAP:
        raise InvalidJobRequest(f"overlap={overlap!r}: a fraction from 0 to {MAX_OVERLAP} (MONAI's users stay "
                                "at or below it; more multiplies the windows for nothing)")
    checked["overlap"] = float(overlap)
    if "sw_batch_size" in params:
        size = params["sw_batch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 64:
            raise InvalidJobRequest(f"sw_batch_size={size!r}: an integer from 1 to 64")
        checked["sw_batch_size"] = size
    checked["model"] = _model_name(params, "spleen_ct")
    return checked


TILE_SIZE_MULTIPLE = 16  # the pyramid writer's (ops.pyramid.TILE_MULTIPLE: JPEG blocks); a test holds the two
MAX_TILE_SIZE = 4096
DEFAULT_MASK_PIXEL_COUNT_LIMIT = 1024 * 1024  # the seed's default


def _whole(params: dict[str, Any], key: str, default: int | None, low: int, high: int, what: str) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobRequest(f"{key}={value!r}: {what}")
    return value


def _model_name(params: dict[str, Any], default: str) -> str:
    model = params.get("model", default)
    if not isinstance(model, str) or not model.replace("_", "").replace("-", "").isalnum():
        raise InvalidJobRequest(f"model={model!r}: a Triton model name")
    return model


def _nuclei_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - {"tile_size", "overlap", "model", "num_workers", "mask_pixel_count_limit"}
    if unknown:
        raise InvalidJobRequest(f"nuclei-seg does not take {sorted(unknown)}")
    tile = params.get("tile_size", 256)
    if (isinstance(tile, bool) or not isinstance(tile, int) or not TILE_SIZE_MULTIPLE <= tile <= MAX_TILE_SIZE
            or tile % TILE_SIZE_MULTIPLE):
        raise InvalidJobRequest(f"tile_size={tile!r}: pixels, a multiple of {TILE_SIZE_MULTIPLE} up to {MAX_TILE_SIZE}")
    checked = {
        "tile_size": tile,
        "overlap": _whole(params, "overlap", 0, 0, tile // 2, f"pixels of context around each tile, 0 to {tile // 2}"),
        "model": _model_name(params, "nuclei_unet"),
        "mask_pixel_count_limit": _whole(params, "mask_pixel_count_limit", DEFAULT_MASK_PIXEL_COUNT_LIMIT, 64 * 64,
                                         2**28, "pixels of the tissue mask, 4096 to 2**28"),
    }
    workers = _whole(params, "num_workers", None, 1, 256, "parallel tile batches, 1 to 256")
    if workers is not None:
        checked["num_workers"] = workers
    return checked


PIPELINES: dict[str, Pipeline] = {
    p.name: p
    for p in (
        Pipeline(
            name="fastio-itk",
            stages=(
                Stage("carina.fastio_itk.read_volume", "io"),
                Stage("carina.fastio_itk.filter_volume", "cpu"),
                Stage("carina.fastio_itk.write_volume", "io"),
            ),
            description="read a volume (MetaImage/NIfTI) → crop with ITK → write output.mhd + render files",
            validate=_fastio_itk_params,
            check_header=_fastio_itk_header,
        ),
        Pipeline(
            name="3dblur",
            stages=(
                Stage("carina.3dblur.read_series", "io"),
                Stage("carina.3dblur.blur", "cpu"),
                Stage("carina.3dblur.write_series", "io"),
            ),
            description="DICOM series → 3D Gaussian (sigma_mm, per-axis from spacing) → DICOM series",
            validate=_blur_params,
        ),
        Pipeline(
            name="spleen-seg",
            stages=(
                Stage("carina.spleen.read_volume", "io"),
                Stage("carina.spleen.infer", "gpu"),
                Stage("carina.spleen.write_results", "io"),
            ),
            description="CT (NIfTI/MetaImage/DICOM) → 96³ sliding-window UNet on Triton → label .mhd + publish folder",
            validate=_spleen_params,
        ),
        Pipeline(
            name="nuclei-seg",
            stages=(
                Stage("carina.nuclei.find_tissue", "cpu"),
                Stage("carina.nuclei.segment", "gpu"),
                Stage("carina.nuclei.write_results", "io"),
            ),
            description="whole slide (SVS/TIFF/OpenSlide formats) → tissue tiles → UNet on Triton (Dask) → "
                        "nuclei overlaid in a pyramidal image.tif + config.meta, config_render.json, thumbnail",
            validate=_nuclei_params,
        ),
    )
}


CANCEL_TASK = "carina.lifecycle.cancel"  # registered by workers.lifecycle


def cancel(app: Celery, settings: Settings, job_id: str, by: str) -> JobStatus:
    """Ask for a job to be cancelled on behalf of ``by``; returns its status now.

    The request is recorded, the stage under way (if any) is stopped (its process killed),
    and an io worker, sent on to the host holding the job's memory, ends the job: memory
    freed, then the state ``cancelled`` with who and when. Stages still queued are dropped as
    they come. A job that has already ended is left as it is.

    Raises:
        UnknownJob: no such job. BrokerUnavailable: Redis cannot be reached.
    """
    with connected_store(settings) as jobs:
        status = jobs.get(job_id)
        if status.finished or not jobs.request_cancel(job_id, by):
            return jobs.get(job_id)
        if status.state == RUNNING and status.stage_task:
            app.control.revoke(status.stage_task, terminate=True, signal="SIGKILL")
        app.send_task(CANCEL_TASK, args=[job_id], queue="io", priority=PRIORITIES["immediate"])
        return jobs.get(job_id)


def unserved_stages(status: JobStatus, live_queues: set[str]) -> list[tuple[str, str]]:
    """The stages still ahead of a job (the one under way included) whose queue kind no live
    worker reads, on its shared queue or any host's: ``[(stage task, queue kind)]``. Such a
    job waits in silence until a worker of that kind starts."""
    spec = PIPELINES.get(status.pipeline)
    if spec is None or status.finished:
        return []
    ahead = spec.stages[max(status.stage_index - 1, 0):]
    served = {queue.split(".", 1)[0] for queue in live_queues}
    return [(stage.task, stage.queue) for stage in ahead if stage.queue not in served]


def get_pipeline(name: str) -> Pipeline:
    try:
        return PIPELINES[name]
    except KeyError:
        raise UnknownPipeline(name, sorted(PIPELINES)) from None


def submit(app: Celery, settings: Settings, pipeline: str, input: str | Path, output: str | Path,
           config: str | Path | None = None, params: dict[str, Any] | None = None,
           job_id: str | None = None, host: str | None = None, priority: str = DEFAULT_PRIORITY,
           by: str = "an app (queues.submit)") -> str:
    """Queue a job and return its id (``job_id`` if given, else a new one).

    ``priority`` is one of Clara's (lower, normal, higher, immediate): every stage of the job
    is queued with it, so an immediate job's stages go ahead of any waiting normal ones.

    ``by`` says who asked, through which front door; the job record keeps it (the audit trail).

    ``host`` runs the whole job on that host (its first stage goes to the host's queue; the
    rest follow the memory): for inputs on a disk only that host sees, such as a watch folder.

    Paths are the workers' paths and are checked there (a missing input fails the job with
    the reason); relative ones are made absolute here, against the caller's directory.

    Raises:
        UnknownPipeline, InvalidJobRequest: refused before anything is queued (a crop
            outside the volume its header describes, for one).
        BrokerUnavailable: Redis cannot be reached; nothing was queued.
    """
    spec = get_pipeline(pipeline)
    if priority not in PRIORITIES:
        raise InvalidJobRequest(f"priority={priority!r}: one of {', '.join(PRIORITIES)}")
    if not str(input) or not str(output):
        raise InvalidJobRequest("both an input and an output are required")
    params = spec.validate(dict(params or {}))
    if spec.check_header is not None:
        spec.check_header(Path(input), params)
    job_id = job_id or uuid.uuid4().hex
    payload = first_payload(job_id, pipeline, str(Path(input).absolute()), str(Path(output).absolute()),
                            str(Path(config).absolute()) if config else None, params)
    with connected_store(settings) as jobs:
        jobs.redis.ping()
        jobs.create(job_id, pipeline, [s.task for s in spec.stages], params, priority, origin=dict(payload),
                    host=host or "", by=by)
        _queue_chain(app, settings, jobs, spec, payload, priority, host)
    return job_id


def queue_restart(app: Celery, settings: Settings, jobs: JobStore, status: JobStatus) -> None:
    """Queue the job of ``status`` again from its first stage, on the shared queues (any
    host). The caller has recorded the restart (``JobStore.restart``) and freed the job's
    memory: the new chain publishes its names again."""
    payload = Payload(**{**status.origin, "restarts": status.restarts + 1})  # type: ignore[typeddict-item]
    _queue_chain(app, settings, jobs, get_pipeline(status.pipeline), payload, status.priority or DEFAULT_PRIORITY)


def _queue_chain(app: Celery, settings: Settings, jobs: JobStore, spec: Pipeline, payload: Payload, priority: str,
                 host: str | None = None) -> None:
    first, *rest = spec.stages
    first_queue = settings.host_queue(first.queue, host) if host else first.queue
    level = PRIORITIES[priority]
    # The first chain's last task takes the job id; a restart's a new one, so that no two
    # messages (the lost host's may still be about) share an id to revoke or look up.
    last_id = payload["job"] if not payload.get("restarts") else uuid.uuid4().hex
    first_id = last_id if not rest else uuid.uuid4().hex
    signatures = [app.signature(first.task, args=(payload,), queue=first_queue, priority=level, task_id=first_id)]
    signatures += [app.signature(s.task, queue=s.queue, priority=level) for s in rest]
    jobs.awaiting(payload["job"], first_id, 1)
    chain(*signatures).apply_async(
        task_id=last_id, retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})


def wait(jobs: JobStore, job_id: str, timeout_s: float, on_change: Callable[[JobStatus], None] | None = None,
         poll_s: float = 0.2, outage_s: float = REDIS_OUTAGE_S) -> JobStatus:
    """Poll a job until it finishes or ``timeout_s`` passes; returns its last status. Redis
    away for up to ``outage_s`` (a restart, a failover) is waited out.

    Raises:
        redis.ConnectionError, redis.TimeoutError: Redis was away longer than ``outage_s``.
    """
    deadline = time.monotonic() + timeout_s
    last: tuple[str, str, int] | None = None
    away_since: float | None = None
    while True:
        try:
            status = jobs.get(job_id)
            away_since = None
        except (redis.ConnectionError, redis.TimeoutError):
            away_since = away_since or time.monotonic()
            if time.monotonic() - away_since > outage_s:
                raise
            time.sleep(OUTAGE_POLL_S)
            continue
        if on_change is not None and (status.state, status.stage, status.progress_done) != last:
            on_change(status)
            last = (status.state, status.stage, status.progress_done)
        if status.finished or time.monotonic() >= deadline:
            return status
        time.sleep(poll_s)
