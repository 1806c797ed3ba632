"""ops.blur.gaussian_blur against scipy.ndimage.gaussian_filter on a CT-sized float32 volume.

Both blur the same random (z, y, x) volume with the same per-axis sigma in voxels
(``sigma_mm / spacing``) and scipy's ``mode="reflect"``. Ours runs once first, untimed, so
numba's compilation (or loading its cache) and the start of its thread pool are left out;
then each method runs ``--runs`` times and the median counts. The two results must agree
to 1e-4 (relative, and absolute against the largest value); the script exits 1 if not.
The last line printed is one JSON object: ``ours_s``, ``scipy_s``, ``speedup``, ``shape``,
``cpus`` and the parameters.

    python bench/blur.py --shape 300 512 512 --sigma-mm 1.0 --spacing 0.7 0.7 2.5 --runs 3
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--sigma-mm", type=float, default=1.0)
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 2.5), metavar=("X", "Y", "Z"),
                        help="voxel size in mm, ITK order (x, y, z)")
    parser.add_argument("--truncate", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

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

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"Gaussian blur of a {'×'.join(map(str, shape))} float32 volume, sigma {args.sigma_mm} mm, "
          f"spacing (x, y, z) {tuple(args.spacing)} mm → sigma (z, y, x) {tuple(round(s, 3) for s in sigma_zyx)} "
          f"voxels; {cpus} CPUs, numba {numba.threading_layer()} × {numba.get_num_threads()} threads\n")
    print("| method | median s | min s | max s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print(f"| ops.blur (numba) | {ours_s:.3f} | {min(ours_times):.3f} | {max(ours_times):.3f} | "
          f"{scipy_s / ours_s:.1f}× |")
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
    }))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
