#!/usr/bin/env bash
# Every GPU path in one run, under 8 minutes on one GPU (issue 16's fourth item), each with its
# CPU baseline measured in the same run; each part's last line is its JSON:
#
#   1. the 3D Gaussian blur: ops.blur on cupy against scipy.ndimage (bench/blur.py --gpu);
#      needs only numpy, scipy, numba and cupy, so it also runs where the project is not set up;
#   2. spleen-seg: pre- and post-processing with cupy beside the CPU's, and the sliding window
#      on Triton, on whichever provider Triton's onnxruntime has (bench/spleen.py --gpu);
#   3. nuclei-seg with the model on Triton's GPU, end to end against the model alone
#      (bench/wsi.py), only where Triton's onnxruntime has CUDA (`make triton-gpu`).
#
# Parts 2 and 3 need the project's environment and Triton's (make setup triton). Where a part
# cannot run, the script says why and goes on. Without a GPU it says so and exits 0: the GPU
# figures are never a blocker. It exits 1 when a part that ran failed.
#
#   bash bench/gpu.sh            # PYTHON=python3 bash bench/gpu.sh: another interpreter for part 1
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV_PY=.venv/bin/python
TRITON_PY=.triton-venv/bin/python
PY="${PYTHON:-$([ -x "$VENV_PY" ] && echo "$VENV_PY" || echo python3)}"
say() { echo "bench/gpu.sh: $*"; }

if ! "$PY" -c 'import sys; from ops.arrays import gpu_available; sys.exit(0 if gpu_available() else 1)' 2>/dev/null; then
    say "no GPU here ($PY: cupy not installed or no CUDA device it sees): nothing measured"
    exit 0
fi
nvidia-smi -L 2>/dev/null || true
failed=0
part() {  # part NAME SECONDS COMMAND...: run one part under a time limit, noting a failure
    local name=$1 limit=$2
    shift 2
    say "$name"
    timeout "$limit" "$@" || { say "$name: failed (exit $?)"; failed=1; }
}

part "blur, cupy against scipy" 150 "$PY" bench/blur.py --gpu --runs 3

if [ ! -x "$VENV_PY" ] || [ ! -x "$TRITON_PY" ]; then
    say "spleen-seg, nuclei-seg: not measured: the project's environment is not set up (make setup triton)"
    exit "$failed"
fi
providers="$("$TRITON_PY" -c 'import onnxruntime as o; print(" ".join(o.get_available_providers()))')"
say "Triton's onnxruntime: $providers"
part "spleen-seg, cupy pre- and post-processing" 150 "$VENV_PY" bench/spleen.py --slices 200 --gpu --transfer-runs 3
if [[ " $providers " == *" CUDAExecutionProvider "* ]]; then
    part "nuclei-seg, the model on Triton's GPU" 240 \
        "$VENV_PY" bench/wsi.py --shape 15000 20000 --threads "$(nproc)" --model-tiles 960
else
    say "nuclei-seg on Triton's GPU: not measured: Triton's onnxruntime has no CUDAExecutionProvider (make triton-gpu)"
fi
exit "$failed"
