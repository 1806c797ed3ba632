"""Train the small ``spleen_ct`` model on synthetic phantoms and export it to ONNX.

The model has the seed's interface (the Clara spleen model's): one CT channel of 96³ in,
two channels of logits out (background, spleen), batch first::

    INPUT__0  float32 [N, 1, 96, 96, 96]   (z, y, x), preprocessed as below
    OUTPUT__0 float32 [N, 2, 96, 96, 96]

Inputs are what the pipeline feeds it: :func:`ops.segmentation.preprocess` (resample to
1.5 × 1.5 × 2.0 mm, window -57..164 HU onto [0, 1]) of an (z, y, x) array in the image's own
orientation, cut into 96³ windows padded with 0. Training uses :func:`ops.samples.spleen_phantom`
volumes of random field of view and voxel size, random crops (64³, then 96³ for the last epoch;
45 % centred near the spleen, 25 % near its mirror image: the liver), Dice + cross-entropy, and an average of the weights; everything runs on the CPU and derives from ``--seed``.

    python models/train_spleen.py                 # ≈ 13 min on 2 cores; writes models/spleen_ct/1/model.onnx
    python models/train_spleen.py --epochs 2 --out /tmp/smoke.onnx

Nothing is downloaded. Phantom seeds: training ``seed·10000 + i``, validation
``seed·10000 + 5000 + i``; tests use seeds ≥ 900000, which no training run touches.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.dont_write_bytecode = True  # no models/__pycache__/: Triton would take it for a model

from models import training  # noqa: E402

from ops.samples import spleen_phantom  # noqa: E402
from ops.segmentation import ROI_SIZE, preprocess, segment  # noqa: E402

DEFAULT_OUT = ROOT / "models" / "spleen_ct" / "1" / "model.onnx"
CHANNELS = (8, 16, 32, 48)  # per resolution level; three 2× poolings
INPUT_NAME, OUTPUT_NAME = "INPUT__0", "OUTPUT__0"
OPSET = 17
MAX_ONNX_BYTES = 5 * 1024 * 1024
SMALL_CROP = 64  # voxels a side, for the early epochs
POSITIVE_FRACTION = 0.45  # crops centred near a spleen voxel
MIRROR_FRACTION = 0.25  # crops centred on a spleen voxel mirrored in x: mostly liver; the rest anywhere
EMA_DECAY = 0.98  # per step: the exported weights are an average of the last ~50 steps'


# --- data -------------------------------------------------------------------------------

def phantom_geometry(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """A random scan: field of view 120–420 mm (log-uniform), in-plane voxels 0.6–1.6 mm,
    slices 0.8–5 mm over 100–260 mm; arrays capped at 320 × 320 × 160 to keep generation quick."""
    fov = math.exp(rng.uniform(math.log(120), math.log(420)))
    n_xy = int(min(320, round(fov / rng.uniform(0.6, 1.6))))
    extent = rng.uniform(100, 260)
    n_z = int(min(160, max(16, round(extent / rng.uniform(0.8, 5.0)))))
    return (n_z, n_xy, n_xy), (fov / n_xy, fov / n_xy, extent / n_z)


def geometry_dict(spacing_xyz) -> dict:
    return {"spacing": [float(s) for s in spacing_xyz], "origin": [0.0, 0.0, 0.0],
            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}


def make_case(seed: int, keep_raw: bool = False) -> dict:
    """One phantom at a random geometry, preprocessed (and its raw volume and label if asked)."""
    shape, spacing = phantom_geometry(np.random.default_rng([seed, 1]))
    volume, label = spleen_phantom(shape, spacing, seed)
    geometry = geometry_dict(spacing)
    image, _ = preprocess(volume, geometry)
    # The label rides the same grid: linear interpolation of 0/1, then ≥ 0.5.
    target, _ = preprocess(label.astype(np.float32), geometry, hu_window=(0.0, 1.0))
    case = {"seed": seed, "geometry": geometry, "image": image, "target": (target >= 0.5).astype(np.uint8)}
    if keep_raw:
        case.update(volume=volume, label=label)
    return case


def random_crop(case: dict, rng: np.random.Generator, size: int, positive_fraction: float = POSITIVE_FRACTION,
                mirror_fraction: float = MIRROR_FRACTION,
                centre: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A (size³) crop of the preprocessed image and target, zero-padded where the volume is
    smaller: centred near ``centre`` where given; else near a spleen voxel (probability
    ``positive_fraction``), near its mirror image across the volume's x centre
    (``mirror_fraction``: the liver, the hardest negative, lies there), or anywhere."""
    image, target = case["image"], case["target"]
    draw = rng.uniform()
    if centre is None and draw < positive_fraction + mirror_fraction and target.any():
        spleen = np.flatnonzero(target)
        z, y, x = np.unravel_index(spleen[rng.integers(len(spleen))], target.shape)
        centre = (z, y, x) if draw < positive_fraction else (z, y, target.shape[2] - 1 - x)
    elif centre is None:
        centre = tuple(int(rng.integers(n)) for n in target.shape)
    out_image = np.zeros((size,) * 3, np.float32)
    out_target = np.zeros((size,) * 3, np.uint8)
    src, dst = [], []
    for c, n in zip(centre, target.shape):
        if n <= size:   # the whole axis fits: place it at a random offset, as padding would
            offset = int(rng.integers(size - n + 1))
            src.append(slice(0, n))
            dst.append(slice(offset, offset + n))
        else:
            start = int(np.clip(c - size // 2 + rng.integers(-size // 8, size // 8 + 1), 0, n - size))
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
    out_image[tuple(dst)] = image[tuple(src)]
    out_target[tuple(dst)] = target[tuple(src)]
    return out_image, out_target


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild contrast and brightness jitter on the windowed [0, 1] values (air stays 0)."""
    body = image > 0
    return np.clip(image * rng.uniform(0.9, 1.1) + body * rng.uniform(-0.04, 0.04), 0.0, 1.0).astype(np.float32)


# --- model ------------------------------------------------------------------------------

def conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    return training.conv_block(in_channels, out_channels, convs, nn.Conv3d, nn.BatchNorm3d,
                               partial(nn.LeakyReLU, 0.01, inplace=True))


class SpleenUNet(nn.Module):
    """A compact 3D UNet: (N, 1, z, y, x) → (N, C, z, y, x) logits (C = ``out_channels``, 2
    for the spleen); z, y, x multiples of 8.

    One convolution per block at full resolution (where convolutions cost the most), two below;
    max-pooling down, transposed convolutions up, skip connections by concatenation. Batch
    norm, not instance norm: in eval mode it folds into the convolutions, so a window of
    nearly uniform air is not normalised by its own tiny variance, and onnxruntime matches
    torch closely (its InstanceNormalization differs by ~1e-4 on such windows).
    """

    def __init__(self, channels: tuple[int, ...] = CHANNELS, out_channels: int = 2):
        super().__init__()
        self.down = nn.ModuleList([conv_block(1, channels[0], 1)] + [
            conv_block(channels[i - 1], channels[i], 2) for i in range(1, len(channels))])
        self.up = nn.ModuleList([nn.ConvTranspose3d(channels[i], channels[i - 1], 2, stride=2)
                                 for i in range(1, len(channels))])
        self.merge = nn.ModuleList([conv_block(2 * channels[i - 1], channels[i - 1], 1 if i == 1 else 2)
                                    for i in range(1, len(channels))])
        self.head = nn.Conv3d(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool3d(x, 2) if i else x)
            skips.append(x)
        for i in range(len(self.up) - 1, -1, -1):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus the soft Dice loss over the whole batch, averaged over the foreground
    channels (the spleen's one)."""
    ce = F.cross_entropy(logits, target)
    p = torch.softmax(logits, dim=1)
    losses = []
    for channel in range(1, logits.shape[1]):
        t = (target == channel).float()
        losses.append(1 - (2 * (p[:, channel] * t).sum() + 1e-5) / (p[:, channel].sum() + t.sum() + 1e-5))
    return ce + torch.stack(losses).mean()


def train_epoch(model: nn.Module, draw_crop, loss_fn, steps: int, batch_size: int, crop_size: int, optimiser,
                schedule, ema, rng: np.random.Generator, frozen_norm: bool = False) -> float:
    """``steps`` optimiser steps, each on ``batch_size`` crops of ``crop_size``³ that
    ``draw_crop(rng, crop_size)`` gives as (image, target), augmented; batch norm's running
    statistics frozen where asked. Returns the epoch's mean loss."""
    model.train()
    if frozen_norm:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.eval()
    losses = []
    for _ in range(steps):
        crops = [draw_crop(rng, crop_size) for _ in range(batch_size)]
        image = torch.from_numpy(np.stack([augment(c[0], rng) for c in crops])[:, None])
        target = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
        loss = loss_fn(model(image), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        ema.update_parameters(model)
        losses.append(loss.item())
    return float(np.mean(losses))


def torch_predictor(model: nn.Module):
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()
    return predict


def ct_phantom_label(shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """The spleen of :func:`ops.samples.ct_phantom` (same formula), for a check on the demo phantom."""
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape_zyx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    return (((xx - 0.45) / 0.2) ** 2 + ((yy + 0.1) / 0.28) ** 2 + (zz / 0.5) ** 2 <= 1).astype(np.uint8)


# --- export -----------------------------------------------------------------------------

def export_onnx(model: nn.Module, out: Path, example: np.ndarray) -> float:
    """Write the model as ONNX (opset 17, dynamic batch), check it with onnxruntime against
    torch on ``example`` (N, 1, 96, 96, 96) and return the largest absolute difference."""
    import onnx
    import onnxruntime as ort

    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    x = torch.from_numpy(example)
    torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=OPSET,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(out)))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: example})[0]
    with torch.no_grad():
        want = model(x).numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"onnxruntime gave shape {got.shape}, torch {want.shape}")
    return float(np.abs(got - want).max())


# --- main -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--full-size-epochs", type=int, default=1,
                        help="the last epochs train on 96³ crops (batch norm frozen); the earlier ones on 64³")
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=2, help="at 96³; doubled for 64³ crops")
    parser.add_argument("--train-phantoms", type=int, default=40)
    parser.add_argument("--val-phantoms", type=int, default=4)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal activations made CPU steps 3–4× slower after a few dozen
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = ROI_SIZE[0]
    started = time.perf_counter()

    base = args.seed * 10_000
    train = [make_case(base + i) for i in range(args.train_phantoms)]
    val = [make_case(base + 5_000 + i, keep_raw=True) for i in range(args.val_phantoms)]
    print(f"phantoms: {len(train)} train, {len(val)} validation, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    val_crops = [random_crop(case, np.random.default_rng([case["seed"], 2]), size, 1.0, 0.0) for case in val]

    model = SpleenUNet()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SpleenUNet {CHANNELS}: {n_params} parameters", flush=True)
    total_steps = args.epochs * args.steps_per_epoch
    optimiser, schedule, ema = training.one_cycle_with_average(model, args.lr, total_steps, EMA_DECAY)

    train_started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        # The network is fully convolutional: smaller crops teach the same filters for less
        # than half the compute; the last epochs use the size it will see at inference, with
        # batch norm's running statistics frozen (two 96³ crops make noisy batch statistics).
        full_size = epoch > args.epochs - args.full_size_epochs
        crop_size, batch_size = (size, args.batch_size) if full_size else (SMALL_CROP, 2 * args.batch_size)
        loss = train_epoch(model, lambda r, n: random_crop(train[r.integers(len(train))], r, n), dice_ce_loss,
                           args.steps_per_epoch, batch_size, crop_size, optimiser, schedule, ema, rng, full_size)
        final = ema.module.eval()
        with torch.no_grad():
            predicted = final(torch.from_numpy(np.stack([c[0] for c in val_crops])[:, None])).argmax(1).numpy()
        crop_dice = training.dice(predicted, np.stack([c[1] for c in val_crops]))
        print(f"epoch {epoch:3d}  crops {batch_size}×{crop_size}³  loss {loss:.4f}  validation crop Dice {crop_dice:.3f}  "
              f"{time.perf_counter() - train_started:.0f} s", flush=True)
    train_seconds = time.perf_counter() - train_started

    # The pipeline's own path: preprocess → 96³ sliding window → argmax → back to the input grid.
    predictor = torch_predictor(final)
    scores = []
    for case in val:
        labels = segment(case["volume"], case["geometry"], predictor, sw_batch_size=2)
        scores.append(training.dice(labels, case["label"]))
        print(f"validation phantom {case['seed']}: shape {case['volume'].shape}, "
              f"spacing {np.round(case['geometry']['spacing'], 2).tolist()}: Dice {scores[-1]:.3f}", flush=True)
    print(f"validation Dice (whole volumes, sliding window): mean {np.mean(scores):.3f}, min {np.min(scores):.3f}")
    from ops.samples import CT_GEOMETRY, ct_phantom
    demo = ct_phantom()
    demo_dice = training.dice(segment(demo, CT_GEOMETRY, predictor, sw_batch_size=2), ct_phantom_label(demo.shape))
    print(f"ops.samples.ct_phantom() (the demo volume): Dice {demo_dice:.3f}")

    example = np.stack([c[0] for c in val_crops[:2]])[:, None]
    error = export_onnx(final, args.out, example)
    training.check_export(args.out, error, 1e-4, MAX_ONNX_BYTES)
    print(f"parameters {n_params}, training {train_seconds / 60:.1f} min, "
          f"total {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
