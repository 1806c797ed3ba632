"""Sliding-window segmentation of a volume on a Triton model, the stage kinds of ``spleen-seg``
and ``abdomen-seg`` and of imported MONAI bundles: read the CT → the model over windows →
labels + publish folder. Each pipeline's definition gives the model's recipe (``settings``:
window, spacing, intensity window or normalisation, orientation, blending, output channels,
how labels return to the input's grid, label names); the spleen model's stands in where it
gives none."""

from __future__ import annotations

from functools import partial

from ops.arrays import gpu_available
from ops.dicom.capture import write_secondary_capture
from ops.dicom.seg import write_segmentation
from ops.errors import check_work
from ops.preview import segmentation_preview
from ops.render import write_segmentation_publish
from ops.segmentation import OUTPUT_CHANNELS, ROI_SIZE, request_nbytes, segment, window_count
from ops.volume import read_input
from ops.volume import write_volume as write_image
from queues.app import app
from queues.payload import Payload, recipe
from queues.settings import get_settings
from workers.inference import triton_predictor
from workers.runtime import fastio_context
from workers.stage import StageTask

# The definition's settings that ops.segmentation.segment takes as they are (and blend_mode, its ``mode``).
RECIPE = ("roi_size", "target_spacing_xyz", "intensity_window", "intensity_range", "intensity_clip",
          "normalize_intensity", "orientation", "label_resampling")
CT = "segmentation_volume"
LABELS = "segmentation_labels"


@app.task(name="carina.segmentation.read_volume", base=StageTask, bind=True)
def read_volume(self: StageTask, payload: Payload) -> Payload:
    volume, geometry, name, dicom_files = read_input(payload["input"])
    grid_recipe = recipe(payload, "roi_size", "target_spacing_xyz", "orientation")
    windows, grid = window_count(volume.shape, geometry, payload["params"]["overlap"], **grid_recipe)
    side = grid_recipe.get("roi_size", ROI_SIZE)
    roi = f"{side[0]}³" if len(set(side)) == 1 else "×".join(map(str, side))
    check_work(windows, get_settings().max_windows, f"windows of {roi} over the {'×'.join(map(str, grid))} voxels "
               f"of {name} resampled (overlap {payload['params']['overlap']:g})", "CARINA_MAX_WINDOWS")
    return self.publish(payload, volume, CT, geometry, study=name, **({"source_series": list(dicom_files)}
                                                                       if dicom_files else {}))


@app.task(name="carina.segmentation.infer", base=StageTask, bind=True)
def infer(self: StageTask, payload: Payload) -> Payload:
    params, ctx = payload["params"], fastio_context(payload["job"])
    ct = self.published(payload, CT)
    sw_batch_size = params.get("sw_batch_size", get_settings().sw_batch_size)
    nbytes = request_nbytes(sw_batch_size, **recipe(payload, "roi_size", "output_channels"))
    with triton_predictor(ctx, params["model"], nbytes) as predictor:
        labels = segment(ct.array, ct.metadata, predictor, sw_batch_size=sw_batch_size, overlap=params["overlap"],
                         progress=partial(self.report_progress, payload), use_gpu=gpu_available(),
                         **recipe(payload, *RECIPE, mode="blend_mode"))
    return self.publish(payload, labels, LABELS, ct.metadata)


@app.task(name="carina.segmentation.write_results", base=StageTask, bind=True)
def write_results(self: StageTask, payload: Payload) -> Payload:
    ct, labels = self.published(payload, CT), self.published(payload, LABELS)
    output = self.staging(payload)
    # The seed names the label volume after the input (its downstream consumer expects it).
    result = write_image(labels.array, labels.metadata, output / f"{payload['study']}.mhd")
    preview = segmentation_preview(ct.array, labels.array, ct.metadata["spacing"])
    write_segmentation_publish(output / "publish", ct.array, labels.array, ct.metadata, payload["config"], preview,
                               **recipe(payload, "label_names"))
    if payload.get("source_series"):  # a DICOM series in: the labels as a SEG over it, for the PACS
        write_segmentation(labels.array, payload["source_series"], output / f"{payload['study']}.seg.dcm",
                           segments=payload.get("settings", {}).get("output_channels", OUTPUT_CHANNELS) - 1,
                           algorithm=payload["pipeline"], **recipe(payload, "label_names"))
        # For the viewers that show no SEG; a destination gets it only if asked (queues/dispatch.py).
        write_secondary_capture(preview, payload["source_series"][0], output / f"{payload['study']}.preview.dcm")
    return self.advance(payload, result=self.result(payload, result))
