"""queues.dicom_part10 against pydicom: the header of a received data set, its pixel data's length
(a transfer cut short shows as fewer bytes), and the Part 10 file it is kept as."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from queues.dicom_part10 import DEFLATED, EXPLICIT_LITTLE, IMPLICIT_LITTLE, UnreadableDataSet, file_meta, read_header
from ops.samples import ct_phantom, ct_series


def encoded(dataset, implicit: bool) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, dataset)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [IMPLICIT_LITTLE, EXPLICIT_LITTLE])
def test_the_header_and_the_pixel_bytes_are_read_whole_and_cut_short(tmp_path, syntax):
    source = pydicom.dcmread(ct_series(tmp_path, ct_phantom((1, 32, 40)))[0])
    data = encoded(source, syntax == IMPLICIT_LITTLE)
    header = read_header(io.BytesIO(data), len(data), syntax)
    assert header.dataset.SOPInstanceUID == source.SOPInstanceUID and header.dataset.Rows == 32
    assert "PixelData" not in header.dataset and header.pixel_bytes == 32 * 40 * 2
    assert read_header(io.BytesIO(data[:-100]), len(data) - 100, syntax).pixel_bytes == 32 * 40 * 2 - 100


def test_the_header_is_read_from_a_file_after_its_meta_and_from_a_prefix_of_the_data_set(tmp_path):
    source = pydicom.dcmread(ct_series(tmp_path, ct_phantom((1, 32, 40)))[0])
    data = encoded(source, False)
    meta = file_meta(source.SOPClassUID, source.SOPInstanceUID, EXPLICIT_LITTLE, "CT1", "1.2.3", "TEST")
    kept = tmp_path / "kept.dcm"
    kept.write_bytes(meta + data)
    with open(kept, "rb") as stream:
        stream.seek(len(meta))
        assert read_header(stream, len(data), EXPLICIT_LITTLE).pixel_bytes == 32 * 40 * 2
    pixels_at = len(data) - 32 * 40 * 2
    prefix = read_header(io.BytesIO(data[:pixels_at]), len(data), EXPLICIT_LITTLE)
    assert prefix.dataset.SOPInstanceUID == source.SOPInstanceUID and prefix.pixel_bytes == 32 * 40 * 2
    with pytest.raises(UnreadableDataSet):  # cut inside the pixel data element's own header
        read_header(io.BytesIO(data[:pixels_at - 4]), pixels_at - 4, EXPLICIT_LITTLE)


def test_the_kept_file_is_what_pydicom_reads_with_its_meta(tmp_path):
    source = pydicom.dcmread(ct_series(tmp_path, ct_phantom((1, 16, 16)))[0])
    meta = file_meta(source.SOPClassUID, source.SOPInstanceUID, EXPLICIT_LITTLE, "CT1", "1.2.3", "TEST")
    kept = pydicom.dcmread(io.BytesIO(meta + encoded(source, False)))
    assert kept.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
    assert kept.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert kept.file_meta.SourceApplicationEntityTitle == "CT1"
    assert (kept.pixel_array == source.pixel_array).all()


def test_a_deflated_data_set_that_does_not_inflate_is_refused():
    with pytest.raises(UnreadableDataSet, match="cannot be read"):
        read_header(io.BytesIO(b"\xff" * 64), 64, DEFLATED)


@pytest.mark.parametrize("written_implicit, negotiated", [(True, EXPLICIT_LITTLE), (False, IMPLICIT_LITTLE)])
def test_a_data_set_in_the_other_vr_encoding_than_negotiated_is_refused(tmp_path, written_implicit, negotiated):
    data = encoded(pydicom.dcmread(ct_series(tmp_path, ct_phantom((1, 8, 8)))[0]), written_implicit)
    with pytest.raises(UnreadableDataSet, match="VR where the transfer syntax says"):
        read_header(io.BytesIO(data), len(data), negotiated)


def test_an_image_description_that_cannot_be_read_is_a_problem_not_a_fault(tmp_path):
    from queues.dicom_listener import pixel_data_problem

    data = encoded(pydicom.dcmread(ct_series(tmp_path, ct_phantom((1, 8, 8)))[0]), False)
    rows = b"\x28\x00\x10\x00US"
    assert data.count(rows) == 1
    damaged = data.replace(rows, b"\x28\x00\x10\x00LS")  # a VR pydicom has no reader for: it raises on reading Rows
    header = read_header(io.BytesIO(damaged), len(damaged), EXPLICIT_LITTLE)
    assert pixel_data_problem(header.dataset, header.pixel_bytes).startswith("its image description cannot be read")
