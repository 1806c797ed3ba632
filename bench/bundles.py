"""Bring your own model, two figures, each measured in this one run:

1. **A MONAI bundle folder to a first finished job**: the bundle the tests build (a seeded
   MONAI UNet, the Model Zoo spleen recipe; ``tests/bundle_maker.py``), then ``carina
   import-bundle``, a Triton started on the repository it wrote into, a worker started with
   the folder of definitions, and ``carina submit --wait`` on a CT: seconds per step and in all.
2. **spleen-seg through the whole stack against MONAI in one process**: the same CT,
   submitted (``queues.submit``) to a worker group on a local Redis with the spleen model on
   a local Triton (submit → done: messages, shared memory, the label ``.mhd`` and the publish
   folder written), and run in one process as MONAI users would (``LoadImaged``,
   ``Spacingd``, ``ScaleIntensityRanged``, ``sliding_window_inference`` over the same ONNX
   model in onnxruntime, ``AsDiscreted(argmax)``, ``Invertd`` by nearest neighbour,
   ``SaveImaged``), both with 2 threads and the same windows (96³, overlap 0.25, Gaussian
   blending, 4 per batch). The argmax comes before the inversion, as in Carina: the same
   labels, and MONAI's faster order (inverting two channels of probabilities at full
   resolution and taking their argmax there cost it 11 s more on 120×512×512). Both stay up
   for the whole run (the MONAI pipeline in a process of its own, asked for one run at a
   time); each runs once untimed first (model loaded, imports done), then ``--runs`` times,
   alternating; the medians count. ``stack_over_monai`` = stack / MONAI (the issue's target: ≤ 1.1).

The last line printed is one JSON object.

    python bench/bundles.py --slices 120 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from carina.local import LocalRedis, start_worker, stop_process_group
from carina.triton import MODEL_REPOSITORY, LocalTriton
from fastio import drain_pool
from ops.samples import spleen_phantom
from ops.volume import write_volume
from queues.app import create_app
from queues.jobs import JobStore
from queues.pipelines import submit, wait
from queues.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
SPACING = (0.8, 0.8, 1.5)
GEOMETRY = {"spacing": list(SPACING), "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


def carina(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "carina", *args], env=env, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"carina {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done


def stack_env(url: str, work: Path, triton_url: str, **more: str) -> dict[str, str]:
    return {**os.environ, "CARINA_REDIS_URL": url, "CARINA_NAMESPACE": f"bench-{work.name[-6:]}",
            "CARINA_DATA_ROOT": str(work), "CARINA_TRITON_URL": triton_url, "CARINA_TRITON_THREADS": str(THREADS),
            "OMP_NUM_THREADS": str(THREADS), **more}


def bundle_to_first_job(server: LocalRedis, work: Path, study: Path) -> dict[str, float]:
    """Seconds from a bundle folder to a finished job, step by step."""
    sys.path.insert(0, str(ROOT))
    from tests.bundle_maker import write_configs, write_network

    bundle = write_configs(work / "spleen_ct_bench")
    write_network(bundle)
    repository, definitions = work / "repository", work / "definitions"
    repository.mkdir()
    definitions.mkdir()
    started = time.perf_counter()
    seconds = {"import_s": carina(dict(os.environ), "import-bundle", str(bundle), "--models", str(repository),
                                  "--pipelines", str(definitions))[0]}
    step = time.perf_counter()
    with LocalTriton(repository) as triton:
        seconds["triton_start_s"] = time.perf_counter() - step
        env = stack_env(server.url.replace("/0", "/2"), work, triton.url, CARINA_PIPELINES_DIR=str(definitions))
        step = time.perf_counter()
        worker = start_worker(env, work / "bundle-worker.log", "io,cpu,gpu", concurrency=1)
        seconds["worker_start_s"] = time.perf_counter() - step
        try:
            seconds["first_job_s"] = carina(env, "submit", "spleen_ct_bench", "-i", str(study), "-o",
                                            str(work / "bundle-out"), "--wait")[0]
        finally:
            stop_process_group(worker)
    seconds["total_s"] = time.perf_counter() - started
    return {k: round(v, 2) for k, v in seconds.items()}


MONAI_SCRIPT = r'''
import sys, time, json
import numpy as np, onnxruntime as ort, torch
torch.set_num_threads({threads})
from monai.inferers import sliding_window_inference
from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged, SaveImaged,
                              ScaleIntensityRanged, Spacingd)

options = ort.SessionOptions()
options.intra_op_num_threads = {threads}
options.inter_op_num_threads = 1
session = ort.InferenceSession({model!r}, options, providers=["CPUExecutionProvider"])

def network(windows):
    return torch.from_numpy(session.run(["OUTPUT__0"], {{"INPUT__0": windows.numpy()}})[0])

pre = Compose([LoadImaged("image", image_only=False), EnsureChannelFirstd("image"),
               Spacingd("image", pixdim={pixdim}, mode="bilinear"),
               ScaleIntensityRanged("image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True)])
post = Compose([AsDiscreted("pred", argmax=True),
                Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True),
                SaveImaged("pred", output_dir=sys.argv[2], output_postfix="seg", separate_folder=False,
                           resample=False, print_log=False)])

def run(path):
    start = time.perf_counter()
    data = pre({{"image": path}})
    with torch.no_grad():
        data["pred"] = sliding_window_inference(data["image"][None], {roi}, 4, network, overlap=0.25,
                                                mode="gaussian")[0]
    post(data)
    return time.perf_counter() - start

for line in sys.stdin:  # one run per line asked for, its seconds answered
    print(json.dumps(run(sys.argv[1])), flush=True)
'''


class MonaiProcess:
    """The one-process MONAI pipeline in a process of its own, kept warm between runs."""

    def __init__(self, study: Path, out: Path):
        script = MONAI_SCRIPT.format(threads=THREADS, model=str(MODEL_REPOSITORY / "spleen_ct" / "1" / "model.onnx"),
                                     pixdim=[1.5, 1.5, 2.0], roi=[96, 96, 96])
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
        self.process = subprocess.Popen([sys.executable, "-c", script, str(study), str(out)], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def seconds(self) -> float:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the MONAI pipeline failed (exit {self.process.wait()})")
        return float(line)

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait(timeout=60)


def stack_seconds(env: dict[str, str], study: Path, out: Path) -> float:
    """Submit → done of one spleen-seg job."""
    settings = Settings.from_env(env)
    app = create_app(settings)
    jobs = JobStore(redis.Redis.from_url(settings.redis_url), settings.namespace, settings.job_ttl_s)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    job = submit(app, settings, "spleen-seg", study, out)
    status = wait(jobs, job, 3600)
    seconds = time.perf_counter() - start
    if status.state != "done":
        raise SystemExit(f"spleen-seg job {job}: {status.state} {status.error}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=120, help="axial slices of the 512×512 CT")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="carina-bench-bundles-"))
    ct, _ = spleen_phantom((args.slices, 512, 512), SPACING, seed=11)
    study = write_volume(ct, GEOMETRY, work / "study" / "ct.nii")
    figures: dict = {"shape": list(ct.shape), "threads": THREADS}
    try:
        with LocalRedis() as server:
            figures["bundle_to_first_job"] = bundle_to_first_job(server, work, study)
            with LocalTriton(MODEL_REPOSITORY, models=["spleen_ct"]) as triton:
                env = stack_env(server.url.replace("/0", "/1"), work, triton.url)
                worker = start_worker(env, work / "worker.log", "io,cpu,gpu", concurrency=1)
                monai_process = MonaiProcess(study, work / "monai-out")
                try:
                    stack_seconds(env, study, work / "stack-out")  # untimed: the model's first requests
                    monai_process.seconds()  # untimed: imports, the session's first runs
                    stack, monai = [], []
                    for _ in range(args.runs):
                        stack.append(stack_seconds(env, study, work / "stack-out"))
                        monai.append(monai_process.seconds())
                finally:
                    monai_process.close()
                    stop_process_group(worker)
                    drain_pool(redis.Redis.from_url(env["CARINA_REDIS_URL"]), Settings.from_env(env).fastio_config())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stack_s, monai_s = statistics.median(stack), statistics.median(monai)
    figures.update(stack_s=round(stack_s, 2), monai_s=round(monai_s, 2), stack_over_monai=round(stack_s / monai_s, 3),
                   stack_runs=[round(s, 2) for s in stack], monai_runs=[round(s, 2) for s in monai])
    first = figures["bundle_to_first_job"]
    print("| bundle → first job | s |\n|---|---:|\n" + "".join(f"| {k[:-2].replace('_', ' ')} | {v:.1f} |\n"
                                                            for k, v in first.items()))
    print(f"| spleen-seg, {'×'.join(map(str, ct.shape))} CT | s (median of {args.runs}) |\n|---|---:|\n"
          f"| Carina: submit → done through Redis, a worker, Triton | {stack_s:.1f} |\n"
          f"| MONAI in one process, onnxruntime | {monai_s:.1f} |\n| ratio | {stack_s / monai_s:.2f}× |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
