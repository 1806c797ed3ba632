"""PNG previews of a segmentation: mid-slices of the volume with the mask laid over them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ops.errors import InvalidParameter, VolumeWriteError
from ops.overlay import blend

OVERLAY_RGB = (255, 40, 40)
OVERLAY_ALPHA = 0.45


def window_to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255, clipping outside; returns a new uint8 array."""
    scaled = (np.asarray(image, dtype=np.float32) - low) * (255.0 / max(high - low, 1e-6))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def overlay(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An (h, w, 3) uint8 picture of a 2D uint8 image with ``mask > 0`` tinted red."""
    return blend(np.repeat(gray[..., None], 3, axis=2), mask > 0, OVERLAY_RGB, OVERLAY_ALPHA)


def segmentation_preview(volume: np.ndarray, labels: np.ndarray, spacing_xyz: Sequence[float],
                         window: tuple[float, float] = (-160.0, 240.0)) -> np.ndarray:
    """Axial and coronal mid-slices side by side, through the mask's centre when there is one.

    Args:
        volume: (z, y, x) intensities (HU for CT); ``window`` maps them to grey.
        labels: (z, y, x), same shape; non-zero voxels are drawn red.
        spacing_xyz: voxel size (x, y, z) in mm; the coronal view is stretched along z to it.

    Returns:
        A new (h, w, 3) uint8 RGB image. Raises InvalidParameter on mismatched shapes.
    """
    if volume.ndim != 3 or volume.shape != labels.shape:
        raise InvalidParameter(f"volume {volume.shape} and labels {labels.shape} must be the same 3D shape")
    hits = np.argwhere(labels > 0)
    z, y, _ = (hits.mean(axis=0).round().astype(int) if len(hits) else np.array(volume.shape) // 2)
    axial = overlay(window_to_uint8(volume[z], *window), labels[z])
    # Coronal: rows are z (head at the top: the highest z first), columns x.
    coronal = overlay(window_to_uint8(volume[::-1, y, :], *window), labels[::-1, y, :])
    stretch = max(1, int(round(spacing_xyz[2] / spacing_xyz[0])))
    coronal = np.repeat(coronal, stretch, axis=0)
    height = max(axial.shape[0], coronal.shape[0])
    canvas = np.zeros((height, axial.shape[1] + coronal.shape[1], 3), np.uint8)
    canvas[: axial.shape[0], : axial.shape[1]] = axial
    canvas[: coronal.shape[0], axial.shape[1]:] = coronal
    return canvas


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an (h, w, 3) uint8 array as an 8-bit RGB PNG (zlib only, no imaging library)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidParameter(f"an (h, w, 3) uint8 image is needed; got {rgb.dtype}{rgb.shape}")
    height, width, _ = rgb.shape
    raw = np.hstack([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)]).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    try:
        path.write_bytes(png)
    except OSError as e:
        raise VolumeWriteError(f"cannot write {path}: {e}") from e
    return path
