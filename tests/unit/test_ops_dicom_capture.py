"""ops.dicom.capture: a picture written as a Secondary Capture in its CT's study, read back:
the same pixels, the patient and study of the CT, a series of its own."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pydicom.uid import SecondaryCaptureImageStorage

from ops.dicom.capture import write_secondary_capture
from ops.errors import DicomWriteError, InvalidParameter
from ops.samples import ct_phantom, ct_series
from tests.helpers import GEOMETRY

pytest.importorskip("highdicom")


def test_the_capture_holds_the_picture_in_the_ct_s_study_as_a_series_of_its_own(tmp_path):
    [first, *_] = ct_series(tmp_path / "ct", ct_phantom((4, 32, 32)), GEOMETRY)
    picture = np.random.default_rng(5).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    path = write_secondary_capture(picture, first, tmp_path / "out" / "preview.dcm")
    capture, ct = pydicom.dcmread(path), pydicom.dcmread(first)
    assert capture.SOPClassUID == SecondaryCaptureImageStorage and capture.PhotometricInterpretation == "RGB"
    assert np.array_equal(capture.pixel_array, picture)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        assert capture.get(keyword) == ct.get(keyword), keyword
    assert capture.SeriesInstanceUID != ct.SeriesInstanceUID and capture.SOPInstanceUID != ct.SOPInstanceUID
    assert [p.name for p in path.parent.iterdir()] == ["preview.dcm"]  # nothing partial beside it


def test_a_picture_that_is_not_8_bit_rgb_is_refused(tmp_path):
    [first, *_] = ct_series(tmp_path / "ct", ct_phantom((4, 32, 32)), GEOMETRY)
    with pytest.raises(InvalidParameter, match=r"\(rows, columns, 3\) uint8"):
        write_secondary_capture(np.zeros((30, 50), np.uint8), first, tmp_path / "p.dcm")
    assert not (tmp_path / "p.dcm").exists()


def test_a_reference_that_is_not_dicom_is_named(tmp_path):
    (tmp_path / "ct.dcm").write_bytes(b"not dicom")
    with pytest.raises(DicomWriteError, match=r"ct.dcm: cannot be read"):
        write_secondary_capture(np.zeros((4, 4, 3), np.uint8), tmp_path / "ct.dcm", tmp_path / "p.dcm")
