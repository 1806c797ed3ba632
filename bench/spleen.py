"""Spleen segmentation on a real Triton: windows/s, client overhead, and what each way of
moving tensors costs (JSON, binary HTTP, system shared memory).

Starts its own Triton on the project's model repository (loopback), segments a synthetic
512×512×Z CT with ``ops.segmentation.segment``'s steps through ``TritonPredictor`` (tensors through
shared memory, as the workers send them), and reads Triton's own compute time from its
statistics endpoint. ``overhead_ratio`` = wall time of the sliding window / Triton's compute
time for it (everything the client adds: windows, blending, transport).

Then one batch of windows is sent ``--transfer-runs`` times each way, in the same run: as JSON
(the KServe v2 body of MONAI Deploy's remote path), as binary HTTP, and through system shared
memory. ``json_s``/``binary_s``/``shm_s`` are the seconds per request **outside the model's
compute** (wall time minus Triton's ``compute_infer`` for those requests): the cost of moving
and (de)serialising the tensors, which is what differs. The last line printed is one JSON
object.

With ``--gpu`` the pre- and post-processing also run with cupy on the current CUDA device
(as a GPU worker runs them: ``segment(use_gpu=True)``), from and to host memory, after one
untimed call; the JSON adds ``gpu_preprocess_s``, ``gpu_postprocess_s``, their speed-ups over
the CPU's in the same run, and ``gpu_labels_agree``, the fraction of voxels whose label is
the same both ways. Without cupy or a device ``--gpu`` exits 2 with one line saying so.

    python bench/spleen.py --slices 200
    python bench/spleen.py --slices 200 --gpu
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ops.arrays import gpu_available, to_device, to_host
from ops.samples import spleen_phantom
from ops.sliding_window import sliding_window_inference
from ops.segmentation import ROI_SIZE, postprocess, preprocess, request_nbytes
from ops.triton import DEFAULT_CONCURRENCY, SharedRegion, TritonPredictor
from carina.triton import MODEL_REPOSITORY, LocalTriton

MODEL = "spleen_ct"


def json_request(url: str, batch: np.ndarray) -> Callable[[], None]:
    """One inference of ``batch`` with both tensors as JSON lists (tritonclient's binary_data=False)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=600, connection_timeout=600)

    def send() -> None:
        tensor = httpclient.InferInput("INPUT__0", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=False)
        result = client.infer(MODEL, [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT__0", binary_data=False)])
        result.as_numpy("OUTPUT__0")

    return send


def transport_seconds(send: Callable[[], None], runs: int, stats: TritonPredictor) -> tuple[float, float]:
    """(median wall seconds of one request, median seconds of one request outside the model's compute).

    Each request's own compute is read from the statistics around it: the model's compute
    varies from run to run by more than the transport costs, so a mean over runs would bury
    the difference being measured."""
    send()  # connections, first-use checks
    walls, outside = [], []
    for _ in range(runs):
        compute_before = stats.compute_seconds()
        start = time.perf_counter()
        send()
        wall = time.perf_counter() - start
        walls.append(wall)
        outside.append(wall - (stats.compute_seconds() - compute_before))
    return statistics.median(walls), statistics.median(outside)


def posix_region(nbytes: int) -> tuple[SharedRegion, Callable[[], None]]:
    """A 0600 POSIX shared-memory object of ``nbytes`` (what a FastIO allocation is), and its removal."""
    name = f"carina-bench-{uuid.uuid4().hex[:12]}"
    path = Path("/dev/shm") / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, nbytes)
    mapping = mmap.mmap(fd, nbytes)
    os.close(fd)
    return SharedRegion(f"/{name}", memoryview(mapping)), lambda: path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200, help="axial slices of the 512×512 CT")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--transfer-runs", type=int, default=7)
    parser.add_argument("--models", type=Path, default=MODEL_REPOSITORY, help="model repository")
    parser.add_argument("--gpu", action="store_true", help="also pre- and post-process on a CUDA device (cupy)")
    args = parser.parse_args()
    if args.gpu and not gpu_available():
        parser.exit(2, "bench/spleen.py --gpu: cupy is not installed or sees no CUDA device\n")

    spacing = (0.8, 0.8, 1.5)
    volume, _ = spleen_phantom((args.slices, 512, 512), spacing, seed=7)
    geometry = {"spacing": list(spacing), "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    region, remove_region = posix_region(DEFAULT_CONCURRENCY * (request_nbytes(args.sw_batch_size) + 4096))
    try:
        with LocalTriton(args.models, models=[MODEL]) as server:
            figures = measure(server.url, volume, geometry, region, args)
    finally:
        remove_region()
    print(json.dumps(figures))


def measure(url: str, volume: np.ndarray, geometry: dict, region: SharedRegion, args: argparse.Namespace) -> dict:
    predictor = TritonPredictor(url, MODEL, timeout_s=600, shared_memory=region)
    http = TritonPredictor(url, MODEL, timeout_s=600)
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
    labels = postprocess(logits[0], resampled_geometry, volume.shape, geometry)
    post_s = time.perf_counter() - start
    gpu = gpu_steps(volume, geometry, logits[0], labels, prep_s, post_s) if args.gpu else {}

    batch = np.random.default_rng(0).random((args.sw_batch_size, 1, *ROI_SIZE), dtype=np.float32)
    runs = args.transfer_runs
    json_wall, json_s = transport_seconds(json_request(url, batch), runs, http)
    binary_wall, binary_s = transport_seconds(lambda: http(batch), runs, http)
    shm_wall, shm_s = transport_seconds(lambda: predictor(batch), runs, http)
    predictor.close()

    print(f"| step | s |\n|---|---:|\n| preprocess | {prep_s:.2f} |\n| sliding window ({windows['n']} windows) | "
          f"{sliding_s:.2f} |\n| of which Triton compute | {compute_s:.2f} |\n| postprocess | {post_s:.2f} |")
    print(f"| one batch of {args.sw_batch_size} windows | wall s | outside the model's compute, s |\n|---|---:|---:|")
    for name, wall, outside in (("JSON", json_wall, json_s), ("binary HTTP", binary_wall, binary_s),
                                ("system shared memory", shm_wall, shm_s)):
        print(f"| {name} | {wall:.3f} | {outside:.3f} |")
    return {
        "shape": list(volume.shape), "windows": windows["n"], "sw_batch_size": args.sw_batch_size,
        "windows_per_s": round(windows["n"] / sliding_s, 2), "sliding_window_s": round(sliding_s, 2),
        "triton_compute_s": round(compute_s, 2), "overhead_ratio": round(sliding_s / compute_s, 3),
        "preprocess_s": round(prep_s, 2), "postprocess_s": round(post_s, 2),
        "json_s": round(json_s, 4), "binary_s": round(binary_s, 4), "shm_s": round(shm_s, 4),
        "json_over_binary": round(json_s / binary_s, 1), "binary_over_shm": round(binary_s / shm_s, 1),
        "json_wall_s": round(json_wall, 3), "binary_wall_s": round(binary_wall, 3), "shm_wall_s": round(shm_wall, 3),
        **gpu,
    }


def gpu_steps(volume: np.ndarray, geometry: dict, logits: np.ndarray, labels: np.ndarray, prep_s: float,
              post_s: float) -> dict:
    """Pre- and post-processing on the current CUDA device, from and to host memory, against
    the CPU's seconds (``prep_s``, ``post_s``) and ``labels`` from the same run."""
    import cupy

    def on_device() -> tuple[float, float, np.ndarray]:
        start = time.perf_counter()
        resampled, resampled_geometry = preprocess(to_device(volume), geometry)
        to_host(resampled)  # the windows go to Triton from host memory
        prep = time.perf_counter() - start
        start = time.perf_counter()
        gpu_labels = to_host(postprocess(to_device(logits), resampled_geometry, volume.shape, geometry))
        cupy.cuda.get_current_stream().synchronize()
        return prep, time.perf_counter() - start, gpu_labels

    on_device()  # kernels compiled, the memory pool filled
    gpu_prep_s, gpu_post_s, gpu_labels = on_device()
    print(f"| preprocess on the GPU | {gpu_prep_s:.3f} |\n| postprocess on the GPU | {gpu_post_s:.3f} |")
    return {"gpu_preprocess_s": round(gpu_prep_s, 3), "gpu_postprocess_s": round(gpu_post_s, 3),
            "gpu_preprocess_speedup": round(prep_s / gpu_prep_s, 1),
            "gpu_postprocess_speedup": round(post_s / gpu_post_s, 1),
            "gpu_labels_agree": round(float(np.mean(gpu_labels == labels)), 6)}


if __name__ == "__main__":
    main()
