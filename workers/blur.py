"""The ``3dblur`` pipeline: read a DICOM series → spacing-aware 3D Gaussian → DICOM series."""

from __future__ import annotations

from ops.blur import gaussian_blur
from ops.dicom import read_series as read_dicom_series
from ops.dicom import write_series as write_dicom_series
from queues.app import app
from queues.payload import Payload
from workers.stage import StageTask

VOLUME = "dicom_volume"
BLURRED = "blurred"



@app.task(name="carina.3dblur.read_series", base=StageTask, bind=True)
def read_series(self: StageTask, payload: Payload) -> Payload:
    series = read_dicom_series(payload["input"], payload["params"].get("series_uid"))
    return self.publish(payload, series.volume, VOLUME, {**series.geometry, "dicom": series.metadata})


@app.task(name="carina.3dblur.blur", base=StageTask, bind=True)
def blur(self: StageTask, payload: Payload) -> Payload:
    source = self.published(payload, VOLUME)
    blurred = gaussian_blur(source.array, payload["params"]["sigma_mm"], source.metadata["spacing"])
    return self.publish(payload, blurred, BLURRED, source.metadata)


@app.task(name="carina.3dblur.write_series", base=StageTask, bind=True)
def write_series(self: StageTask, payload: Payload) -> Payload:
    volume = self.published(payload, BLURRED)
    description = f"Gaussian blur {payload['params']['sigma_mm']:g} mm (Carina)"
    files = write_dicom_series(volume.array, volume.metadata, payload["input"], self.staging(payload),
                               description, volume.metadata["dicom"])
    return self.advance(payload, result=payload["output"], files=len(files))
