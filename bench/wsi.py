"""Whole-slide throughput: reading tiles, the nuclei model alone, and the nuclei-seg stage end to end.

Generates a synthetic H&E slide (``ops.samples.he_slide``: JPEG-tiled pyramidal TIFF, 256 px
tiles; 40000 × 30000 by default), starts the project's Triton (loopback) and measures, in the
same run:

- ``read_tiles_per_s``: 256 × 256 level-0 tiles decoded per second by ``ops.wsi`` (tifffile
  fast path, no tile cache) with ``--threads`` threads; ``openslide_tiles_per_s``: the same
  tiles through OpenSlide's ``read_region``, same threads;
- ``model_tiles_per_s``: tissue tiles per second through ``nuclei_unet`` alone: batches of
  pre-read tiles sent from ``--threads`` threads, tensors through system shared memory, as
  the stage sends them;
- ``e2e_tiles_per_s``: tissue tiles per second of the whole stage (``workers.tiling`` with
  Dask: read with margins, pre-filter, infer, overlay, and every tile, glass included,
  JPEG-encoded into the output pyramid, checkpoints kept for a resume as the worker keeps
  them: ``workers.tiling.write_segmented_pyramid``), run in a child process whose peak RSS is
  ``peak_rss_mb``; the same on a slide 1/16 the area gives ``peak_rss_small_mb``: memory
  that does not grow with the slide;
- ``client_tiles_per_s``: the same stage with a stand-in model that answers at once (zeros):
  what the pipeline around the model costs. Here the model and the client share the same
  CPU cores, so end to end ≈ 1 / (1/model + 1/client); with the model on its own device the
  slower of the two sets the pace.

- ``profile_ms_per_tile``: where the stage's CPU goes, each step's CPU time on one thread
  over the 1/16 slide, in milliseconds per tissue tile (the glass tiles' reading and writing
  spread over the tissue tiles, since the stage does both for every tile): reading and
  decoding, the pre-filter, the stand-in model, cropping and overlaying (on the stand-in's
  empty answer, as the stage does, and ``overlay_with_nuclei`` on a realistic mask,
  ``ops.stain``'s), encoding (each level-0 tile's JPEG and 2× reduction, done in the Dask
  tasks), the pyramid writer (the reduced levels and the file, on the writer's thread), and
  what Dask and the rest add: ``total`` (the whole stage's process CPU time with the stand-in
  on one Dask thread, in a process of its own) less the steps. ``jpeg_floor`` is the JPEG work
  alone, which no pipeline that reads and writes every tile can skip: decoding every level-0
  tile and encoding every tile of every level the stage encodes (glass that keeps the slide's
  own JPEG, ``workers.tiling.stored_glass_header``, is not encoded; ``glass_as_stored`` says
  whether this slide's is). ``standin_tiles_per_s`` is the
  stage with the stand-in on ``--threads`` threads (``client_tiles_per_s``, its older name,
  is kept), ``standin_encoded_glass_tiles_per_s`` the same with glass encoded too (the stage
  before glass kept the slide's JPEG) and ``standin_over_encoded_glass`` the gain,
  ``bound_tiles_per_s`` = 1 / (1/model + 1/standin): the end-to-end rate two shared
  cores allow, and ``e2e_over_bound`` how close the stage comes to it. The stand-in's rate is
  ``standin_cores_busy`` (its process's CPU over its wall time) over ``standin_cpu_ms_per_tile``
  (that CPU per tissue tile): 1,500 tiles/s on 2 cores needs 1.33 ms or less with both kept busy.

- with ``--peer tiatoolbox``: TIAToolbox's ``SemanticSegmentor`` on the same slide with the
  same model and threads (``bench/peer_tiatoolbox.py``, in ``.peer-venv``: ``make peer``),
  run after the stage: ``tiatoolbox_tiles_per_s`` (its patches, on the tissue its own mask
  finds, over its run) and ``tiatoolbox_peak_rss_mb`` (its process: the model runs inside it;
  the stage's model runs in Triton, outside ``peak_rss_mb``), and ``e2e_over_tiatoolbox``,
  ``peak_rss_over_tiatoolbox``.

The last line printed is one JSON object.

    python bench/wsi.py                        # about 10 minutes on 2 cores
    python bench/wsi.py --shape 6000 8000      # a quick look
    python bench/wsi.py --profile-only --shape 7500 10000   # the profile alone, a minute
    python bench/wsi.py --peer tiatoolbox      # and TIAToolbox on the same slide (make bench-peer)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ops.nuclei import model_input, model_side, read_tiles, request_nbytes, tissue_tiles
from ops.overlay import overlay_nuclei
from ops.pyramid import EncodedTile, JpegEncoding, level_shapes, write_pyramid
from ops.samples import he_slide
from ops.stain import nuclei_by_stain
from ops.triton import SLOT_ALIGNMENT, TritonPredictor
from ops.wsi import open_slide
from carina.triton import MODEL_REPOSITORY, LocalTriton
from spleen import posix_region  # bench/spleen.py: a POSIX shared-memory object, as FastIO makes

MODEL = "nuclei_unet"
TILE = 256
BATCH = 16
MASK_LIMIT = 1024 * 1024
PEER_PYTHON = Path(__file__).resolve().parent.parent / ".peer-venv" / "bin" / "python"


def read_rate(path: Path, backend: str, positions: list[tuple[int, int]], threads: int) -> float:
    """Tiles per second reading each of ``positions`` once with ``backend``."""
    with open_slide(path, backend=backend, cache_bytes=0) as slide, ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        for _ in pool.map(lambda p: slide.read_region(0, p[0], p[1], TILE, TILE), positions, chunksize=16):
            pass
        return len(positions) / (time.perf_counter() - start)


def predictor(url: str, threads: int) -> tuple[TritonPredictor, object]:
    region, remove = posix_region(threads * (request_nbytes(BATCH, model_side(TILE, 0)) + 2 * SLOT_ALIGNMENT))
    return TritonPredictor(url, MODEL, timeout_s=600, concurrency=threads, shared_memory=region), remove


def model_rate(url: str, path: Path, positions: list[tuple[int, int]], threads: int) -> float:
    """Tissue tiles per second through the model alone, ``threads`` requests in flight."""
    with open_slide(path) as slide:
        tiles = np.stack([slide.read_region(0, y, x, TILE, TILE) for y, x in positions])
    batches = [model_input(tiles[i:i + BATCH]) for i in range(0, len(tiles), BATCH)]
    model, remove = predictor(url, threads)
    try:
        model(batches[0])  # load and warm
        with ThreadPoolExecutor(threads) as pool:
            start = time.perf_counter()
            for _ in pool.map(model, batches):
                pass
            return len(tiles) / (time.perf_counter() - start)
    finally:
        model.close()
        remove()


def no_model(batch: np.ndarray) -> np.ndarray:
    """A stand-in for the model that costs nothing: no nuclei, at once."""
    return np.zeros((len(batch), 1, *batch.shape[2:]), np.float32)


def end_to_end(url: str | None, path: Path, threads: int, output: Path, keep_stored_glass: bool = True) -> dict:
    """The nuclei-seg stage in this process (run as a child: its peak RSS is the figure);
    ``url`` None runs it with :func:`no_model`; ``keep_stored_glass`` False encodes glass too."""
    from workers.tiling import dask_pools, segmented_tiles, write_segmented_pyramid

    with open_slide(path) as slide:
        tissue = tissue_tiles(slide, TILE, MASK_LIMIT)
        model, remove = predictor(url, threads) if url else (no_model, lambda: None)
        try:
            model(model_input(np.full((1, TILE, TILE, 3), 255, np.uint8)))  # load and warm
            dask_pools(threads)  # a worker makes its pools once, not per slide
            # and has run a slide before: the stage once over the first row of tiles (codecs,
            # the writer's modules and Dask's first computation warmed, outside the figure)
            write_pyramid(output, (TILE, slide.levels[0].shape_yx[1]), TILE,
                          segmented_tiles(slide, tissue[:1], TILE, 0, model, threads=threads, batch_size=BATCH,
                                          encoding=JpegEncoding(TILE)))
            start, cpu = time.perf_counter(), time.process_time()
            # As the stage writes it: checkpoints kept for a resume.
            write_segmented_pyramid(output, slide, tissue, TILE, 0, model, threads=threads, batch_size=BATCH,
                                    checkpoints=output.with_name(f".{output.name}.checkpoints"),
                                    keep_stored_glass=keep_stored_glass)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        finally:
            getattr(model, "close", lambda: None)()
            remove()
    return {"seconds": seconds, "cpu_s": cpu, "tissue_tiles": int(tissue.sum()), "tiles": int(tissue.size),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def profile(path: Path, workdir: Path) -> dict:
    """``profile_ms_per_tile``: CPU milliseconds per tissue tile of each step of the stage (see
    the module's docstring), over every tile of the slide at ``path``: each step's thread time,
    the stage's process time; and ``glass_as_stored``: whether the slide's glass keeps its own JPEG."""
    from workers.tiling import plan_batches, pyramid_tile, stored_glass_header

    clock = time.thread_time
    encoding = JpegEncoding(TILE)
    with open_slide(path) as slide:
        tissue = tissue_tiles(slide, TILE, MASK_LIMIT)
        header = stored_glass_header(slide, tissue, encoding)
        rows, cols = tissue.shape
        height, width = slide.levels[0].shape_yx
        positions = [(r * TILE, c * TILE) for r in range(rows) for c in range(cols)]
        seconds = dict.fromkeys(("read", "pre_filter", "model", "overlay", "encode", "writer", "dask",
                                 "overlay_with_nuclei"), 0.0)
        tiles: list[EncodedTile] = []
        for batch in plan_batches(tissue, BATCH):
            started = clock()
            regions = read_tiles(slide, [positions[i] for i in batch], TILE, 0)
            read = clock()
            chosen = [k for k, i in enumerate(batch) if tissue.flat[i]]
            inputs = model_input(regions[chosen])
            pre_filtered = clock()
            probability = no_model(inputs)[:, 0]
            answered = clock()
            batch_tiles = list(regions)
            for k, tile_probability in zip(chosen, probability):
                batch_tiles[k] = overlay_nuclei(regions[k], tile_probability)
            overlaid = clock()
            batch_tiles = [pyramid_tile(slide, tile[:min(TILE, height - positions[i][0]),
                                                    :min(TILE, width - positions[i][1])],
                                        divmod(int(i), cols), bool(tissue.flat[i]), encoding, header)
                           for i, tile in zip(batch, batch_tiles)]
            encoded = clock()
            masks = [nuclei_by_stain(regions[k]).nuclei.astype(np.float32) for k in chosen]  # not timed
            realistic = clock()
            for k, mask in zip(chosen, masks):
                overlay_nuclei(regions[k], mask)
            seconds["overlay_with_nuclei"] += clock() - realistic
            tiles += batch_tiles
            for step, (a, b) in (("read", (started, read)), ("pre_filter", (read, pre_filtered)),
                                 ("model", (pre_filtered, answered)), ("overlay", (answered, overlaid)),
                                 ("encode", (overlaid, encoded))):
                seconds[step] += b - a
        started = clock()
        write_pyramid(workdir / "profile.tif", (height, width), TILE,
                      ((i // cols, i % cols, tile) for i, tile in enumerate(tiles)))
        seconds["writer"] = clock() - started
        encoded_level0 = sum(tile.jpeg != slide.stored_jpeg(0, *divmod(i, cols)) for i, tile in enumerate(tiles))
        jpeg_floor = codec_seconds(tiles, encoding, (height, width), encoded_level0)
    # The whole stage's CPU in a process of its own: this one has run BLAS and Triton's client,
    # whose idle threads would count in its process time.
    stage = child_end_to_end(None, path, 1, workdir)["cpu_s"]
    with_nuclei = seconds.pop("overlay_with_nuclei")
    seconds["dask"] = max(0.0, stage - sum(seconds.values()))
    count = int(tissue.sum())
    profile_ms = {step: round(1000 * value / count, 3) for step, value in seconds.items()}
    profile_ms["total"] = round(1000 * stage / count, 3)
    # The stand-in finds no nuclei; a model that finds some costs the overlay this instead.
    profile_ms["overlay_with_nuclei"] = round(1000 * with_nuclei / count, 3)
    profile_ms["jpeg_floor"] = round(1000 * jpeg_floor / count, 3)
    return {"profile_ms_per_tile": profile_ms, "glass_as_stored": header is not None}


def codec_seconds(tiles: list[EncodedTile], encoding: JpegEncoding, shape: tuple[int, int],
                  encoded_level0: int) -> float:
    """CPU seconds of the JPEG work alone that the stage cannot skip: decoding every level-0 tile
    (the stage's own output tiles stand in for the slide's, same size and content) and encoding
    ``encoded_level0`` level-0 tiles and every tile of the reduced levels (each at level 0's
    mean cost per tile)."""
    import imagecodecs

    decode = encode = 0.0
    for tile in tiles:
        started = time.thread_time()
        pixels = imagecodecs.jpeg_decode(tile.jpeg)
        decoded = time.thread_time()
        encoding.encode(pixels)
        encode += time.thread_time() - decoded
        decode += decoded - started
    per_level = [-(-h // TILE) * -(-w // TILE) for h, w in level_shapes(shape)]
    return decode + encode * (encoded_level0 + sum(per_level[1:])) / per_level[0]


def child_end_to_end(url: str | None, path: Path, threads: int, workdir: Path,
                     keep_stored_glass: bool = True) -> dict:
    command = [sys.executable, __file__, "--e2e-child", str(path), "--threads", str(threads),
               "--workdir", str(workdir), *(["--url", url] if url else []),
               *([] if keep_stored_glass else ["--encode-glass"])]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs=2, type=int, default=(30000, 40000), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--threads", type=int, default=2, help="reader threads, Dask threads, requests in flight")
    parser.add_argument("--read-tiles", type=int, default=4000, help="tiles read by each reader")
    parser.add_argument("--model-tiles", type=int, default=480, help="tissue tiles sent to the model alone")
    parser.add_argument("--models", type=Path, default=MODEL_REPOSITORY, help="model repository")
    parser.add_argument("--workdir", type=Path, help="where the slides go (default: a temporary folder)")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the profile and the stand-in stage, on a slide of --shape (no Triton)")
    parser.add_argument("--peer", choices=["tiatoolbox"], help="also run this peer on the same slide")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON, help="the peer's environment's python")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--e2e-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--encode-glass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer and not args.peer_python.exists():
        raise SystemExit(f"{args.peer_python} not found: `make peer` makes TIAToolbox's environment")
    if args.e2e_child:
        print(json.dumps(end_to_end(args.url, args.e2e_child, args.threads, args.workdir / "e2e.tif",
                                    keep_stored_glass=not args.encode_glass)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        print(json.dumps((measure_profile if args.profile_only else measure)(Path(tmp), tuple(args.shape), args)))


def measure_profile(workdir: Path, shape: tuple[int, int], args: argparse.Namespace) -> dict:
    """The stand-in stage on ``--threads`` threads and the per-step profile, on one slide."""
    slide = he_slide(workdir / "slide.tif", shape, seed=11, tile_size=TILE)
    standin = child_end_to_end(None, slide, args.threads, workdir)
    return {"shape": list(shape), "threads": args.threads, "tissue_tiles": standin["tissue_tiles"],
            "tiles": standin["tiles"], **standin_figures(standin), **profile(slide, workdir)}


def tissue_rate(run: dict) -> float:
    """Tissue tiles per second of a :func:`child_end_to_end` run."""
    return run["tissue_tiles"] / run["seconds"]


def standin_figures(standin: dict) -> dict:
    """The stand-in stage's rate and its two factors on ``--threads`` threads: CPU per tissue
    tile (the whole process's) and how many cores it kept busy (its CPU over its wall time):
    the rate is their quotient, so each says how far the other must move."""
    return {"standin_tiles_per_s": round(tissue_rate(standin), 1),
            "standin_cpu_ms_per_tile": round(1000 * standin["cpu_s"] / standin["tissue_tiles"], 3),
            "standin_cores_busy": round(standin["cpu_s"] / standin["seconds"], 2)}


def measure(workdir: Path, shape: tuple[int, int], args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    slide = he_slide(workdir / "slide.tif", shape, seed=11, tile_size=TILE)
    small = he_slide(workdir / "small.tif", (shape[0] // 4, shape[1] // 4), seed=11, tile_size=TILE)
    print(f"generated {shape[0]}×{shape[1]} ({slide.stat().st_size / 2**20:.0f} MiB) and a 1/16 slide "
          f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    rng = np.random.default_rng(0)
    rows, cols = -(-shape[0] // TILE), -(-shape[1] // TILE)
    picked = rng.choice(rows * cols, size=min(args.read_tiles, rows * cols), replace=False)
    positions = [(int(i // cols) * TILE, int(i % cols) * TILE) for i in picked]
    ours = read_rate(slide, "tifffile", positions, args.threads)
    theirs = read_rate(slide, "openslide", positions, args.threads)

    with open_slide(slide) as opened:
        tissue = tissue_tiles(opened, TILE, MASK_LIMIT)
    flat = np.flatnonzero(tissue)
    chosen = rng.choice(flat, size=min(args.model_tiles, len(flat)), replace=False)
    tissue_positions = [(int(i // cols) * TILE, int(i % cols) * TILE) for i in chosen]

    with LocalTriton(args.models, models=[MODEL]) as server:
        model = model_rate(server.url, slide, tissue_positions, args.threads)
        e2e = child_end_to_end(server.url, slide, args.threads, workdir)
        e2e_small = child_end_to_end(server.url, small, args.threads, workdir)
    client = child_end_to_end(None, slide, args.threads, workdir)
    encoded_glass = child_end_to_end(None, slide, args.threads, workdir, keep_stored_glass=False)
    profiled = profile(small, workdir)
    peer = run_peer(args.peer_python, slide, args.models, args.threads, workdir) if args.peer else None

    e2e_rate, client_rate, encoded_glass_rate = (tissue_rate(run) for run in (e2e, client, encoded_glass))
    bound = 1 / (1 / model + 1 / client_rate)
    print("| figure | tiles/s |\n|---|---:|", file=sys.stderr)
    for name, value in (("read, ops.wsi (tifffile)", ours), ("read, OpenSlide read_region", theirs),
                        ("nuclei_unet alone", model), ("nuclei-seg stage end to end", e2e_rate),
                        ("the stage around a stand-in model that answers at once", client_rate),
                        ("the same, glass encoded too", encoded_glass_rate),
                        ("the shared-core bound 1/(1/model + 1/stand-in)", bound),
                        *((("TIAToolbox SemanticSegmentor, same model", peer["tiles_per_s"]),) if peer else ())):
        print(f"| {name} | {value:.0f} |", file=sys.stderr)
    print("| step (one thread) | ms per tissue tile |\n|---|---:|", file=sys.stderr)
    for step, value in profiled["profile_ms_per_tile"].items():
        print(f"| {step} | {value:.3f} |", file=sys.stderr)
    figures = {
        "shape": list(shape), "threads": args.threads, "tiles": e2e["tiles"], "tissue_tiles": e2e["tissue_tiles"],
        "read_tiles_per_s": round(ours), "openslide_tiles_per_s": round(theirs),
        "read_over_openslide": round(ours / theirs, 1),
        "model_tiles_per_s": round(model, 1), "e2e_tiles_per_s": round(e2e_rate, 1),
        "e2e_over_model": round(e2e_rate / model, 3), "e2e_s": round(e2e["seconds"], 1),
        "client_tiles_per_s": round(client_rate, 1), **standin_figures(client),
        "bound_tiles_per_s": round(bound, 1), "e2e_over_bound": round(e2e_rate / bound, 3),
        "standin_encoded_glass_tiles_per_s": round(encoded_glass_rate, 1),
        "standin_over_encoded_glass": round(client_rate / encoded_glass_rate, 3),
        **profiled,
        "peak_rss_mb": round(e2e["peak_rss_mb"]), "peak_rss_small_mb": round(e2e_small["peak_rss_mb"]),
    }
    if peer:
        figures.update({
            "tiatoolbox_tiles_per_s": round(peer["tiles_per_s"], 1), "tiatoolbox_patches": peer["patches"],
            "tiatoolbox_s": round(peer["seconds"], 1), "tiatoolbox_peak_rss_mb": round(peer["peak_rss_mb"]),
            "e2e_over_tiatoolbox": round(e2e_rate / peer["tiles_per_s"], 2),
            "peak_rss_over_tiatoolbox": round(e2e["peak_rss_mb"] / peer["peak_rss_mb"], 3)})
    return figures


def run_peer(python: Path, slide: Path, models: Path, threads: int, workdir: Path) -> dict:
    """TIAToolbox on ``slide`` with the same model (bench/peer_tiatoolbox.py, in its own environment)."""
    command = [str(python), str(Path(__file__).with_name("peer_tiatoolbox.py")), "--slide", str(slide),
               "--model", str(models / MODEL / "1" / "model.onnx"), "--threads", str(threads),
               "--workdir", str(workdir)]
    ran = subprocess.run(command, capture_output=True, text=True)
    if ran.returncode != 0:
        raise SystemExit(f"TIAToolbox failed: {ran.stderr[-3000:]}")
    peer = json.loads(ran.stdout.splitlines()[-1])
    return {**peer, "tiles_per_s": peer["patches"] / peer["seconds"]}


if __name__ == "__main__":
    main()
