"""Per-label statistics of a segmentation over its CT: numpy in, a JSON-able dict out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def label_statistics(ct: np.ndarray, labels: np.ndarray, spacing_xyz: Sequence[float],
                     names: Mapping[int, str]) -> dict[str, dict[str, float]]:
    """For each label value present in ``labels`` (same (z, y, x) shape as ``ct``, in HU), by
    its name in ``names`` (else ``label <value>``): voxels, volume in mL, and the HU mean,
    standard deviation, minimum and maximum under it.

    Raises:
        ValueError: the two arrays differ in shape.
    """
    if ct.shape != labels.shape:
        raise ValueError(f"the CT is {ct.shape} and the labels {labels.shape}: they must match")
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    found = {}
    for value in np.unique(labels):
        under = ct[labels == value].astype(np.float64)
        found[names.get(int(value), f"label {int(value)}")] = {
            "value": int(value), "voxels": int(under.size), "volume_ml": round(under.size * voxel_ml, 3),
            "hu_mean": float(under.mean()), "hu_std": float(under.std()),
            "hu_min": float(under.min()), "hu_max": float(under.max())}
    return found
