"""``spleen-seg`` end to end: real workers, FastIO, and the project's model on a real Triton."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from ops.samples import ct_series, spleen_phantom
from ops.segmentation import segment
from ops.triton import TritonPredictor
from ops.volume import read_volume, write_volume
from carina.local import free_port, start_worker, stop_process_group

from queues.errors import InvalidJobRequest
from queues.pipelines import submit
from tests.helpers import assert_no_memory_held, blind_to_triton, dice, digest, run_job

SPACING = (1.4, 1.4, 2.5)
GEOMETRY = {"spacing": list(SPACING), "origin": [-120.0, -100.0, 40.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


run = partial(run_job, pipeline="spleen-seg")


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    # Smaller than 96 voxels along z once resampled to 2 mm: padded, as MONAI does. The seed is
    # one training never used (models/train_spleen.py stays below 900000).
    volume, label = spleen_phantom((72, 224, 224), SPACING, seed=900_003)
    folder = tmp_path_factory.mktemp("patient")
    return write_volume(volume, GEOMETRY, folder / "patient7.nii.gz"), volume, label


def test_segments_the_spleen_and_writes_the_seed_outputs(deployment, project_triton, patient, tmp_path):
    path, volume, truth = patient
    before = digest(path)
    status = run(deployment, path, tmp_path / "out")
    assert status.state == "done", status.error
    assert status.progress_total > 0 and status.progress_done == status.progress_total
    trace = deployment.app.AsyncResult(status.job_id).get(timeout=10)["trace"]
    assert [entry["stage"] for entry in trace] == status.stages  # one entry per stage, none twice

    labels, geometry = read_volume(tmp_path / "out" / "patient7.mhd")  # named after the input
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(geometry[key], GEOMETRY[key], atol=1e-5)
    assert set(np.unique(labels)) <= {0, 1}
    # The pipeline's labels are what the ops give in this process with the same model...
    direct = segment(volume, GEOMETRY, TritonPredictor(project_triton.url, "spleen_ct"))
    assert np.mean(labels == direct) >= 0.999
    # ...and they find the spleen (the model's own accuracy is tested in tests/unit).
    assert dice(labels > 0, truth > 0) >= 0.5
    # The windows went to Triton through a FastIO staging allocation, not HTTP bodies.
    assert any("tensors through shared memory /it" in log.read_text() for log in deployment.logs)

    publish = tmp_path / "out" / "publish"
    for name in ("image.mhd", "image.seg.mhd", "config.meta", "config_render.json", "preview.png"):
        assert (publish / name).is_file(), name
    assert (publish / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [v["file"] for v in json.loads((publish / "config.meta").read_text())["volumes"]] == \
        ["image.mhd", "image.seg.mhd"]
    np.testing.assert_array_equal(read_volume(publish / "image.mhd")[0], volume)
    assert digest(path) == before
    assert_no_memory_held(deployment)


def test_a_dicom_series_input_gets_its_labels_as_a_dicom_seg_too(deployment, tmp_path):
    import highdicom
    import pydicom

    volume, _ = spleen_phantom((24, 96, 96), (2.5, 2.5, 3.0), seed=99)
    files = ct_series(tmp_path / "series", volume, {**GEOMETRY, "spacing": [2.5, 2.5, 3.0]}, shuffle_seed=5)
    status = run(deployment, tmp_path / "series", tmp_path / "out")
    assert status.state == "done", status.error
    labels, geometry = read_volume(tmp_path / "out" / "series.mhd")
    assert labels.shape == volume.shape and labels.any()
    seg = highdicom.seg.segread(tmp_path / "out" / "series.seg.dcm")
    sources = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID for ds in sources],
                                             combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(mask, labels)  # voxel for voxel, slice by source slice
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert np.allclose([float(v) for v in sources[0].ImagePositionPatient], geometry["origin"], atol=0.01)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["label 1"]


@pytest.mark.parametrize("shape, reason", [((30, 40), "2D image"), ((2, 5, 6, 7), "4D image")], ids=["2d", "4d"])
def test_not_a_volume_fails_with_the_reason(deployment, tmp_path, shape, reason):
    import itk

    path = tmp_path / "odd.nii.gz"
    itk.imwrite(itk.image_from_array(np.zeros(shape, np.int16)), str(path))
    status = run(deployment, path, tmp_path / "out")
    assert status.state == "failed" and reason in status.error


def test_a_model_triton_does_not_serve_is_refused_at_submit(deployment, patient, tmp_path):
    with pytest.raises(InvalidJobRequest, match=r"model='no_such_model': the Triton at .* does not serve it \(HTTP 400"):
        submit(deployment.app, deployment.settings, "spleen-seg", patient[0], tmp_path / "out",
               params={"model": "no_such_model"})
    assert not (tmp_path / "out").exists()


def test_a_missing_model_fails_the_job_not_hangs_it(deployment, patient, tmp_path):
    status = run(deployment, patient[0], tmp_path / "out", params={"model": "no_such_model"},
                 front_door=blind_to_triton(deployment.settings))
    assert status.state == "failed" and "ModelNotFound" in status.error
    assert_no_memory_held(deployment)


def test_the_server_down_fails_the_job_with_the_reason(deployment, patient, tmp_path):
    env = {**deployment.env, "CARINA_HOST_ID": "host-c", "CARINA_TRITON_URL": f"127.0.0.1:{free_port()}",
           "CARINA_TRITON_TIMEOUT_S": "5"}
    worker = start_worker(env, tmp_path / "host-c.log", "io,cpu,gpu", concurrency=1, host_id="host-c")
    try:
        status = run(deployment, patient[0], tmp_path / "out", host="host-c", timeout_s=120)
    finally:
        stop_process_group(worker)
    assert status.state == "failed" and "InferenceServerUnavailable" in status.error, status.error
    assert not (tmp_path / "out" / "patient7.mhd").exists()
    assert_no_memory_held(deployment, hosts=("host-a", "host-b", "host-c"))
