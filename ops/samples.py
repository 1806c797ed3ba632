"""Synthetic sample data (nothing is downloaded): a CT-like abdominal phantom.

``python -m ops.samples --output phantom.mhd`` writes one for the demo.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

CT_GEOMETRY: dict[str, Any] = {
    "spacing": [0.8, 0.8, 2.5],
    "origin": [-64.0, -64.0, -100.0],
    "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
}


def ct_phantom(shape_zyx: tuple[int, int, int] = (64, 160, 160), seed: int = 0) -> np.ndarray:
    """An int16 (z, y, x) volume in Hounsfield units: air, a soft-tissue body, a bright
    spine and a spleen-like ellipsoid (≈ 50 HU) on the patient's left, with noise."""
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape_zyx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    volume = np.full(shape_zyx, -1000.0, dtype=np.float32)
    volume[(xx / 0.85) ** 2 + (yy / 0.65) ** 2 <= 1] = 20.0
    volume[((xx) / 0.12) ** 2 + ((yy - 0.45) / 0.12) ** 2 <= 1] = 700.0
    spleen = ((xx - 0.45) / 0.2) ** 2 + ((yy + 0.1) / 0.28) ** 2 + (zz / 0.5) ** 2 <= 1
    volume[spleen] = 50.0
    volume += np.random.default_rng(seed).normal(0, 8, shape_zyx).astype(np.float32)
    return np.clip(volume, -1024, 3071).astype(np.int16)


def main(argv: list[str] | None = None) -> None:
    from ops.volume import write_volume

    parser = argparse.ArgumentParser(prog="python -m ops.samples", description=__doc__)
    parser.add_argument("--output", required=True, type=Path, help="file to write (.mhd, .nii.gz)")
    parser.add_argument("--shape", nargs=3, type=int, default=(64, 160, 160), metavar=("Z", "Y", "X"))
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_volume(ct_phantom(tuple(args.shape)), CT_GEOMETRY, args.output)
    print(args.output)


if __name__ == "__main__":
    main()
