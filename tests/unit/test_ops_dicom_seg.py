"""ops.dicom.seg: labels written as a DICOM SEG over their CT series, read back with highdicom:
the same mask on every source slice, the source's frame of reference and slice positions, one
coded segment per label."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest

from ops.dicom import read_series
from ops.dicom.seg import write_segmentation
from ops.errors import InvalidParameter
from ops.samples import ct_phantom, ct_series
from tests.helpers import GEOMETRY

hd = pytest.importorskip("highdicom")


@pytest.fixture
def series(tmp_path):
    ct_series(tmp_path / "ct", ct_phantom((8, 40, 48)), GEOMETRY, shuffle_seed=3)  # files not in z order
    read = read_series(tmp_path / "ct")
    return read, [tmp_path / "ct" / name for name in read.metadata["files"]]


def test_the_seg_holds_the_labels_on_the_source_slices_with_their_geometry(series, tmp_path):
    read, files = series
    labels = np.zeros(read.volume.shape, np.uint8)
    labels[2:5, 10:20, 5:30] = 1
    labels[5:7, 22:30, 30:40] = 3  # label 2 absent: still described, no frame
    out = write_segmentation(labels, files, tmp_path / "out" / "ct.seg.dcm",
                             {"0": "background", "1": "spleen", "2": "liver", "3": "left kidney"}, segments=3)
    seg = hd.seg.segread(out)
    sources = [pydicom.dcmread(f) for f in files]
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                             combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(mask, labels)
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    positions = {tuple(np.round(s.ImagePositionPatient, 3)): s.SOPInstanceUID for s in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(position, [float(v) for v in pydicom.dcmread(
            files[[s.SOPInstanceUID for s in sources].index(source)]).ImagePositionPatient], atol=0.01)
    assert len(positions) == len(sources)
    described = [(s.SegmentNumber, s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning)
                 for s in seg.SegmentSequence]
    assert described == [(1, "spleen", "Spleen"), (2, "liver", "Liver"), (3, "left kidney", "Tissue")]
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())


def test_labels_not_on_the_series_grid_are_refused(series, tmp_path):
    read, files = series
    with pytest.raises(InvalidParameter, match=r"one slice per source file \(8\)"):
        write_segmentation(np.zeros((7, 40, 48), np.uint8), files, tmp_path / "seg.dcm")
    with pytest.raises(InvalidParameter, match="labels reach 4; 2 segments"):
        write_segmentation(np.full((8, 40, 48), 4, np.uint8), files, tmp_path / "seg.dcm", segments=2)
