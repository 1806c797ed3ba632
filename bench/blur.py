"""ops.blur.gaussian_blur against scipy.ndimage.gaussian_filter on a CT-sized float32 volume.

Both blur the same random (z, y, x) volume with the same per-axis sigma in voxels
(``sigma_mm / spacing``) and scipy's ``mode="reflect"``. Ours runs once first, untimed, so
numba's compilation (or loading its cache) and the start of its thread pool are left out;
then each method runs ``--runs`` times and the median counts. The two results must agree
to 1e-4 (relative, and absolute against the largest value); the script exits 1 if not.
The last line printed is one JSON object: ``ours_s``, ``scipy_s``, ``speedup``, ``shape``,
``cpus`` and the parameters.

With ``--gpu`` the same op also runs on a cupy copy of the volume (``cupyx.scipy.ndimage``),
timed twice, both after a first untimed call: ``gpu_s`` with the volume already on the device
and the device synchronised before the clock stops, ``gpu_round_trip_s`` from the host array
to the host result (the copies a worker makes around it). Both must agree with scipy to the
same tolerance. The JSON adds ``gpu_s``, ``gpu_speedup``, ``gpu_round_trip_s``,
``gpu_round_trip_speedup`` (scipy's time over each), ``gpu`` (the device's name) and
``gpu_max_abs_diff``. Without cupy or a CUDA device ``--gpu`` exits 2 with one line saying so.

    python bench/blur.py --shape 300 512 512 --sigma-mm 1.0 --spacing 0.7 0.7 2.5 --runs 3
    python bench/blur.py --gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numba
import numpy as np
from scipy import ndimage

from ops.arrays import gpu_available
from ops.blur import gaussian_blur

TOLERANCE = 1e-4  # relative, and absolute as a fraction of the reference's largest value


def timed(fn: Callable[[], np.ndarray], runs: int) -> tuple[list[float], np.ndarray]:
    """The wall-clock seconds of each of ``runs`` calls, and the last call's result."""
    times: list[float] = []
    result = np.empty(0)
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        # Keep only one result alive, so the next allocation does not run on a fuller heap.
        if len(times) < runs:
            del result
    return times, result


def gpu_figures(volume: np.ndarray, args: argparse.Namespace, reference: np.ndarray, scipy_s: float,
                peak: float) -> dict:
    """``ops.blur`` on the current CUDA device: median seconds on a device copy and from host
    to host, scipy's over each, and whether the result agrees with ``reference``."""
    import cupy

    from ops.arrays import to_device, to_host

    on_device = to_device(volume)

    def device_only() -> np.ndarray:  # a cupy array, which timed() only holds
        out = gaussian_blur(on_device, args.sigma_mm, args.spacing, truncate=args.truncate)
        cupy.cuda.get_current_stream().synchronize()
        return out

    def round_trip() -> np.ndarray:
        return to_host(gaussian_blur(to_device(volume), args.sigma_mm, args.spacing, truncate=args.truncate))

    round_trip()  # kernels compiled and cached, the memory pool filled
    device_times, _ = timed(device_only, args.runs)
    round_trip_times, result = timed(round_trip, args.runs)
    gpu_s, round_trip_s = statistics.median(device_times), statistics.median(round_trip_times)
    return {
        "gpu": cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode(),
        "gpu_s": round(gpu_s, 5), "gpu_speedup": round(scipy_s / gpu_s, 1),
        "gpu_round_trip_s": round(round_trip_s, 4), "gpu_round_trip_speedup": round(scipy_s / round_trip_s, 1),
        "gpu_max_abs_diff": float(np.abs(result - reference).max()),
        "gpu_agree": bool(np.allclose(result, reference, rtol=TOLERANCE, atol=TOLERANCE * peak)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--sigma-mm", type=float, default=1.0)
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 2.5), metavar=("X", "Y", "Z"),
                        help="voxel size in mm, ITK order (x, y, z)")
    parser.add_argument("--truncate", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="also on a CUDA device, through cupy")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.gpu and not gpu_available():
        print("bench/blur.py --gpu: cupy is not installed or sees no CUDA device", file=sys.stderr)
        return 2

    shape = tuple(args.shape)
    volume = np.random.default_rng(args.seed).random(shape, dtype=np.float32) * 2000 - 1000  # HU-like range
    sx, sy, sz = (args.sigma_mm / d for d in args.spacing)
    sigma_zyx = (sz, sy, sx)

    def ours() -> np.ndarray:
        return gaussian_blur(volume, args.sigma_mm, args.spacing, truncate=args.truncate)

    def scipy() -> np.ndarray:
        return ndimage.gaussian_filter(volume, sigma=sigma_zyx, mode="reflect", truncate=args.truncate)

    start = time.perf_counter()
    ours()
    warmup_s = time.perf_counter() - start

    ours_times, ours_out = timed(ours, args.runs)
    scipy_times, scipy_out = timed(scipy, args.runs)
    ours_s, scipy_s = statistics.median(ours_times), statistics.median(scipy_times)

    peak = float(np.abs(scipy_out).max())
    max_abs_diff = float(np.abs(ours_out - scipy_out).max())
    agree = bool(np.allclose(ours_out, scipy_out, rtol=TOLERANCE, atol=TOLERANCE * peak))

    gpu = gpu_figures(volume, args, scipy_out, scipy_s, peak) if args.gpu else {}
    agree = agree and gpu.get("gpu_agree", True)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"Gaussian blur of a {'×'.join(map(str, shape))} float32 volume, sigma {args.sigma_mm} mm, "
          f"spacing (x, y, z) {tuple(args.spacing)} mm → sigma (z, y, x) {tuple(round(s, 3) for s in sigma_zyx)} "
          f"voxels; {cpus} CPUs, numba {numba.threading_layer()} × {numba.get_num_threads()} threads\n")
    print("| method | median s | min s | max s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print(f"| ops.blur (numba) | {ours_s:.3f} | {min(ours_times):.3f} | {max(ours_times):.3f} | "
          f"{scipy_s / ours_s:.1f}× |")
    if gpu:
        print(f"| ops.blur (cupy, {gpu['gpu']}) | {gpu['gpu_s']:.4f} | | | {gpu['gpu_speedup']:.1f}× |")
        print(f"| the same from and to host memory | {gpu['gpu_round_trip_s']:.4f} | | | "
              f"{gpu['gpu_round_trip_speedup']:.1f}× |")
    print(f"| scipy.ndimage | {scipy_s:.3f} | {min(scipy_times):.3f} | {max(scipy_times):.3f} | 1.0× |")
    print(f"\nfirst call (compile or cache load, untimed): {warmup_s:.2f} s; "
          f"max |ours - scipy| = {max_abs_diff:.3g} (largest |value| {peak:.4g}); agree: {agree}")
    print(json.dumps({
        "ours_s": round(ours_s, 4),
        "scipy_s": round(scipy_s, 4),
        "speedup": round(scipy_s / ours_s, 2),
        "shape": list(shape),
        "cpus": cpus,
        "numba_threads": numba.get_num_threads(),
        "threading_layer": numba.threading_layer(),
        "sigma_mm": args.sigma_mm,
        "spacing_xyz": list(args.spacing),
        "truncate": args.truncate,
        "runs": args.runs,
        "warmup_s": round(warmup_s, 3),
        "max_abs_diff": max_abs_diff,
        "agree": agree,
        "machine": platform.processor() or platform.machine(),
        **gpu,
    }))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
