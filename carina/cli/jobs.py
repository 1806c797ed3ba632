"""``carina submit``, ``status``, ``jobs`` and ``pipelines``: jobs as a user sees them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from carina.cli.common import EXIT_FAILED
from queues.errors import CarinaError
from queues.jobs import STATES, JobStatus
from queues.settings import DEFAULT_PRIORITY, PRIORITIES, get_settings

CANCEL_WAIT_S = 60.0
BAR_WIDTH = 24

SUBMIT_OPTIONS = ("crop_start", "crop_size", "sigma_mm", "series_uid", "overlap", "model", "tile_size", "num_workers",
                  "mask_pixel_count_limit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="queue a job; prints its id")
    p.add_argument("pipeline", help="pipeline name (see `carina pipelines`)")
    p.add_argument("--input", "-i", "--input-path", required=True, help="input file or folder (as the workers see it)")
    p.add_argument("--output", "-o", "--output-path", required=True, help="output folder")
    p.add_argument("--config", help="folder with config_render.json and other job configuration")
    p.add_argument("--crop-start", nargs=3, type=int, metavar=("X", "Y", "Z"), help="fastio-itk: first voxel (-1 = 0)")
    p.add_argument("--crop-size", nargs=3, type=int, metavar=("X", "Y", "Z"), help="fastio-itk: extent (-1 = to the edge)")
    p.add_argument("--sigma-mm", type=float, help="3dblur: Gaussian sigma in millimetres (default 1.0)")
    p.add_argument("--series-uid", help="3dblur: the SeriesInstanceUID to read (default: the largest series)")
    p.add_argument("--overlap", type=_number,
                   help="spleen-seg: window overlap, a fraction (default 0.25); nuclei-seg: pixels of context "
                        "read around each tile (default 0). The seed's -o: here -o is --output")
    p.add_argument("--model", "-m", help="spleen-seg, nuclei-seg: the Triton model (default spleen_ct, nuclei_unet)")
    p.add_argument("--tile-size", "-t", type=int,
                   help="nuclei-seg: tile side in pixels, a multiple of 16 (default 256)")
    p.add_argument("--num-workers", "-w", type=int,
                   help="nuclei-seg: tile batches in parallel, hence requests in flight (default: the worker's CPUs)")
    p.add_argument("--mask-pixel-count-limit", type=int,
                   help="nuclei-seg: most pixels of the low-resolution tissue mask (default 1048576)")
    p.add_argument("--param", "-p", action="append", default=[], type=_parameter, metavar="NAME=VALUE",
                   help="any parameter of the pipeline (`carina pipelines` lists them); VALUE is JSON where it "
                        "parses as JSON (3, 0.5, [1,2,3]), else text; repeatable")
    p.add_argument("--priority", choices=list(PRIORITIES), default=DEFAULT_PRIORITY,
                   help="Clara's job priorities: an immediate job's stages go ahead of waiting normal ones "
                        "(default normal)")
    p.add_argument("--wait", action="store_true", help="follow the job; exit 1 with the reason if it fails")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    p.set_defaults(run=submit, role="front")

    p = sub.add_parser("status", help="state, stage and error of a job")
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(run=status, role="front")

    p = sub.add_parser("cancel", help="cancel a job: queued stages dropped, the running one stopped, memory freed")
    p.add_argument("job", help="job id")
    p.add_argument("--wait", action="store_true", help="wait until a worker has ended it")
    p.set_defaults(run=cancel, role="front")

    p = sub.add_parser("jobs", help="recent jobs: pipeline, state, stage, age (newest first)")
    p.add_argument("--state", choices=STATES, help="only jobs in this state")
    p.add_argument("--pipeline", help="only jobs of this pipeline")
    p.add_argument("--limit", "-n", type=int, default=20, help="how many (default 20)")
    p.set_defaults(run=jobs, role="front")

    p = sub.add_parser("pipelines", help="the pipelines: stages, parameters and where each came from; "
                                         "`pipelines show NAME` prints one's definition")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="the pipeline to show")
    p.set_defaults(run=pipelines)

    p = sub.add_parser("import-bundle", help="a MONAI bundle → a Triton model folder and a pipeline definition "
                                             "(what it cannot map is listed, and nothing is written)")
    p.add_argument("bundle", type=Path, help="the bundle's folder (configs/metadata.json, configs/inference.json, "
                                             "models/model.ts or model.onnx)")
    p.add_argument("--name", help="the pipeline's name (default: the bundle folder's)")
    p.add_argument("--models", type=Path, help="the Triton model repository (default: the project's models/)")
    p.add_argument("--pipelines", type=Path, help="where the definition goes (default: CARINA_PIPELINES_DIR)")
    p.set_defaults(run=import_bundle)


def _number(text: str) -> int | float:
    """An int where the text is one (pixels), else a float (fractions)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parameter(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--param``: the value as JSON where it parses, else as text."""
    name, found, value = text.partition("=")
    if not found or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def submit(args: argparse.Namespace) -> int:
    import queues
    from queues.app import app
    from queues.pipelines import submit as submit_job

    params = {k: v for k in SUBMIT_OPTIONS if (v := getattr(args, k)) is not None} | dict(args.param)
    job_id = submit_job(app, get_settings(), args.pipeline, args.input, args.output, args.config, params,
                        priority=args.priority, by=f"{who()} (carina submit)")
    print(job_id, flush=True)
    warn_unserved(queues.unserved(job_id))
    if not args.wait:
        return 0
    return follow(job_id, args.timeout)


def warn_unserved(stages: list[tuple[str, str, str]]) -> None:
    """One line per stage ahead that no live worker would take."""
    for task, kind, why in stages:
        if why == "queue":
            print(f"warning: no live worker reads the {kind} queue: {task} will wait until one starts "
                  f"(carina worker --queues {kind})", file=sys.stderr)
        else:
            print(f"warning: no live worker of the {kind} queue runs the stage kind {task}: it will wait until one "
                  "does (install the package that provides it where the workers run)", file=sys.stderr)


def follow(job_id: str, timeout_s: float) -> int:
    """Show the job until it ends (a progress bar on a terminal, else a line per change);
    0 when it is done."""
    import queues

    started = time.monotonic()
    terminal = sys.stderr.isatty()

    def show(record: JobStatus) -> None:
        if terminal:
            print(f"\r{progress_bar(record, time.monotonic() - started)}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(progress_line(record), file=sys.stderr, flush=True)

    final = queues.wait(job_id, timeout_s, on_change=show)
    if terminal:
        print(file=sys.stderr)
    if final.state == "done":
        print(f"done: {final.output}", file=sys.stderr)
        return 0
    if final.finished:
        print(f"{final.state} in {final.stage}: {final.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"still {final.state} after {timeout_s:.0f} s", file=sys.stderr)
    return EXIT_FAILED


def progress_line(record: JobStatus) -> str:
    """``running [2/3] carina.segmentation.infer 12/32``: state, stage and units done."""
    step = f" [{record.stage_index}/{len(record.stages)}] {record.stage}" if record.stage else ""
    done = f" {record.progress_done}/{record.progress_total}" if record.progress_total else ""
    return f"{record.state}{step}{done}"


def progress_bar(record: JobStatus, elapsed_s: float, width: int = BAR_WIDTH) -> str:
    """``[2/3] infer ███████░░░░░░░  12/32  0:41``: the stage, a bar of its units done (when
    it counts them) and the time since the job was followed."""
    stage = record.stage.rsplit(".", 1)[-1] if record.stage else record.state
    step = f"[{record.stage_index}/{len(record.stages)}] " if record.stage else ""
    bar = ""
    if record.progress_total:
        filled = round(width * record.progress_done / record.progress_total)
        bar = f" {'█' * filled}{'░' * (width - filled)} {record.progress_done}/{record.progress_total}"
    minutes, seconds = divmod(int(elapsed_s), 60)
    return f"{step}{stage}{bar}  {minutes}:{seconds:02d}"


def status(args: argparse.Namespace) -> int:
    import queues

    record = queues.status(args.job)
    if args.json:
        print(json.dumps(record.to_dict(), indent=2))
        return 0
    print(f"job:      {record.job_id}\npipeline: {record.pipeline}\nstate:    {record.state}")
    print(f"submitted {_when(record.created)} by {record.submitted_by or 'unknown'}")
    if record.cancel:
        print(f"cancel asked {_when(record.cancel['at'])} by {record.cancel['by']}")
    if record.priority:
        print(f"priority: {record.priority}")
    if record.stage:
        print(f"stage:    {record.stage} ({record.stage_index}/{len(record.stages)})")
    if record.progress_total:
        print(f"progress: {record.progress_done}/{record.progress_total}")
    if record.output:
        print(f"output:   {record.output}")
    if record.error:
        print(f"error:    {record.error}")
    if record.dispatch:
        sent = record.dispatch
        print(f"dispatch: {sent['state']} to {sent['destination']}, {sent['files']} files, "
              f"{sent['attempts']} attempts{': ' + sent['reason'] if sent.get('reason') else ''}")
    warn_unserved(queues.unserved(args.job))
    return EXIT_FAILED if record.finished and record.state != "done" else 0


def who() -> str:
    """This user at this host: who a job submitted or cancelled from the CLI is by."""
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def cancel(args: argparse.Namespace) -> int:
    import queues

    record = queues.cancel(args.job, by=f"{who()} (carina cancel)")
    if record.finished:
        print(f"{record.job_id}: {record.state} already")
        return 0 if record.state == "cancelled" else EXIT_FAILED
    if args.wait:
        record = queues.wait(args.job, CANCEL_WAIT_S)
    print(f"{record.job_id}: {record.state if record.finished else 'being cancelled'}")
    return 0 if not args.wait or record.state == "cancelled" else EXIT_FAILED


def jobs(args: argparse.Namespace) -> int:
    import queues

    records = queues.recent(args.limit, args.state, args.pipeline)
    now = time.time()
    print(f"{'job':32}  {'pipeline':11} {'state':7} {'stage':26} age")
    for record in records:
        stage = f"{record.stage_index}/{len(record.stages)} {record.stage.rsplit('.', 1)[-1]}" if record.stage else ""
        print(f"{record.job_id:32}  {record.pipeline:11} {record.state:7} {stage:26} {age(now - record.created)}")
    return 0


def age(seconds: float) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def import_bundle(args: argparse.Namespace) -> int:
    from carina.bundles import import_bundle as run_import
    from carina.triton import MODEL_REPOSITORY
    from queues.catalogue import catalogue

    settings = get_settings()
    folder = args.pipelines or settings.pipelines_dir
    if folder is None:
        raise CarinaError("carina import-bundle: set CARINA_PIPELINES_DIR (the workers and front doors read it) "
                          "or pass --pipelines")
    done = run_import(args.bundle, folder, args.models or MODEL_REPOSITORY, args.name, frozenset(catalogue(settings)))
    print(f"pipeline {done.pipeline}: {done.definition}\nmodel: {done.model_folder}")
    for line in done.report:
        print(f"  {line}")
    print("restart Triton to serve the model; `carina pipelines show " + done.pipeline + "` prints the definition")
    return 0


def pipelines(args: argparse.Namespace) -> int:
    import yaml

    from queues.catalogue import catalogue, get_pipeline

    if args.action == "show":
        if not args.name:
            raise CarinaError("carina pipelines show NAME: name the pipeline")
        print(yaml.safe_dump(get_pipeline(get_settings(), args.name).summary(), sort_keys=False,
                             allow_unicode=True), end="")
        return 0
    for spec in catalogue(get_settings()).values():
        print(f"{spec.name:12} {spec.description}  [{spec.source}]")
        print(f"{'':12} stages: " + " → ".join(f"{s.task} ({s.queue})" for s in spec.stages))
        params = ", ".join(f"{p.name} ({p.type}" + (f", default {p.default}" if p.default is not None else "") + ")"
                           for p in spec.parameters)
        print(f"{'':12} parameters: {params or 'none'}")
    return 0
