"""A throw-away Orthanc (Debian's ``orthanc``) as the PACS of the tests and the demo, on loopback.

Orthanc 1.10 has no setting for its listening address: it binds every interface for DICOM
and HTTP. It is started with ``carina/native/loopback_bind.c`` preloaded (compiled once with
the system's ``cc`` into ``~/.cache/carina``), which turns a bind to "any" into a bind to
loopback; :meth:`LocalOrthanc.start` then checks ``/proc/net/tcp*`` that its ports are bound
to loopback and nowhere else, and refuses to go on otherwise. Its storage and index live in a
temporary folder, removed at :meth:`stop`. The REST API is used without credentials: it is
reachable from this host only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carina.errors import ServiceError
from carina.local import free_port, terminate

SHIM_SOURCE = Path(__file__).parent / "native" / "loopback_bind.c"
SHIM_CACHE = Path.home() / ".cache" / "carina"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb
LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc/net/tcp* write them


def loopback_shim() -> Path:
    """The compiled shim (built on first use, again when its source is newer).

    Raises: ServiceError: no C compiler, or it failed."""
    built = SHIM_CACHE / "loopback_bind.so"
    if built.exists() and built.stat().st_mtime >= SHIM_SOURCE.stat().st_mtime:
        return built
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ServiceError("no C compiler (cc) to build carina/native/loopback_bind.c, which keeps Orthanc on loopback")
    SHIM_CACHE.mkdir(parents=True, exist_ok=True)
    partial = built.with_suffix(".partial.so")
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(SHIM_SOURCE), "-ldl"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ServiceError(f"cannot build the loopback shim: {done.stderr.strip()[-500:]}")
    partial.replace(built)
    return built


def listening_addresses(port: int) -> set[str]:
    """The local addresses (as /proc/net/tcp* writes them, hex) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@dataclass
class LocalOrthanc:
    """Orthanc on 127.0.0.1: DICOM on :attr:`dicom_port` as :attr:`ae_title`, REST on :attr:`http_port`.

    Args:
        modalities: the peers it may C-STORE to, name → (AE title, host, port).
        dicomweb: load Debian's DICOMweb plugin (``orthanc-dicomweb``), served at :attr:`dicomweb_url`.
    """

    ae_title: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    dicomweb: bool = False
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    workdir: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 60.0) -> "LocalOrthanc":
        """Raises: ServiceError: not installed, did not answer, or listens beyond loopback."""
        binary = shutil.which("Orthanc")
        if binary is None:
            raise ServiceError("Orthanc is not installed (`make pacs` installs Debian's orthanc, as root)")
        self.workdir = self.workdir or Path(tempfile.mkdtemp(prefix="carina-orthanc-"))
        config = {
            "Name": "carina-test-pacs", "DicomAet": self.ae_title, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "StorageDirectory": str(self.workdir / "storage"), "IndexDirectory": str(self.workdir / "index"),
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "DicomCheckCalledAet": True, "StableAge": 1, "ConcurrentJobs": 1,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
        }
        if self.dicomweb and not DICOMWEB_PLUGIN.exists():
            raise ServiceError(f"{DICOMWEB_PLUGIN} is missing (`make pacs` installs orthanc-dicomweb, as root)")
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
        log = open(self.workdir / "orthanc.log", "w")
        self.process = subprocess.Popen([binary, str(self.workdir / "orthanc.json")], stdout=log,
                                        stderr=subprocess.STDOUT, env={"LD_PRELOAD": str(loopback_shim()),
                                                                       "PATH": "/usr/bin:/bin"})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, OSError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.workdir / "orthanc.log").read_text()[-2000:]
                    self.stop()
                    raise ServiceError(f"Orthanc did not start:\n{tail}") from None
                time.sleep(0.2)
        for port in (self.dicom_port, self.http_port):
            addresses = listening_addresses(port)
            if not addresses or not addresses <= LOOPBACK:
                self.stop()
                raise ServiceError(f"Orthanc listens on port {port} at {addresses}, not loopback only")
        return self

    def request(self, method: str, path: str, body: bytes | dict | None = None, timeout_s: float = 60) -> Any:
        """Orthanc's REST answer (JSON decoded, or bytes for a file)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(payload)
            return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, files: list[Path]) -> list[str]:
        """Store DICOM files through the REST API; their Orthanc instance ids."""
        return [self.request("POST", "/instances", path.read_bytes())["ID"] for path in files]

    def stop(self) -> None:
        terminate(self.process, 10.0)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalOrthanc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
