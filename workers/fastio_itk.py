"""The ``fastio-itk`` pipeline: read_volume → filter_volume (crop) → write_volume."""

from __future__ import annotations

from ops.crop import crop_volume
from ops.render import volume_meta, write_render_files
from ops.volume import find_volume
from ops.volume import read_volume as read_image
from ops.volume import write_volume as write_image
from queues.app import app
from queues.crop import resolve_crop
from queues.payload import Payload
from queues.settings import get_settings
from workers.stage import StageTask

# The seed's publication names.
VOLUME = "fastio_itk"
CROPPED = "fastio_itk_filtered"


@app.task(name="carina.fastio_itk.read_volume", base=StageTask, bind=True)
def read_volume(self: StageTask, payload: Payload) -> Payload:
    volume, geometry = read_image(find_volume(payload["input"]))
    return self.publish(payload, volume, VOLUME, geometry)


@app.task(name="carina.fastio_itk.filter_volume", base=StageTask, bind=True)
def filter_volume(self: StageTask, payload: Payload) -> Payload:
    settings, params = get_settings(), payload["params"]
    source = self.published(payload, VOLUME)
    region = resolve_crop(source.array.shape[::-1], params.get("crop_start", settings.crop_start),
                          params.get("crop_size", settings.crop_size))
    cropped, geometry = crop_volume(source.array, source.metadata, region.start, region.size)
    return self.publish(payload, cropped, CROPPED, geometry)


@app.task(name="carina.fastio_itk.write_volume", base=StageTask, bind=True)
def write_volume(self: StageTask, payload: Payload) -> Payload:
    volume = self.published(payload, CROPPED)
    output = self.staging(payload)
    written = write_image(volume.array, volume.metadata, output / "output.mhd")
    write_render_files(output, volume_meta(written.name, volume.array, volume.metadata), payload["config"])
    return self.advance(payload, result=self.result(payload, written))
