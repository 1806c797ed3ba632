"""The outbox picks what each destination gets: a segmentation's Secondary Capture preview only
for the destinations CARINA_DICOM_SEND_PREVIEW names (on a real Redis)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from ops.dicom.capture import write_secondary_capture
from ops.samples import ct_phantom, ct_series
from queues.dispatch import Outbox
from queues.errors import ConfigError
from queues.settings import Settings
from tests.helpers import GEOMETRY


def settings(**variables: str) -> Settings:
    return Settings.from_env({"CARINA_DICOM_DESTINATIONS": "plain=PACS@127.0.0.1:104,viewer=VIEW@127.0.0.1:105",
                              **variables})


def test_only_the_destinations_that_ask_get_the_preview(redis_client, tmp_path):
    output = tmp_path / "job-output"
    [first, *_] = ct_series(output / "series", ct_phantom((3, 16, 16)), GEOMETRY)
    write_secondary_capture(np.zeros((8, 8, 3), np.uint8), first, output / "ct.preview.dcm")
    outbox = Outbox(tmp_path / "outbox", settings(CARINA_DICOM_SEND_PREVIEW="viewer"), redis_client, "CARINA")
    plain, viewer = outbox.enqueue("job-1", output, "plain"), outbox.enqueue("job-2", output, "viewer")
    classes = {d.destination: sorted(pydicom.dcmread(tmp_path / "outbox" / d.job / f).SOPClassUID.name
                                     for f in d.files) for d in (plain, viewer)}
    assert classes["plain"] == ["CT Image Storage"] * 3
    assert classes["viewer"] == ["CT Image Storage"] * 3 + ["Secondary Capture Image Storage"]


def test_a_preview_destination_that_is_not_a_destination_is_named(redis_client, tmp_path):
    with pytest.raises(ConfigError, match="CARINA_DICOM_SEND_PREVIEW: nowhere not in CARINA_DICOM_DESTINATIONS"):
        Outbox(tmp_path / "outbox", settings(CARINA_DICOM_SEND_PREVIEW="nowhere"), redis_client, "CARINA")
