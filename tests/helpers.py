"""Helpers shared by several test modules (and nothing else: fixtures live in conftest.py).

- pipelines on real workers: :func:`run_job`, :func:`blind_to_triton`, :func:`assert_no_memory_held`,
  :func:`worker_env`, :func:`wait_until`, :func:`slide_job_under_inference`, :func:`pool_processes`, :func:`remove_segments`,
  :func:`digest`, :data:`GEOMETRY`;
- servers starting up: :func:`http_get`;
- arrays: :func:`dice`, :func:`darkness` (a stand-in nuclei model), :func:`write_nifti` (any pixel type);
- generated whole slides: :func:`write_slide`, :func:`opened_test_slide`, :func:`tissue_at`, :func:`slide_pixels`;
- a Triton python-backend ``model.py`` run outside Triton: :func:`load_triton_model`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import time
import types
from contextlib import contextmanager
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np

from fastio.registry import Registry
from queues.jobs import JobStatus, JobStore
from queues.pipelines import submit, wait
from queues.settings import Settings

# A (z, y, x) volume's geometry with a rotated direction, so a lost axis swap shows.
GEOMETRY = {"spacing": [0.7, 0.8, 2.5], "origin": [-50.0, 20.0, 300.0],
            "direction": [0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0]}


NIFTI_DATATYPES = {np.dtype(t): code for t, code in (
    (np.uint8, 2), (np.int16, 4), (np.int32, 8), (np.float32, 16), (np.float64, 64), (np.int8, 256),
    (np.uint16, 512), (np.uint32, 768), (np.int64, 1024), (np.uint64, 1280))}


def write_nifti(path: Path, array: np.ndarray, spacing_xyz=(1.0, 1.0, 2.0)) -> Path:
    """A NIfTI-1 file of a (z, y, x) array in its own pixel type, even one ITK's wheels cannot
    write (int8, 64-bit integers): the 348-byte header written field by field."""
    import struct

    z, y, x = array.shape
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, x, y, z, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, NIFTI_DATATYPES[array.dtype], array.dtype.itemsize * 8)
    struct.pack_into("<8f", header, 76, 1.0, *spacing_xyz, 0.0, 0.0, 0.0, 0.0)
    struct.pack_into("<ff", header, 108, 352.0, 1.0)  # vox_offset, scl_slope
    header[344:348] = b"n+1\0"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(header) + bytes(4) + np.ascontiguousarray(array).tobytes())
    return path


# --- pipelines on real workers ------------------------------------------------------------------

def run_job(deployment, input, output, *, pipeline: str, timeout_s: float = 240, front_door: Settings | None = None,
            **submit_options) -> JobStatus:
    """Submit a job, wait for it to finish (failing the test if it does not) and return its status.
    Modules bind their pipeline: ``run = partial(run_job, pipeline="spleen-seg")``. ``front_door``
    submits with other settings than the deployment's (:func:`blind_to_triton`)."""
    job_id = submit(deployment.app, front_door or deployment.settings, pipeline, input, output, **submit_options)
    status = wait(deployment.jobs(), job_id, timeout_s)
    assert status.finished, f"job {job_id} still {status.state}\n{deployment.log_tail()}"
    return status


def blind_to_triton(settings: Settings) -> Settings:
    """``settings`` of a front door that cannot reach Triton: it queues a job naming a model
    without asking whether Triton serves it (the stage finds out)."""
    import dataclasses
    import socket

    with socket.socket() as unused:  # bound, then closed: nothing listens there
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    return dataclasses.replace(settings, triton_url=f"127.0.0.1:{port}")


def assert_no_memory_held(deployment, hosts=("host-a", "host-b")) -> None:
    """Nothing is in use on any of ``hosts``, and every segment file left is a free, pooled one."""
    client = deployment.client()
    files = deployment.segment_files(hosts)
    pooled = set()
    for host in hosts:
        registry = Registry(client, deployment.settings_for(host).fastio_config())
        assert registry.live() == {}, f"segments still in use on {host}"
        pooled |= set(registry.pooled())
    assert files <= pooled, f"segment files neither in use nor pooled: {sorted(files - pooled)}"


def worker_env(redis_url: str, namespace: str, triton_url: str, host: str = "host-a", shm_dir: str = "/dev/shm",
               **variables: str) -> dict[str, str]:
    """The environment of one host's workers on a Redis and namespace of their own, beating
    every second; ``variables`` add or override ``CARINA_*`` ones (``CARINA_HOST_LOST_S="3"``)."""
    import os

    return {**os.environ, "CARINA_REDIS_URL": redis_url, "CARINA_NAMESPACE": namespace, "CARINA_SHM_DIR": shm_dir,
            "CARINA_HOST_ID": host, "CARINA_TRITON_URL": triton_url, "CARINA_WORKER_HEARTBEAT_S": "1", **variables}


@contextmanager
def one_worker(redis_url: str, name: str, triton_url: str, logs: Path, **variables: str) -> Iterator[dict[str, str]]:
    """One worker (io, cpu, gpu; one process) on ``redis_url`` in a namespace and a /dev/shm
    folder of its own, as host-a: its environment, for the test's own commands. The database
    is flushed and the folder removed afterwards."""
    import shutil
    import tempfile
    import uuid

    import redis

    from carina.local import start_worker, stop_process_group

    shm = tempfile.mkdtemp(prefix=f"carina-{name}-", dir="/dev/shm")
    env = worker_env(redis_url, f"{name}{uuid.uuid4().hex[:6]}", triton_url, shm_dir=shm, **variables)
    worker = start_worker(env, logs / "worker.log", "io,cpu,gpu", concurrency=1, host_id="host-a")
    try:
        yield env
    finally:
        stop_process_group(worker)
        redis.Redis.from_url(redis_url).flushdb()
        shutil.rmtree(shm, ignore_errors=True)


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Poll ``condition()`` until true; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s"
        time.sleep(poll_s)


def slide_job_under_inference(settings: Settings, tmp_path: Path, seed: int) -> tuple[JobStore, str]:
    """Submit nuclei-seg on a generated 3000×4000 slide and return once its inference stage
    has tiles done: (a job store on ``settings``' Redis, the job id)."""
    from ops.samples import he_slide
    from queues.app import create_app
    from queues.connection import connect

    slide = he_slide(tmp_path / "slide.tif", (3000, 4000), seed=seed)
    jobs = JobStore(connect(settings, socket_timeout=5, socket_connect_timeout=2), settings.namespace,
                    settings.job_ttl_s)
    job = submit(create_app(settings), settings, "nuclei-seg", slide, tmp_path / "out",
                 params={"overlap": 16, "num_workers": 1})
    wait_until(lambda: jobs.get(job).stage == "carina.nuclei.segment" and jobs.get(job).progress_done > 0, 120,
               "under inference")
    return jobs, job


def pool_processes(worker) -> list:
    """The pool processes (where stages run) of a ``carina worker`` process: the children of
    the Celery workers it supervises, not those workers themselves."""
    import psutil

    return [pool for celery in psutil.Process(worker.pid).children() for pool in celery.children()]


def remove_segments(settings: Settings) -> None:
    """Unlink every segment file of the deployment's namespace (its pools included): what a
    test's workers leave behind once they are stopped."""
    for path in settings.shm_dir.glob(f"{settings.namespace}-*"):
        path.unlink(missing_ok=True)


def digest(path: Path) -> dict[str, str]:
    """The content of a file, or of every file under a folder, by path: unchanged inputs."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# --- servers -----------------------------------------------------------------------------------

def http_get(url: str, timeout_s: float, headers: dict | None = None) -> tuple[int, str]:
    """GET ``url``, retrying connection refusals until ``timeout_s`` (the server is starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


# --- arrays ------------------------------------------------------------------------------------

def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 for two empty ones)."""
    return 2 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum() + b.sum()))


def darkness(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: the nucleus probability is how dark a pixel is, (B, 3, S, S) → (B, 1, S, S)."""
    return 1.0 - batch.min(axis=1, keepdims=True).astype(np.float32) / 255.0


# --- generated whole slides: pink tissue blobs with dark nuclei on glass --------------------------
# The pixels are a function of level-0 coordinates, so every level is drawn directly (no level is
# held whole in memory) and a test can ask what any region should look like.

GLASS_RGB = (255, 255, 255)
TISSUE_RGB = (226, 150, 196)
NUCLEUS_RGB = (84, 44, 132)
# (centre y, centre x, radius y, radius x) as fractions of the slide's height and width.
BLOBS = ((0.30, 0.30, 0.18, 0.22), (0.68, 0.64, 0.20, 0.24))
NUCLEUS_PERIOD = 32  # level-0 pixels between nuclei
NUCLEUS_SIZE = 8


def tissue_at(shape0_yx: tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The (len(ys), len(xs)) bool truth: which level-0 points (ys x xs) lie inside a blob."""
    yy = ys[:, None] / shape0_yx[0]
    xx = xs[None, :] / shape0_yx[1]
    tissue = np.zeros((len(ys), len(xs)), bool)
    for cy, cx, ry, rx in BLOBS:
        tissue |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return tissue


def slide_pixels(shape0_yx: tuple[int, int], ys: np.ndarray, xs: np.ndarray, blank: bool = False) -> np.ndarray:
    """The (len(ys), len(xs), 3) uint8 RGB picture at level-0 rows ``ys`` and columns ``xs``."""
    tissue = tissue_at(shape0_yx, ys, xs) & (not blank)
    dots = ((ys[:, None] % NUCLEUS_PERIOD) < NUCLEUS_SIZE) & ((xs[None, :] % NUCLEUS_PERIOD) < NUCLEUS_SIZE)
    out = np.empty(tissue.shape + (3,), np.uint8)
    out[:] = GLASS_RGB
    out[tissue] = TISSUE_RGB
    out[tissue & dots] = NUCLEUS_RGB
    return out


def _level_tiles(shape0_yx: tuple[int, int], shape_yx: tuple[int, int], tile_yx: tuple[int, int],
                 downsample: int, blank: bool) -> Iterator[np.ndarray]:
    th, tw = tile_yx
    for y0 in range(0, shape_yx[0], th):
        for x0 in range(0, shape_yx[1], tw):
            ys = np.arange(y0, y0 + th) * downsample
            xs = np.arange(x0, x0 + tw) * downsample
            yield slide_pixels(shape0_yx, ys, xs, blank)


def opened_test_slide(folder: Path, shape0_yx: tuple[int, int], levels: int) -> Iterator:
    """A module fixture's body: a zlib slide of 128 px tiles written in ``folder``, opened
    with :func:`ops.wsi.open_slide` for as long as the generator runs."""
    from ops.wsi import open_slide

    path = write_slide(folder / "slide.tif", shape0_yx, tile_yx=(128, 128), levels=levels, compression="zlib")
    with open_slide(path) as opened:
        yield opened


def write_slide(path: Path, shape0_yx: tuple[int, int], tile_yx: tuple[int, int] = (256, 256),
                levels: int = 3, compression: str = "jpeg", mpp: float | None = 0.5, blank: bool = False,
                resolution_unit: str = "CENTIMETER") -> Path:
    """Write a tiled pyramidal TIFF that OpenSlide reads as generic-tiff.

    Level ``l`` is level 0 downsampled by ``2**l`` (integer division of the shape), written as a
    reduced-resolution page (SubFileType 1) after level 0. ``mpp`` goes into the resolution
    tags in pixels per ``resolution_unit`` ("CENTIMETER" or "INCH"); None writes no unit.
    """
    import tifffile

    # RGB in; tifffile stores JPEG as YCbCr with 2x2 chroma subsampling, as scanners do.
    options = {"compression": compression, "photometric": "rgb", "metadata": None}
    if compression == "jpeg":
        options["compressionargs"] = {"level": 90}
    if mpp is None:
        options.update(resolution=(1, 1), resolutionunit="NONE")
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            shape = (shape0_yx[0] // 2 ** level, shape0_yx[1] // 2 ** level)
            if mpp is not None:
                per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}[resolution_unit] / (mpp * 2 ** level)
                options.update(resolution=(per_unit, per_unit), resolutionunit=resolution_unit)
            tif.write(_level_tiles(shape0_yx, shape, tile_yx, 2 ** level, blank), shape=shape + (3,),
                      dtype=np.uint8, tile=tile_yx, subfiletype=1 if level else 0, **options)
    return path


# --- a python-backend model.py outside Triton ---------------------------------------------------

def fake_pb_utils() -> types.ModuleType:
    """Just enough of triton_python_backend_utils to drive execute() outside Triton; the real
    server runs it in the integration tests."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Logger:
        @staticmethod
        def log_info(message):
            pass

    pb.Tensor, pb.InferenceResponse, pb.Logger = Tensor, InferenceResponse, Logger
    pb.TritonError = lambda message: message
    pb.get_input_tensor_by_name = lambda request, name: next(t for t in request if t.name == name)
    return pb


class CountingSession:
    """An onnxruntime session that records the batch size of every run."""

    def __init__(self, session):
        self.session, self.batch_sizes = session, []

    def run(self, names, feeds):
        self.batch_sizes.append(len(feeds["INPUT__0"]))
        return self.session.run(names, feeds)


def load_triton_model(model_py, monkeypatch):
    """A python-backend model.py as Triton's stub runs it (a stand-in ``triton_python_backend_utils``),
    initialised, its session counting batches; returns ``(model, pb_utils)``."""
    pb = fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setenv("CARINA_TRITON_THREADS", "2")
    spec = importlib.util.spec_from_file_location(f"{model_py.parent.parent.name}_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({})
    model.session = CountingSession(model.session)
    return model, pb
