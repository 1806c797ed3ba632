"""Train the small ``abdomen_ct`` model on synthetic phantoms and export it to ONNX: a second
3D model, with another recipe than the spleen's, that Carina runs from its definition alone
(``queues/definitions/abdomen-seg.yaml``, ``models/abdomen_ct/``).

Interface (``models/abdomen_ct/interface.json``): one CT channel of 64³ in, four channels of
logits out (background, liver, kidney, spleen: :data:`ops.samples.ORGAN_LABELS`), batch first::

    INPUT__0  float32 [N, 1, 64, 64, 64]   (z, y, x), preprocessed as below
    OUTPUT__0 float32 [N, 4, 64, 64, 64]

The recipe (the definition's settings): resample to 2.0 × 2.0 × 3.0 mm (x, y, z), window
-160..240 HU onto [0, 1], 64³ windows. Data: :func:`ops.samples.abdomen_phantom` at random
geometries (as ``train_spleen.py``); crops of 48³, then 64³ for the last epoch, each centred
near an organ drawn uniformly (:func:`balanced_crop`); Dice (mean over the three organs) +
class-weighted cross-entropy; an average of the weights. CPU only, everything from ``--seed``.

    python models/train_abdomen.py                # ≈ 9 min on 2 cores; writes models/abdomen_ct/1/model.onnx
    python models/train_abdomen.py --epochs 2 --out /tmp/smoke.onnx

Nothing is downloaded. Phantom seeds: training ``seed·10000 + i``, validation
``seed·10000 + 5000 + i``; tests use seeds ≥ 900000.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.dont_write_bytecode = True  # no models/__pycache__/: Triton would take it for a model

from models import training  # noqa: E402
from models.train_spleen import (EMA_DECAY, SpleenUNet, export_onnx, geometry_dict, phantom_geometry,  # noqa: E402
                                 random_crop, torch_predictor, train_epoch)

from ops.samples import ORGAN_LABELS, abdomen_phantom  # noqa: E402
from ops.segmentation import preprocess, segment  # noqa: E402

DEFAULT_OUT = ROOT / "models" / "abdomen_ct" / "1" / "model.onnx"
ROI = 64
SMALL_CROP = 48
TARGET_SPACING_XYZ = (2.0, 2.0, 3.0)
INTENSITY_WINDOW = (-160.0, 240.0)
CLASSES = 1 + len(ORGAN_LABELS)
MAX_ONNX_BYTES = 5 * 1024 * 1024
# Cross-entropy weights of background, liver, kidney, spleen: about the inverse square root of
# their share of the crops' voxels (92 %, 6 %, 0.5 %, 1.5 %). Unweighted, the network settles on
# background and liver and never starts on the two small organs.
CLASS_WEIGHTS = (1.0, 3.0, 20.0, 8.0)


def make_case(seed: int, keep_raw: bool = False) -> dict:
    """One phantom at a random geometry, preprocessed by the recipe; each organ's mask rides the
    same grid (linear interpolation), the voxel taking the organ above 0.5, else background."""
    shape, spacing = phantom_geometry(np.random.default_rng([seed, 1]))
    volume, organs = abdomen_phantom(shape, spacing, seed)
    geometry = geometry_dict(spacing)
    image, _ = preprocess(volume, geometry, TARGET_SPACING_XYZ, INTENSITY_WINDOW)
    masks = [np.full(image.shape, 0.5, np.float32)]
    for value in sorted(ORGAN_LABELS.values()):
        masks.append(preprocess((organs == value).astype(np.float32), geometry, TARGET_SPACING_XYZ, (0.0, 1.0))[0])
    case = {"seed": seed, "geometry": geometry, "image": image, "target": np.argmax(masks, axis=0).astype(np.uint8)}
    if keep_raw:
        case.update(volume=volume, organs=organs)
    return case


def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy plus the soft Dice loss averaged over the three organs."""
    ce = F.cross_entropy(logits, target, weight=torch.tensor(CLASS_WEIGHTS))
    p = torch.softmax(logits, dim=1)
    losses = [1 - (2 * (p[:, c] * (target == c)).sum() + 1e-5) / (p[:, c].sum() + (target == c).sum() + 1e-5)
              for c in range(1, CLASSES)]
    return ce + torch.stack(losses).mean()


def balanced_crop(case: dict, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A crop centred, with probability 0.85, near a voxel of an organ drawn uniformly among
    those present (the liver would otherwise take most crops: it is ten times the spleen),
    else anywhere."""
    present = [value for value in sorted(ORGAN_LABELS.values()) if (case["target"] == value).any()]
    if not present or rng.uniform() >= 0.85:
        return random_crop(case, rng, size, 0.0, 0.0)
    voxels = np.flatnonzero(case["target"] == present[rng.integers(len(present))])
    centre = np.unravel_index(voxels[rng.integers(len(voxels))], case["target"].shape)
    return random_crop(case, rng, size, centre=tuple(int(c) for c in centre))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=36)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-phantoms", type=int, default=32)
    parser.add_argument("--val-phantoms", type=int, default=4)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    base = args.seed * 10_000
    train = [make_case(base + i) for i in range(args.train_phantoms)]
    val = [make_case(base + 5_000 + i, keep_raw=True) for i in range(args.val_phantoms)]
    print(f"phantoms: {len(train)} train, {len(val)} validation, {time.perf_counter() - started:.0f} s", flush=True)
    val_crops = [random_crop(case, np.random.default_rng([case["seed"], 2]), ROI, 0.7, 0.0) for case in val]

    model = SpleenUNet(out_channels=CLASSES)
    n_params = sum(p.numel() for p in model.parameters())
    optimiser, schedule, ema = training.one_cycle_with_average(model, args.lr, args.epochs * args.steps_per_epoch,
                                                               EMA_DECAY)
    train_started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        full_size = epoch == args.epochs
        crop_size, batch_size = (ROI, args.batch_size // 2) if full_size else (SMALL_CROP, args.batch_size)
        loss = train_epoch(model, lambda r, n: balanced_crop(train[r.integers(len(train))], r, n), loss_of,
                           args.steps_per_epoch, batch_size, crop_size, optimiser, schedule, ema, rng, full_size)
        final = ema.module.eval()
        print(f"epoch {epoch:3d}  crops {batch_size}×{crop_size}³  loss {loss:.4f}  "
              f"{time.perf_counter() - train_started:.0f} s", flush=True)
    train_seconds = time.perf_counter() - train_started

    predictor = torch_predictor(final)
    for case in val:
        labels = segment(case["volume"], case["geometry"], predictor, roi_size=(ROI,) * 3, sw_batch_size=2,
                         target_spacing_xyz=TARGET_SPACING_XYZ, intensity_window=INTENSITY_WINDOW)
        scores = {name: training.dice(labels == value, case["organs"] == value) for name, value in ORGAN_LABELS.items()}
        print(f"validation phantom {case['seed']}: " + ", ".join(f"{k} Dice {v:.3f}" for k, v in scores.items()),
              flush=True)
    example = np.stack([c[0] for c in val_crops[:2]])[:, None]
    error = export_onnx(final, args.out, example)
    training.check_export(args.out, error, 1e-4, MAX_ONNX_BYTES)
    print(f"parameters {n_params}, training {train_seconds / 60:.1f} min, "
          f"total {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
