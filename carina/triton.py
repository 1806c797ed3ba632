"""A Triton Inference Server on loopback for tests, the demo and single-host installs.

The server is NVIDIA's ``tritonserver`` 2.51 (KServe v2 protocol, python backend only) from
the nvidia-pytriton wheel, installed by ``scripts/setup_triton.sh`` into its own virtualenv
``.triton-venv`` (the wheel needs numpy<2; the main environment has numpy 2). It runs on a
machine without a GPU. What the launcher has to get right, learned the hard way:

- The python backend runs each model instance in a ``triton_python_backend_stub`` process that
  embeds Python through ``libpython3.X.so.1.0``. ``LD_LIBRARY_PATH`` puts the triton venv's
  interpreter's lib directory first: a pyenv or python.org build keeps its libpython there,
  off the linker's path, and without it the stub silently takes the system's libpython of
  the same minor version (another patch release, or none at all on a bare Debian). The
  wheel's ``nvidia_pytriton.libs`` follows, as pytriton does; the binaries' RPATH
  (``$ORIGIN/../../../../nvidia_pytriton.libs``) finds them anyway.
- The stub's ``sys.path`` is its interpreter's, without the venv's site-packages. We export
  them as ``CARINA_TRITON_SITE_PACKAGES`` and every python-backend ``model.py`` starts with::

      import os, sys; sys.path[:0] = [p for p in os.environ.get("CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]

  The stub imports ``model.py`` before ``triton_python_backend_utils`` (which imports numpy),
  so numpy 1.x from the triton venv wins even where the base interpreter has numpy 2.
  ``PYTHONPATH``/``PYTHONHOME`` of the caller are dropped for the same reason.
- Output goes to a log file, never to a pipe nobody reads (a full pipe stalls the server); the
  stubs' own prints and tracebacks land in the same file.
- On a CPU-only machine the log opens with "CUDA driver version is insufficient" (pinned
  memory) and "CudaDriverHelper has not been initialized": both harmless.
- Each model instance owns a shared-memory region ``/dev/shm/triton_python_backend_shm_region_*``
  (1 MiB, growing by 1 MiB as tensors need), so containers need a /dev/shm that holds the
  largest request and response.
- On SIGTERM the server first waits for its open HTTP connections to close: a client's idle
  keep-alive connection (any live ``tritonclient`` client) holds it for the whole
  ``--exit-timeout-secs``, after which it "exits immediately" (status 1) without unloading
  the models: its stubs die ("Non-graceful termination detected") and their regions stay in
  /dev/shm. :meth:`LocalTriton.stop` therefore notes the stubs' regions (named on their
  command lines) before it signals, and unlinks what is left.
- Model control mode "none" loads the whole repository at start; with ``--exit-on-error``
  and ``--strict-readiness`` a model that fails to load stops the server, and ready means
  every model is ready. ``models=[...]`` switches to "explicit" and loads only those.

It imports no numpy, tritonclient, ops or workers: the CLI loads it without imaging code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Self

from carina.errors import ServiceError
from carina.local import free_port
from fastio.config import POSIX_SHM_DIR
from queues.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRITON_VENV = REPO_ROOT / ".triton-venv"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_triton.sh"
MODEL_REPOSITORY = REPO_ROOT / "models"
STAMP_NAME = "carina-triton.json"
SITE_PACKAGES_VARIABLE = "CARINA_TRITON_SITE_PACKAGES"
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"
# Seconds a stopping server waits for in-flight inferences and open HTTP connections (Triton: 30).
DEFAULT_EXIT_TIMEOUT_S = 5
# Logged as errors by a server without a GPU, and of no consequence.
HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized",)
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_GRACE_S = 15.0


class TritonInstall(NamedTuple):
    """Paths of one ``setup_triton.sh`` install, read from its stamp file."""

    tritonserver: Path
    backends: Path
    libs: Path
    site_packages: Path
    python_libdir: Path | None
    bin: Path


def default_triton_venv() -> Path:
    """``CARINA_TRITON_VENV`` if set (the setup script reads it too), else ``.triton-venv``."""
    return get_settings().triton_venv or DEFAULT_TRITON_VENV


def triton_install(venv: Path | None = None) -> TritonInstall:
    """The Triton install in ``venv`` (default :func:`default_triton_venv`).

    Raises:
        ServiceError: not installed, or the install is incomplete; the message says to run
            ``scripts/setup_triton.sh``.
    """
    venv = Path(venv) if venv is not None else default_triton_venv()
    stamp = venv / STAMP_NAME
    hint = f"run {SETUP_SCRIPT} (CARINA_TRITON_VENV={venv}) to install the Triton Inference Server"
    try:
        info = json.loads(stamp.read_text())
        install = TritonInstall(Path(info["tritonserver"]), Path(info["backends"]), Path(info["libs"]),
                                Path(info["site_packages"]),
                                Path(info["python_libdir"]) if info["python_libdir"] else None, Path(info["bin"]))
    except FileNotFoundError:
        raise ServiceError(f"no Triton Inference Server in {venv}: {hint}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServiceError(f"unreadable Triton install stamp {stamp} ({e}): {hint}") from e
    stub = install.backends / "python" / "triton_python_backend_stub"
    for path in (install.tritonserver, stub, install.site_packages):
        if not path.exists():
            raise ServiceError(f"the Triton install in {venv} lacks {path}: {hint}")
    return install


def triton_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``tritonserver`` and its python-backend stubs need (see the module doc)."""
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    libs = [str(install.python_libdir)] if install.python_libdir else []
    libs += [str(install.libs)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env[SITE_PACKAGES_VARIABLE] = str(install.site_packages)
    # Triton takes every folder of the repository for a model: a models/__pycache__ left by
    # the stubs importing the shared backend would stop the server loading any.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # A model that starts a subprocess with sys.executable gets the triton venv's Python.
    env["PATH"] = os.pathsep.join([str(install.bin), env.get("PATH", os.defpath)])
    return env


def stub_shm_regions(pgid: int) -> list[str]:
    """The shared-memory regions (names under /dev/shm) of the python-backend stubs in process
    group ``pgid``: each stub gets its region's name on its command line. Linux only; [] elsewhere."""
    regions = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:  # fields after comm: state ppid pgrp
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        regions += [a.decode() for a in argv if a.startswith(SHM_REGION_PREFIX.encode()) and b"/" not in a]
    return regions


# The server's files (its log) are private. Its python backend's tensor regions in /dev/shm
# are made 0644 whatever the umask (boost sets the mode itself): they are chmod-ed to 0600 as
# soon as the server is ready, and then every REGION_CHECK_S for models loaded later.
PRIVATE_UMASK = 0o077
REGION_CHECK_S = 1.0


@dataclass
class LocalTriton:
    """A throw-away ``tritonserver`` serving ``model_repository`` on 127.0.0.1 only.

    HTTP, gRPC and metrics each listen on a free loopback port; SageMaker and Vertex AI stay
    off. The server runs in its own process group with its stubs, logging to
    ``workdir/tritonserver.log``; :meth:`stop` ends it and removes ``workdir``.

    Args:
        model_repository: the folder of models (``<name>/config.pbtxt``, ``<name>/<version>/``);
            may instead be passed to :meth:`start`.
        models: None to load every model of the repository (model control mode "none"), or
            the names to load (mode "explicit"; others may then be loaded through the API).
        venv: the triton virtualenv (default :func:`default_triton_venv`).
        extra_args: more ``tritonserver`` options, e.g. ``--backend-config=python,...``.
    """

    model_repository: Path | None = None
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    models: Sequence[str] | None = None
    venv: Path | None = None
    extra_args: Sequence[str] = ()
    process: subprocess.Popen | None = None
    workdir: Path | None = None
    # Set once stop() has cleaned up: the group's id may name another process group later.
    _stopped: bool = field(default=False, init=False, repr=False)

    @property
    def url(self) -> str:
        """``127.0.0.1:PORT``, the form ``tritonclient.http`` takes (no scheme)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def log(self) -> Path | None:
        return self.workdir / "tritonserver.log" if self.workdir is not None else None

    def command(self, install: TritonInstall, model_repository: Path) -> list[str]:
        cmd = [str(install.tritonserver), "--model-repository", str(model_repository),
               "--backend-directory", str(install.backends),
               "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
               "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
               "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
               # GPU metrics go through DCGM, absent here and pointless on a CPU-only host.
               "--allow-gpu-metrics", "false",
               "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
               "--exit-on-error", "true", "--strict-readiness", "true",
               "--exit-timeout-secs", str(DEFAULT_EXIT_TIMEOUT_S)]
        if self.models is None:
            cmd += ["--model-control-mode", "none"]
        else:
            cmd += ["--model-control-mode", "explicit"]
            for name in self.models:
                cmd += ["--load-model", name]
        return cmd + list(self.extra_args)

    def start(self, model_repository: Path | None = None,
              timeout_s: float = DEFAULT_START_TIMEOUT_S) -> Self:
        """Start the server and wait until ``GET /v2/health/ready`` answers 200 (every model loaded).

        Raises:
            ServiceError: not installed, the repository is missing, or the server exited or was
                not ready within ``timeout_s`` (the log's tail is quoted).
        """
        if model_repository is not None:
            self.model_repository = Path(model_repository)
        if self.model_repository is None or not Path(self.model_repository).is_dir():
            raise ServiceError(f"model_repository {self.model_repository!r} is not a folder")
        install = triton_install(self.venv)
        repository = Path(self.model_repository).resolve()
        self.workdir = Path(tempfile.mkdtemp(prefix="carina-triton-"))
        cmd = self.command(install, repository)
        self._stopped = False
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(cmd, env=triton_environment(install), cwd=self.workdir,
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, umask=PRIVATE_UMASK)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self.process.poll() is not None else f"was not ready in {timeout_s:.0f} s"
                summary = self.log_summary()
                self.stop()
                raise ServiceError(f"tritonserver {why} ({' '.join(cmd)}):\n{summary}")
            time.sleep(0.1)
        self._make_regions_private()
        threading.Thread(target=self._keep_regions_private, args=(self.process,), daemon=True,
                         name="triton-regions").start()
        return self

    def _make_regions_private(self) -> None:
        for region in stub_shm_regions(self.process.pid):
            try:
                os.chmod(POSIX_SHM_DIR / region, 0o600)
            except FileNotFoundError:
                pass

    def _keep_regions_private(self, process: subprocess.Popen) -> None:
        while process.poll() is None and not self._stopped:
            self._make_regions_private()
            time.sleep(REGION_CHECK_S)

    def ready(self) -> bool:
        """True when the server answers ``/v2/health/ready`` with 200; never raises."""
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, nbytes: int = 4000) -> str:
        """The end of the server's log ('' before :meth:`start` or after :meth:`stop`)."""
        try:
            return self.log.read_text(errors="replace")[-nbytes:] if self.log else ""
        except OSError:
            return ""

    def log_summary(self, lines: int = 12) -> str:
        """The log's error lines, then its last ``lines`` lines, without the tables Triton draws
        at start (they would push the reason why a model failed out of a plain tail)."""
        text = self.log_tail(1_000_000).splitlines()
        errors = [line[:1500] for line in text
                  if re.match(r"E\d{4} ", line) and not any(h in line for h in HARMLESS_ERRORS)]
        last = [line[:1500] for line in text if line and line[0] not in "+|"][-lines:]
        return "\n".join(errors[-lines:] + ["[...]"] + last)

    def stop(self, grace_s: float = DEFAULT_STOP_GRACE_S) -> None:
        """SIGTERM the server, SIGKILL its whole process group after ``grace_s``, unlink the
        shared memory its stubs leave behind; then remove the log folder."""
        if self.process is not None and not self._stopped:
            regions = stub_shm_regions(self.process.pid)
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            try:  # stubs left behind by a killed server
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for region in regions:
                (POSIX_SHM_DIR / region).unlink(missing_ok=True)
            self._stopped = True
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
