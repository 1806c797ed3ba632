#!/usr/bin/env bash
# Install the Triton Inference Server that tests, the demo and single-host installs start
# (carina/triton.py LocalTriton). Idempotent, no root needed; silent and fast once done.
#
#   scripts/setup_triton.sh            # -> .triton-venv/ (git-ignored)
#   PYTHON=python3.11 CARINA_TRITON_VENV=/opt/triton scripts/setup_triton.sh
#
# Where the server comes from, and why it gets its own virtualenv:
# - `tritonserver` 2.51 (CPU and GPU, python backend only) ships inside the nvidia-pytriton
#   wheel (pytriton/tritonserver/, its shared libraries in nvidia_pytriton.libs/). It runs on
#   a machine without CUDA; it only logs that the driver and pinned memory are missing.
# - nvidia-pytriton 0.7.0 requires numpy<2 and the main environment has numpy 2, hence
#   .triton-venv: only the server and the python-backend models' libraries live there.
# - The wheel keeps one python-backend stub per Python version under python_backend_stubs/;
#   the backend looks for `triton_python_backend_stub` next to libtriton_python.so only
#   (pytriton copies it there at run time). We copy the one matching this venv's Python once.
# - The stub embeds Python: it links libpython3.X.so.1.0, which a bare Debian python3 lacks
#   (package libpython3.X). Installed here when run as root, as the Makefile does for venv.
# - The stub does not see this venv's site-packages: the launcher exports them as
#   CARINA_TRITON_SITE_PACKAGES and every python-backend model.py prepends them to sys.path.
#
# The stamp .triton-venv/carina-triton.json records the paths the launcher needs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$ROOT/scripts/setup_triton.sh"
PYTHON="${PYTHON:-python3}"
VENV="${CARINA_TRITON_VENV:-$ROOT/.triton-venv}"
STAMP="$VENV/carina-triton.json"
# onnxruntime runs ONNX models inside python-backend models; 1.31 supports numpy 1.x.
REQUIREMENTS=("nvidia-pytriton==0.7.0" "numpy==1.26.4" "onnxruntime==1.31.1")

# Done already: the stamp is newer than this script (a changed script reinstalls).
if [ -f "$STAMP" ] && [ "$STAMP" -nt "$SCRIPT" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi

mkdir -p "$VENV"
exec 9>"$VENV/.setup.lock"
flock 9  # two setups at once (make test and make demo in parallel) take turns
if [ -f "$STAMP" ] && [ "$STAMP" -nt "$SCRIPT" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi

echo "setup_triton: installing Triton Inference Server into $VENV (about a minute, ~400 MB)"
if [ ! -x "$VENV/bin/python" ]; then
    # Debian's python3 lacks venv until python3-venv is installed (needs root).
    "$PYTHON" -m venv "$VENV" 2>/dev/null || {
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$VENV/bin" "$VENV/lib" "$VENV/include" "$VENV/pyvenv.cfg"
            "$PYTHON" -m venv "$VENV"
        else
            echo "setup_triton: '$PYTHON -m venv' failed; install python3-venv" >&2
            exit 1
        fi
    }
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"

PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
SERVER_DIR="$("$PY" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("pytriton").origin).parent / "tritonserver")')"
STUB="$SERVER_DIR/python_backend_stubs/$PYVER/triton_python_backend_stub"
if [ ! -f "$STUB" ]; then
    echo "setup_triton: nvidia-pytriton has no python-backend stub for Python $PYVER" \
         "(it ships $(ls "$SERVER_DIR/python_backend_stubs" | tr '\n' ' ')); set PYTHON=" >&2
    exit 1
fi
# Same depth as the original, so the stub's RPATH ($ORIGIN/../../../../nvidia_pytriton.libs) holds.
install -m 755 "$STUB" "$SERVER_DIR/backends/python/triton_python_backend_stub"

# The libpython the stub will load: this interpreter's own if it has one (pyenv, python.org,
# the python Docker images), else the system's (Debian: package libpython3.X).
LIBDIR="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
SONAME="libpython$PYVER.so.1.0"
if [ ! -e "$LIBDIR/$SONAME" ] && ! ldconfig -p 2>/dev/null | grep -q "$SONAME"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "libpython$PYVER" >/dev/null
    else
        echo "setup_triton: the python backend needs $SONAME; install libpython$PYVER (as root)" >&2
        exit 1
    fi
fi

# The binary finds its libraries through its RPATH; a missing system library shows here.
# (--help exits 1 after printing the usage.)
USAGE="$("$SERVER_DIR/bin/tritonserver" --help 2>&1 || true)"
if [[ "$USAGE" != *--model-repository* ]]; then
    echo "setup_triton: $SERVER_DIR/bin/tritonserver does not run:" >&2
    ldd "$SERVER_DIR/bin/tritonserver" | grep "not found" >&2 || true
    exit 1
fi

"$PY" - "$STAMP" "$SERVER_DIR" "$LIBDIR" "$SONAME" <<'EOF'
import json, pathlib, sys, sysconfig
stamp, server, libdir, soname = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
info = {
    "pytriton": "0.7.0",
    "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    "tritonserver": str(server / "bin" / "tritonserver"),
    "backends": str(server / "backends"),
    "libs": str(server.parent.parent / "nvidia_pytriton.libs"),
    "site_packages": sysconfig.get_paths()["purelib"],
    "python_libdir": libdir if (pathlib.Path(libdir) / soname).exists() else "",
    "bin": str(pathlib.Path(sys.executable).parent),
}
pathlib.Path(stamp).write_text(json.dumps(info, indent=2) + "\n")
EOF
echo "setup_triton: done"
