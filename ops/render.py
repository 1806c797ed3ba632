"""Files for Clara's Render Server beside an output volume: ``config.meta`` and ``config_render.json``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ops.errors import VolumeWriteError

RENDER_CONFIG = "config_render.json"
META_FILE = "config.meta"


def volume_meta(volume_file: str, array: np.ndarray, geometry: dict[str, Any]) -> dict[str, Any]:
    """The description of one published volume: file, size (x, y, z), type, geometry, range."""
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return {
        "file": volume_file,
        "dimensions": [int(d) for d in reversed(array.shape)],
        "element_type": array.dtype.name,
        **geometry,
        "intensity_range": [low, high],
    }


def default_render_config(meta: dict[str, Any]) -> dict[str, Any]:
    """A neutral volume rendering: a ramp transfer function over the data's range."""
    low, high = meta["intensity_range"]
    return {
        "dataset": meta["file"],
        "view": {"mode": "volume", "camera": "anterior"},
        "transfer_functions": [
            {"range": [low, high], "opacity": [0.0, 0.6], "color": [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]}
        ],
    }


def write_render_files(output_dir: Path, meta: dict[str, Any] | list[dict[str, Any]],
                       config_dir: Path | None) -> list[Path]:
    """Write ``config.meta`` (the volumes described) and ``config_render.json`` into ``output_dir``.

    ``config_render.json`` is copied from ``config_dir`` when it holds one (the seed's
    ``/config`` mount), else a default one for the first volume is written (with the others
    as label overlays). Returns the paths written.
    """
    output_dir = Path(output_dir)
    volumes = meta if isinstance(meta, list) else [meta]
    meta_path = output_dir / META_FILE
    render_path = output_dir / RENDER_CONFIG
    try:
        meta_path.write_text(json.dumps({"volumes": volumes}, indent=2) + "\n")
        supplied = Path(config_dir) / RENDER_CONFIG if config_dir else None
        if supplied is not None and supplied.is_file():
            shutil.copyfile(supplied, render_path)
        else:
            config = default_render_config(volumes[0])
            if len(volumes) > 1:
                config["labels"] = [{"dataset": v["file"], "color": [1.0, 0.16, 0.16], "opacity": 0.5}
                                    for v in volumes[1:]]
            render_path.write_text(json.dumps(config, indent=2) + "\n")
    except OSError as e:
        raise VolumeWriteError(f"cannot write render files into {output_dir}: {e}") from e
    return [meta_path, render_path]


def write_segmentation_publish(folder: Path, image: np.ndarray, labels: np.ndarray, geometry: dict[str, Any],
                               config_dir: Path | None) -> list[Path]:
    """The seed's publish folder for the Render Server: ``image.mhd``, ``image.seg.mhd``,
    ``config.meta``, ``config_render.json`` and a ``preview.png`` (mid-slices, mask overlaid).

    Both volumes are (z, y, x) on the same grid, ``geometry``. Returns the paths written.
    """
    from ops.preview import segmentation_preview, write_png
    from ops.volume import write_volume

    folder = Path(folder)
    written = [write_volume(image, geometry, folder / "image.mhd"),
               write_volume(labels, geometry, folder / "image.seg.mhd")]
    metas = [volume_meta("image.mhd", image, geometry), volume_meta("image.seg.mhd", labels, geometry)]
    written += write_render_files(folder, metas, config_dir)
    written.append(write_png(segmentation_preview(image, labels, geometry["spacing"]), folder / "preview.png"))
    return written
