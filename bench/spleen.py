"""Spleen segmentation on a real Triton: windows/s, client overhead, JSON against binary tensors.

Starts its own Triton on the project's model repository (loopback), segments a synthetic
512×512×Z CT with ``ops.spleen.segment`` through ``TritonPredictor``, and reads Triton's own
compute time from its statistics endpoint. ``overhead_ratio`` = wall time of the sliding
window / Triton's compute time for it (everything the client adds: resampling, windows,
blending, HTTP). The same batch of windows is then sent as JSON and as binary tensors, each
in the same run. The last line printed is one JSON object.

    python bench/spleen.py --slices 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ops.samples import spleen_phantom
from ops.sliding_window import sliding_window_inference
from ops.spleen import ROI_SIZE, postprocess, preprocess
from ops.triton_client import TritonPredictor
from queues.triton import REPO_ROOT, LocalTriton

MODEL = "spleen_ct"


def transfer_seconds(url: str, batch: np.ndarray, binary: bool, runs: int) -> float:
    """Median seconds for one request of ``batch`` with the tensors in JSON or binary form."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=600, connection_timeout=600)
    samples = []
    for _ in range(runs):
        tensor = httpclient.InferInput("INPUT__0", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        start = time.perf_counter()
        result = client.infer(MODEL, [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT__0", binary_data=binary)])
        result.as_numpy("OUTPUT__0")
        samples.append(time.perf_counter() - start)
    client.close()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200, help="axial slices of the 512×512 CT")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--transfer-runs", type=int, default=3)
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models", help="model repository")
    args = parser.parse_args()

    spacing = (0.8, 0.8, 1.5)
    volume, _ = spleen_phantom((args.slices, 512, 512), spacing, seed=7)
    geometry = {"spacing": list(spacing), "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    with LocalTriton(args.models, models=[MODEL]) as server:
        predictor = TritonPredictor(server.url, MODEL, timeout_s=600)
        predictor(np.zeros((1, 1, *ROI_SIZE), np.float32))  # load and warm the model
        start = time.perf_counter()
        resampled, resampled_geometry = preprocess(volume, geometry)
        prep_s = time.perf_counter() - start
        windows = {"n": 0}
        compute_before = predictor.compute_seconds()
        start = time.perf_counter()
        logits = sliding_window_inference(resampled[None, None], ROI_SIZE, args.sw_batch_size, predictor,
                                          mode="gaussian", progress=lambda done, total: windows.update(n=total))
        sliding_s = time.perf_counter() - start
        compute_s = predictor.compute_seconds() - compute_before
        start = time.perf_counter()
        postprocess(logits[0], resampled_geometry, volume.shape, geometry)
        post_s = time.perf_counter() - start

        batch = np.random.default_rng(0).random((args.sw_batch_size, 1, *ROI_SIZE), dtype=np.float32)
        binary_s = transfer_seconds(server.url, batch, True, args.transfer_runs)
        json_s = transfer_seconds(server.url, batch, False, args.transfer_runs)

    figures = {
        "shape": list(volume.shape), "windows": windows["n"], "sw_batch_size": args.sw_batch_size,
        "windows_per_s": round(windows["n"] / sliding_s, 2), "sliding_window_s": round(sliding_s, 2),
        "triton_compute_s": round(compute_s, 2), "overhead_ratio": round(sliding_s / compute_s, 3),
        "preprocess_s": round(prep_s, 2), "postprocess_s": round(post_s, 2),
        "json_s": round(json_s, 3), "binary_s": round(binary_s, 3), "json_over_binary": round(json_s / binary_s, 1),
        # Triton's system shared-memory path is not built yet: no figure rather than a made-up one.
        "shm_s": None,
    }
    print(f"| step | s |\n|---|---:|\n| preprocess | {prep_s:.2f} |\n| sliding window ({windows['n']} windows) | "
          f"{sliding_s:.2f} |\n| of which Triton compute | {compute_s:.2f} |\n| postprocess | {post_s:.2f} |")
    print(f"| one batch of {args.sw_batch_size} windows | JSON {json_s:.3f} s | binary {binary_s:.3f} s |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
