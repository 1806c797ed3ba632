"""What the two training scripts share: the conv blocks, the optimiser with its one-cycle
schedule and weight average, and the Dice score. Imported by ``models/train_*.py`` only (with
bytecode off: Triton takes every folder of the model repository, ``__pycache__`` too, for a
model)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, convs: int, conv: type[nn.Module], norm: type[nn.Module],
               activation: Callable[[], nn.Module]) -> nn.Sequential:
    """``convs`` × (3-wide convolution without bias, normalisation, a new ``activation()``)."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [conv(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                   norm(out_channels), activation()]
    return nn.Sequential(*layers)


def one_cycle_with_average(model: nn.Module, lr: float, total_steps: int, ema_decay: float):
    """AdamW under a one-cycle schedule peaking at ``lr``, and an exponential moving average of
    the weights (batch-norm statistics included), which is what gets validated and exported:
    single steps on a few crops move the weights noticeably. Returns ``(optimiser, schedule,
    average)``; call ``average.update_parameters(model)`` after each step."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total_steps, pct_start=0.1,
                                                   final_div_factor=30)
    average = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    return optimiser, schedule, average


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1.0 for two empty ones)."""
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def check_export(path: Path, error: float, max_error: float, max_bytes: int) -> int:
    """Refuse (SystemExit) an exported model that differs from torch by more than
    ``max_error`` or is not under ``max_bytes``; compile the ``model.py`` beside it. Returns
    the file's size in bytes, after printing it and the error."""
    size = path.stat().st_size
    print(f"wrote {path}: {size / 1e3:.0f} kB, onnxruntime vs torch max |diff| {error:.2e}")
    if error > max_error:
        raise SystemExit(f"onnxruntime differs from torch by {error:.2e} > {max_error:g}")
    if size >= max_bytes:
        raise SystemExit(f"{path} is {size} bytes, not under {max_bytes}")
    model_py = path.parent / "model.py"
    if model_py.exists():
        compile(model_py.read_text(), str(model_py), "exec")
    return size

