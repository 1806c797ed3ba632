"""A real PACS round trip: a CT series is uploaded to Orthanc (Debian's, on loopback), Orthanc
is asked to C-STORE it to Carina's DICOM listener, spleen-seg runs on Triton, and the SEG it
makes comes back to Orthanc by C-STORE; the test reads the SEG from Orthanc's REST API,
decodes it with highdicom and holds it to the job's label volume, voxel for voxel, its frames
on the source slices' positions within 0.01 mm; the preview comes back with it as a Secondary
Capture, since its destination asks for one."""

from __future__ import annotations

import io
import time

import numpy as np
import PIL.Image
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from carina.orthanc import LocalOrthanc
from ops.samples import ct_phantom, ct_series, spleen_phantom
from ops.volume import read_volume
from queues.dicom_listener import DONE
from queues.jobs import JobStore
from tests.dicom_peers import RunningListener
from tests.helpers import GEOMETRY, wait_until

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def pacs_round_trip(deployment, tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs")
    rules = [{"kind": "dicom", "dicom": {"SeriesDescription": "*web*"}, "pipeline": "3dblur", "send_to": "web"},
             {"kind": "dicom", "dicom": {"Modality": "CT"}, "pipeline": "spleen-seg", "send_to": "orthanc"}]
    orthanc = LocalOrthanc(dicomweb=True)
    listener = RunningListener(deployment.env, root, rules, "ORTHANC",
                               CARINA_DICOM_DESTINATIONS=f"orthanc=ORTHANC@127.0.0.1:{orthanc.dicom_port},"
                                                         f"web={orthanc.dicomweb_url}",
                               CARINA_DICOM_SEND_PREVIEW="orthanc")
    orthanc.modalities = {"carina": ("CARINA", "127.0.0.1", listener.port)}
    with orthanc:
        listener.start()
        try:
            yield orthanc, listener
        finally:
            listener.kill()


def test_a_series_from_orthanc_comes_back_to_it_as_a_seg_on_the_ct(deployment, pacs_round_trip, tmp_path):
    orthanc, listener = pacs_round_trip
    volume, _ = spleen_phantom((24, 96, 96), (2.5, 2.5, 3.0), seed=77)
    files = ct_series(tmp_path / "ct", volume, {**GEOMETRY, "spacing": [2.5, 2.5, 3.0]}, shuffle_seed=2)
    instance = orthanc.upload(files)[0]
    series = orthanc.get(f"/instances/{instance}")["ParentSeries"]
    started = time.monotonic()
    orthanc.request("POST", "/modalities/carina/store", series.encode())  # Orthanc's C-STORE to Carina

    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    record = listener.finished(deployment.client(), uid, timeout_s=300)
    assert record.state == DONE, (record, listener.log.read_text()[-3000:])
    assert (record.calling_ae, record.instances) == ("ORTHANC", len(files))

    def segs():
        return orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": "SEG"}})
    wait_until(lambda: segs(), 120, "the SEG in Orthanc")
    print(f"\nOrthanc → Carina → Orthanc: the SEG was back {time.monotonic() - started:.1f} s after the C-STORE "
          f"was asked for (stability wait {listener.argv[listener.argv.index('--stable-s') + 1]} s)")
    [seg_series] = segs()
    [seg_instance] = orthanc.get(f"/series/{seg_series}")["Instances"]
    (tmp_path / "seg.dcm").write_bytes(orthanc.get(f"/instances/{seg_instance}/file"))

    import highdicom

    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    assert seg.SOPClassUID == SEGMENTATION_STORAGE
    sources = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID for ds in sources],
                                             combine_segments=True, skip_overlap_checks=True)
    [output] = [p for p in listener.output.iterdir() if p.name.startswith(uid)]
    labels, _ = read_volume(next(output.glob("*.mhd")))
    assert labels.any()
    np.testing.assert_array_equal(mask, labels)
    position = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           position[source], atol=0.01)
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID  # filed in Orthanc under the same study

    # The destination asked for the preview too, as a Secondary Capture in the same study.
    wait_until(lambda: captures(orthanc, uid), 60, "the preview in Orthanc")
    [capture] = captures(orthanc, uid)
    [preview] = output.glob("publish/preview.png")
    assert capture.StudyInstanceUID == sources[0].StudyInstanceUID
    np.testing.assert_array_equal(capture.pixel_array, np.asarray(PIL.Image.open(preview).convert("RGB")))


def captures(orthanc, source_series: str) -> list[pydicom.Dataset]:
    """The Secondary Captures Orthanc holds in the study of ``source_series`` (1.10 does not
    index SOPClassUID: each series' first instance is read)."""
    [source] = orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"SeriesInstanceUID": source_series}})
    study = orthanc.get(f"/series/{source}")["ParentStudy"]
    found = []
    for series in orthanc.get(f"/studies/{study}")["Series"]:
        first = orthanc.get(f"/series/{series}")["Instances"][0]
        dataset = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{first}/file")))
        if dataset.SOPClassUID == SecondaryCaptureImageStorage:
            found.append(dataset)
    return found


def test_results_go_back_by_stow_rs_to_a_dicomweb_destination(deployment, pacs_round_trip, tmp_path):
    orthanc, listener = pacs_round_trip
    files = ct_series(tmp_path / "ct", ct_phantom((6, 64, 64)), series_description="for the web")
    instance = orthanc.upload(files)[0]
    orthanc.request("POST", "/modalities/carina/store", orthanc.get(f"/instances/{instance}")["ParentSeries"].encode())
    record = listener.finished(deployment.client(), pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert record.state == DONE and record.send_to == "web" and record.pipeline == "3dblur"
    jobs = JobStore(deployment.client(), deployment.settings.namespace, 3600)
    wait_until(lambda: jobs.get(record.job).dispatch.get("state") in ("sent", "dead-letter"), 60, "the STOW-RS")
    assert jobs.get(record.job).dispatch["state"] == "sent", jobs.get(record.job).dispatch
    [output] = [p for p in listener.output.iterdir() if p.name.startswith(record.series)]
    blurred = pydicom.dcmread(next(output.glob("*.dcm"))).SeriesInstanceUID
    [found] = orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"SeriesInstanceUID": blurred}})
    assert len(orthanc.get(f"/series/{found}")["Instances"]) == len(files)
