#!/usr/bin/env bash
# Install the Triton Inference Server that tests, the demo and single-host installs start
# (carina/triton.py LocalTriton). Idempotent, no root needed; silent and fast once done.
#
#   scripts/setup_triton.sh            # -> .triton-venv/ (git-ignored)
#   PYTHON=python3.11 CARINA_TRITON_VENV=/opt/triton scripts/setup_triton.sh
#   CARINA_TRITON_ONNXRUNTIME=gpu scripts/setup_triton.sh   # make triton-gpu
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
# onnxruntime runs ONNX models inside python-backend models; 1.31 supports numpy 1.x. Its CPU
# build by default; CARINA_TRITON_ONNXRUNTIME=gpu swaps in the CUDA build with the CUDA and
# cuDNN wheels it names (about 1.5 GB more), and unset keeps whichever is installed.
ONNXRUNTIME_VERSION=1.31.1
ONNXRUNTIME_KIND="${CARINA_TRITON_ONNXRUNTIME:-}"
case "$ONNXRUNTIME_KIND" in
    ""|cpu|gpu) ;;
    *) echo "setup_triton: CARINA_TRITON_ONNXRUNTIME must be cpu or gpu, not '$ONNXRUNTIME_KIND'" >&2; exit 1 ;;
esac

# Done already: the stamp is newer than this script (a changed script reinstalls) and records
# the onnxruntime build asked for.
installed() {
    [ -f "$STAMP" ] && [ "$STAMP" -nt "$SCRIPT" ] && [ -x "$VENV/bin/python" ] &&
        { [ -z "$ONNXRUNTIME_KIND" ] || grep -q "\"onnxruntime\": \"$ONNXRUNTIME_KIND\"" "$STAMP"; }
}
if installed; then
    exit 0
fi

mkdir -p "$VENV"
exec 9>"$VENV/.setup.lock"
flock 9  # two setups at once (make test and make demo in parallel) take turns
if installed; then
    exit 0
fi
if [ -z "$ONNXRUNTIME_KIND" ]; then  # reinstalled after a change of this script: keep the build
    ONNXRUNTIME_KIND="$(grep -o '"onnxruntime": "[a-z]*"' "$STAMP" 2>/dev/null | cut -d'"' -f4 || true)"
    ONNXRUNTIME_KIND="${ONNXRUNTIME_KIND:-cpu}"
fi
if [ "$ONNXRUNTIME_KIND" = gpu ]; then
    ONNXRUNTIME="onnxruntime-gpu[cuda,cudnn]==$ONNXRUNTIME_VERSION"
else
    ONNXRUNTIME="onnxruntime==$ONNXRUNTIME_VERSION"
fi
REQUIREMENTS=("nvidia-pytriton==0.7.0" "numpy==1.26.4" "$ONNXRUNTIME")

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
# The two builds share the package folder onnxruntime/: the other goes first, whole.
OTHER="$([ "$ONNXRUNTIME_KIND" = gpu ] && echo onnxruntime || echo onnxruntime-gpu)"
if "$PY" -m pip show --quiet "$OTHER" >/dev/null 2>&1; then
    "$PY" -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu
fi
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

"$PY" - "$STAMP" "$SERVER_DIR" "$LIBDIR" "$SONAME" "$ONNXRUNTIME_KIND" <<'EOF'
import json, pathlib, sys, sysconfig
stamp, server, libdir, soname, onnxruntime = sys.argv[1], pathlib.Path(sys.argv[2]), *sys.argv[3:6]
info = {
    "pytriton": "0.7.0",
    "onnxruntime": onnxruntime,
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
