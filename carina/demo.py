"""``carina demo``: the product tour on generated data.

Every service of the ``Procfile`` — redis-server, Triton, a cpu and a gpu worker, the HTTP API,
the watch-folder daemon, the DICOM listener, Flower, the metrics exporter — started by honcho on free loopback
ports; every pipeline submitted as an app would, plus one study dropped into the watch folder;
a results table with the URLs and the PNG previews; then everything is stopped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from fastio import drain_pool
from queues.app import create_app
from queues.connection import connect
from queues.jobs import JobStatus, JobStore
from carina.errors import ServiceError
from carina.local import free_port
from queues.pipelines import submit, wait
from queues.settings import Settings
from queues.signing import environment as signing_environment, make_keys
from carina.triton import REPO_ROOT

if TYPE_CHECKING:
    from carina.orthanc import LocalOrthanc

JOB_TIMEOUT_S = 300
READY_TIMEOUT_S = 300  # the first start of Triton loads both models
DROPPED = "dropped-abdomen.nii.gz"  # a copy of the spleen-seg sample, dropped into the inbox
PACS_SAMPLE = "abdomen-series"  # the spleen sample as a DICOM series, sent from Orthanc


@dataclass(frozen=True)
class DemoJob:
    pipeline: str
    sample: str  # folder or file under <out>/input
    sample_args: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    what: str = ""


DEMO_JOBS = (
    DemoJob("fastio-itk", "phantom.mhd", ("--shape", "64", "160", "160"),
            {"crop_start": [20, 30, 8], "crop_size": [120, 100, 48]}, "crop 120x100x48 from (20, 30, 8)"),
    DemoJob("3dblur", "ct-series", ("--dicom", "--shape", "48", "160", "160"),
            {"sigma_mm": 1.5}, "Gaussian, sigma 1.5 mm, DICOM in and out"),
    DemoJob("spleen-seg", "abdomen.nii.gz", ("--spleen", "--shape", "64", "256", "256"),
            {}, "96³ sliding-window UNet on a local Triton"),
    DemoJob("nuclei-seg", "slide.tif", ("--slide", "3000", "4000"),
            {}, "H&E slide: tissue tiles → nuclei UNet on Triton (Dask) → pyramidal image.tif"),
)


def run_demo(out: Path) -> bool:
    """Run every demo job; print where the results are. True if all of them succeeded."""
    for job in DEMO_JOBS:
        # A subprocess, so the front door's process never loads ITK or pydicom.
        subprocess.run([sys.executable, "-m", "ops.samples", "--output", str(out / "input" / job.sample),
                        *job.sample_args], check=True, stdout=subprocess.DEVNULL)
    print(f"generated samples in {out / 'input'}")
    inbox = out / "inbox"
    for folder in (inbox, out / "result-watch", out / "redis"):  # a fresh tour each time
        shutil.rmtree(folder, ignore_errors=True)
    ports = {name: free_port() for name in ("redis", "triton", "api", "flower", "metrics", "dicom")}
    # The demo's Redis lets in only its own services, each as its role's user (queues/roles.py).
    password = secrets.token_urlsafe(18)
    role_passwords = {role: secrets.token_urlsafe(18) for role in ("worker", "front")}
    role_urls = {f"CARINA_REDIS_{role.upper()}_URL": f"redis://carina-{role}:{pw}@127.0.0.1:{ports['redis']}/0"
                 for role, pw in role_passwords.items()}
    keys = out / "keys"  # and its workers run only what its own front doors signed
    shutil.rmtree(keys, ignore_errors=True)
    make_keys(keys)
    env = {**os.environ, "CARINA_REDIS_URL": f"redis://:{password}@127.0.0.1:{ports['redis']}/0", **role_urls,
           "CARINA_TRITON_URL": f"127.0.0.1:{ports['triton']}", "CARINA_API_PORT": str(ports["api"]),
           "CARINA_FLOWER_PORT": str(ports["flower"]), "CARINA_METRICS_PORT": str(ports["metrics"]),
           "CARINA_NAMESPACE": "carina-demo", "CARINA_DATA_ROOT": str(out.absolute()),
           "CARINA_WATCH_INBOX": str(inbox), "CARINA_WATCH_OUTPUT": str(out / "result-watch"),
           "CARINA_REDIS_DIR": str(out / "redis"), "CARINA_WATCH_STABLE_S": "1",
           "CARINA_WATCH_POLL_S": "0.5", "CARINA_FLOWER_AUTH": "", "CARINA_API_TOKEN": "",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           **signing_environment(keys)}
    results: list[tuple[DemoJob, JobStatus]] = []
    with ExitStack() as stack:
        # The PACS first: the listener's health check echoes it before the tour starts.
        orthanc = stack.enter_context(local_pacs(ports["dicom"])) if shutil.which("Orthanc") else None
        env.update(listener_environment(out / "pacs", ports["dicom"], orthanc))
        run_services(out, env, ports, orthanc, results)
    print(f"\n{'pipeline':12} {'state':8} output")
    for job, status in results:
        print(f"{job.pipeline:12} {status.state:8} {status.output or status.error or 'timed out'}")
        if status.state == "done":
            files = sorted(Path(status.output).iterdir())
            for path in files[:4]:
                print(f"{'':22}{path.name:20} {path.stat().st_size:>10} bytes")
            if len(files) > 4:
                print(f"{'':22}… and {len(files) - 4} more files")
    previews = sorted(out.glob("result-*/**/*.png"))
    print("\npreviews:\n" + "\n".join(f"  {p}" for p in previews))
    expected = len(DEMO_JOBS) + 1 + bool(shutil.which("Orthanc"))
    ok = len(results) == expected and all(status.state == "done" for _, status in results)
    if not ok:
        print(f"services log: {out / 'services.log'}")
    return ok


def run_services(out: Path, env: dict[str, str], ports: dict[str, int], orthanc: "LocalOrthanc | None",
                 results: list[tuple[DemoJob, JobStatus]]) -> None:
    """The Procfile's services up, every demo job through them, its status appended to ``results``."""
    settings = Settings.from_env(env)
    inbox = settings.watch_inbox
    services = start_procfile(env, out / "services.log")
    try:
        client = wait_until_ready(settings, services, out / "services.log")
        print(f"services of the Procfile up (log: {out / 'services.log'}):\n"
              f"  Flower   http://127.0.0.1:{ports['flower']}/tasks\n"
              f"  jobs     http://127.0.0.1:{ports['api']}/status\n"
              f"  metrics  http://127.0.0.1:{ports['metrics']}/metrics")
        app = create_app(settings)
        jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
        submitted = [(job, submit(app, settings, job.pipeline, out / "input" / job.sample,
                                  out / f"result-{job.pipeline}", params=job.params)) for job in DEMO_JOBS]
        shutil.copyfile(out / "input" / "abdomen.nii.gz", inbox / DROPPED)
        print(f"dropped {DROPPED} into {inbox}")
        for job, job_id in submitted:
            print(f"{job.pipeline} job {job_id}: {job.what}")
            results.append((job, wait(jobs, job_id, JOB_TIMEOUT_S,
                                      on_change=lambda s: print(f"  {s.state:8} {s.stage}", flush=True))))
        results.append((DemoJob("spleen-seg", DROPPED, (), what="from the watch folder"),
                        wait_for_drop(inbox / DROPPED, out / "result-watch", jobs)))
        if orthanc:
            results.append((DemoJob("spleen-seg", PACS_SAMPLE, (), what="from Orthanc, its SEG sent back"),
                            pacs_round_trip(out, orthanc, jobs)))
        else:
            print("no Orthanc here (`make pacs` installs it, as root): the PACS round trip is left out")
        drain_pool(client, settings.fastio_config())
    finally:
        stop_procfile(services)


def start_procfile(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``honcho start`` on the project's Procfile, in its own process group, logging to ``log``."""
    honcho = shutil.which("honcho", path=env["PATH"]) or "honcho"
    with open(log, "w") as stream:
        return subprocess.Popen([honcho, "start", "-f", str(REPO_ROOT / "Procfile"), "-d", str(REPO_ROOT)],
                                env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_ready(settings: Settings, services: subprocess.Popen, log: Path) -> redis.Redis:
    """Wait until ``carina health`` finds Redis, both workers and Triton; returns a Redis client.

    Raises:
        ServiceError: a service exited, or not everything was up within READY_TIMEOUT_S.
    """
    from monitoring.health import check_all

    app = create_app(settings)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        checks = check_all(settings, app, timeout_s=1.0)
        workers = next(c for c in checks if c.name == "workers")
        if all(c.ok for c in checks) and workers.detail.count("@") >= 2:
            return connect(settings)
        if services.poll() is not None or time.monotonic() > deadline:
            raise ServiceError("the Procfile's services did not come up: "
                               + "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
                               + f"\n{log.read_text()[-3000:]}")
        time.sleep(1.0)


def stop_procfile(services: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM honcho (it stops every service and waits for them); SIGKILL the group after ``grace_s``."""
    if services.poll() is None:
        services.send_signal(signal.SIGTERM)
        try:
            services.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(services.pid, signal.SIGKILL)
            services.wait()


def wait_for_drop(entry: Path, output_root: Path, jobs: JobStore) -> JobStatus:
    """The status of the job the watch folder ran for ``entry``, once it has been filed away."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while entry.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for status in jobs.recent_statuses(50):
        if status.output.startswith(str(output_root / entry.name)):
            return status
    return JobStatus(job_id="", pipeline="?", state="failed", stages=[],
                     error=f"the watch folder ran no job for {entry.name} within {JOB_TIMEOUT_S} s")


def local_pacs(listener_port: int) -> "LocalOrthanc":
    """An Orthanc (not yet started) that may C-STORE to Carina's listener on ``listener_port``."""
    from carina.orthanc import LocalOrthanc

    return LocalOrthanc(modalities={"carina": ("CARINA", "127.0.0.1", listener_port)})


def listener_environment(root: Path, port: int, orthanc: "LocalOrthanc | None") -> dict[str, str]:
    """The Procfile's DICOM listener for the demo: it takes CT series from Orthanc, runs
    spleen-seg on each and, with an Orthanc, sends the SEG back to it. Its spool, results,
    outbox and rules go under ``root`` (made afresh)."""
    import json

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rule = {"kind": "dicom", "dicom": {"Modality": "CT"}, "pipeline": "spleen-seg"}
    env = {"CARINA_DICOM_PORT": str(port), "CARINA_DICOM_ALLOWED_AES": "ORTHANC", "CARINA_DICOM_STABLE_S": "2",
           "CARINA_DICOM_SPOOL": str(root / "spool"), "CARINA_DICOM_OUTPUT": str(root / "results"),
           "CARINA_DICOM_OUTBOX": str(root / "outbox"), "CARINA_DICOM_RULES": str(root / "rules.json")}
    if orthanc:
        rule["send_to"] = "orthanc"
        env["CARINA_DICOM_DESTINATIONS"] = f"orthanc={orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"
    (root / "rules.json").write_text(json.dumps([rule]))
    return env


def pacs_round_trip(out: Path, orthanc: "LocalOrthanc", jobs: JobStore) -> JobStatus:
    """The spleen sample as a DICOM series uploaded to ``orthanc``, sent by it to the Procfile's
    DICOM listener, segmented, and its SEG sent back to Orthanc: the job's status (its SEG also
    saved as ``result-pacs/seg.dcm``)."""
    series, root = out / "input" / PACS_SAMPLE, out / "pacs"
    shutil.rmtree(series, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "ops.samples", "--output", str(series), "--dicom", "--spleen", "--shape",
                    "64", "256", "256"], check=True, stdout=subprocess.DEVNULL)
    print(f"Orthanc (the PACS) at {orthanc.url}/app/explorer.html")
    instance = orthanc.upload(sorted(series.iterdir()))[0]
    orthanc.request("POST", "/modalities/carina/store", orthanc.get(f"/instances/{instance}")["ParentSeries"].encode())
    print(f"Orthanc sent {PACS_SAMPLE} to Carina's DICOM listener (C-STORE)")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    found: list[str] = []
    while not found and time.monotonic() < deadline:
        found = orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": "SEG"}})
        time.sleep(0.5)
    if not found:
        return JobStatus(job_id="", pipeline="spleen-seg", state="failed", stages=[],
                         error=f"no SEG reached Orthanc within {JOB_TIMEOUT_S} s; see {out / 'services.log'}")
    [seg] = orthanc.get(f"/series/{found[0]}")["Instances"]
    (out / "result-pacs").mkdir(exist_ok=True)
    (out / "result-pacs" / "seg.dcm").write_bytes(orthanc.get(f"/instances/{seg}/file"))
    print(f"  the SEG is in Orthanc: {orthanc.url}/series/{found[0]} (saved as {out / 'result-pacs' / 'seg.dcm'})")
    [status] = [s for s in jobs.recent_statuses(50) if s.output.startswith(str(root / "results"))]
    return status
