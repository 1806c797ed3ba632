"""Files for Clara's Render Server beside an output volume: ``config.meta`` and ``config_render.json``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
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


def slide_meta(slide_file: str, level_shapes_yx: Sequence[Sequence[int]], tile_size: int,
               mpp_yx: Sequence[float] | None, **extra: Any) -> dict[str, Any]:
    """The description of one published whole-slide image: file, size and levels as (width,
    height), RGB uint8 tiles, microns per pixel (x, y) of level 0 or None, and ``extra``."""
    return {
        "file": slide_file,
        "dimensions": [int(level_shapes_yx[0][1]), int(level_shapes_yx[0][0])],
        "element_type": "uint8",
        "channels": ["R", "G", "B"],
        "levels": [[int(w), int(h)] for h, w in level_shapes_yx],
        "tile_size": int(tile_size),
        "mpp": None if mpp_yx is None else [float(mpp_yx[1]), float(mpp_yx[0])],
        **extra,
    }


def default_render_config(meta: dict[str, Any]) -> dict[str, Any]:
    """A neutral view: a whole slide as a 2D pyramid (from :func:`slide_meta`), a volume as a
    volume rendering with a ramp transfer function over the data's range."""
    if "levels" in meta:
        return {"dataset": meta["file"], "view": {"mode": "slide", "level": len(meta["levels"]) - 1}}
    low, high = meta["intensity_range"]
    return {
        "dataset": meta["file"],
        "view": {"mode": "volume", "camera": "anterior"},
        "transfer_functions": [
            {"range": [low, high], "opacity": [0.0, 0.6], "color": [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]}
        ],
    }


def write_render_files(output_dir: Path, meta: dict[str, Any] | list[dict[str, Any]],
                       config_dir: Path | None, kind: str = "volumes") -> list[Path]:
    """Write ``config.meta`` (the ``kind`` described: volumes or slides) and ``config_render.json``
    into ``output_dir``.

    ``config_render.json`` is copied from ``config_dir`` when it holds one (the seed's
    ``/config`` mount), else a default one for the first volume is written (with the others
    as label overlays). Returns the paths written.
    """
    output_dir = Path(output_dir)
    volumes = meta if isinstance(meta, list) else [meta]
    meta_path = output_dir / META_FILE
    render_path = output_dir / RENDER_CONFIG
    try:
        meta_path.write_text(json.dumps({kind: volumes}, indent=2) + "\n")
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
                               config_dir: Path | None, preview: np.ndarray,
                               label_names: dict[str, str] | None = None) -> list[Path]:
    """The seed's publish folder for the Render Server: ``image.mhd``, ``image.seg.mhd``,
    ``config.meta``, ``config_render.json`` and ``preview.png``.

    Both volumes are (z, y, x) on the same grid, ``geometry``. ``preview`` is the (h, w, 3)
    uint8 picture of them (:func:`ops.preview.segmentation_preview`; the caller makes it once,
    as the DICOM path sends it too). ``label_names`` (label value as a string → name), where
    given, describe ``image.seg.mhd`` in ``config.meta`` as its ``labels``. Returns the paths
    written.
    """
    from ops.preview import write_png
    from ops.volume import write_volume

    folder = Path(folder)
    written = [write_volume(image, geometry, folder / "image.mhd"),
               write_volume(labels, geometry, folder / "image.seg.mhd")]
    metas = [volume_meta("image.mhd", image, geometry), volume_meta("image.seg.mhd", labels, geometry)]
    if label_names:
        metas[1]["labels"] = dict(label_names)
    written += write_render_files(folder, metas, config_dir)
    written.append(write_png(preview, folder / "preview.png"))
    return written


THUMBNAIL_PIXELS = 1024 * 1024  # at most, for a slide's PNG thumbnail


def write_slide_publish(output_dir: Path, slide_file: str, config_dir: Path | None,
                        **extra: Any) -> list[Path]:
    """The Render Server's files beside a written whole-slide image ``output_dir/slide_file``:
    ``config.meta`` (:func:`slide_meta`, with ``extra``), ``config_render.json`` and
    ``thumbnail.png`` (the slide at no more than :data:`THUMBNAIL_PIXELS`, read level by level
    in bounded memory). Returns the paths written.

    Raises:
        SlideOpenError, SlideReadError: the slide cannot be read back; VolumeWriteError.
    """
    from ops.preview import write_png
    from ops.tissue import low_resolution_rgb
    from ops.wsi import open_slide

    output_dir = Path(output_dir)
    with open_slide(output_dir / slide_file) as slide:
        thumbnail, _ = low_resolution_rgb(slide, THUMBNAIL_PIXELS)
        levels = [level.shape_yx for level in slide.levels]
        tile = slide.levels[0].tile_shape_yx
        meta = slide_meta(slide_file, levels, tile[0] if tile else 0, slide.mpp_yx, **extra)
    written = write_render_files(output_dir, meta, config_dir, kind="slides")
    written.append(write_png(thumbnail, output_dir / "thumbnail.png"))
    return written
