"""The ``nuclei-seg`` pipeline: a whole slide → tissue tiles → UNet on Triton (Dask, in parallel)
→ nuclei overlaid, written as a pyramidal TIFF with the Render Server's files."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ops.errors import check_work
from ops.nuclei import model_side, request_nbytes, tissue_tiles
from ops.render import write_slide_publish
from ops.wsi import find_slide, open_slide
from queues.app import app
from queues.payload import Payload, recipe
from queues.settings import get_settings
from workers.inference import triton_predictor
from workers.runtime import fastio_context
from workers.stage import StageTask
from workers.tiling import write_segmented_pyramid

OUTPUT_IMAGE = "image.tif"  # the seed's name
TISSUE_TILES = "nuclei_tissue_tiles"
CHECKPOINTS = ".pyramid-checkpoints"  # in the staging folder, gone once the pyramid is whole


@app.task(name="carina.nuclei.find_tissue", base=StageTask, bind=True)
def find_tissue(self: StageTask, payload: Payload) -> Payload:
    params, path = payload["params"], find_slide(payload["input"])
    with open_slide(path) as slide:
        tissue = tissue_tiles(slide, params["tile_size"], params["mask_pixel_count_limit"])
        shape_yx = slide.levels[0].shape_yx
    described = {"shape_yx": list(shape_yx), "tiles": int(tissue.size), "tissue_tiles": int(tissue.sum())}
    check_work(described["tissue_tiles"], get_settings().max_tiles, f"tissue tiles of {params['tile_size']} px "
               f"in {path.name}", "CARINA_MAX_TILES")
    return self.publish(payload, tissue, TISSUE_TILES, described, slide=str(path))


@app.task(name="carina.nuclei.segment", base=StageTask, bind=True)
def segment(self: StageTask, payload: Payload) -> Payload:
    params, ctx = payload["params"], fastio_context(payload["job"])
    tissue = self.published(payload, TISSUE_TILES)
    tile, overlap = params["tile_size"], params["overlap"]
    threads = params.get("num_workers") or os.cpu_count() or 1
    batch_size = get_settings().tile_batch_size
    output = self.staging(payload)
    with (open_slide(payload["slide"]) as slide,
          triton_predictor(ctx, params["model"], request_nbytes(batch_size, model_side(tile, overlap)),
                           threads) as predictor):
        # In the staging folder: a retry of this stage (its worker lost) resumes the slide there.
        written = write_segmented_pyramid(output / OUTPUT_IMAGE, slide, tissue.array, tile, overlap, predictor,
                                          threads=threads, batch_size=batch_size, checkpoints=output / CHECKPOINTS,
                                          progress=partial(self.report_progress, payload),
                                          **recipe(payload, "threshold", "input_layout", quality="jpeg_quality"))
    return self.advance(payload, result=self.result(payload, written.path))


@app.task(name="carina.nuclei.write_results", base=StageTask, bind=True)
def write_results(self: StageTask, payload: Payload) -> Payload:
    described = self.published(payload, TISSUE_TILES).metadata
    # The seed's input folder holds config_render.json beside the slide.
    config = payload["config"] or (payload["input"] if Path(payload["input"]).is_dir() else None)
    write_slide_publish(self.staging(payload), OUTPUT_IMAGE, config, source=payload["slide"],
                        tiles=described["tiles"], tissue_tiles=described["tissue_tiles"], model=payload["params"]["model"])
    return self.advance(payload, tiles=described["tiles"], tissue_tiles=described["tissue_tiles"])
