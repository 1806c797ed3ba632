"""``3dblur`` end to end on real workers: DICOM series → FastIO → Gaussian → DICOM series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import scipy.ndimage

from ops.dicom import read_series
from ops.samples import ct_phantom, ct_series
from queues.errors import InvalidJobRequest
from queues.pipelines import submit, wait

from tests.helpers import assert_no_memory_held, digest

OBLIQUE = {"spacing": [0.8, 0.7, 2.0], "origin": [-20.0, 10.0, 50.0],
           "direction": [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]}
CT5N = Path(pydicom.data.__file__).parent / "test_files/dicomdirtests/98892001/CT5N"


def run_blur(deployment, input: Path, output: Path, **params):
    job_id = submit(deployment.app, deployment.settings, "3dblur", input, output, params=params)
    status = wait(deployment.jobs(), job_id, 90)
    assert status.finished, f"job {job_id} still {status.state}\n{deployment.log_tail()}"
    return status


@pytest.fixture
def series(tmp_path):
    volume = ct_phantom((10, 24, 20), seed=3)
    files = ct_series(tmp_path / "study", volume, OBLIQUE, shuffle_seed=7)
    return tmp_path / "study", volume, files


def test_blur_matches_scipy_with_spacing_aware_sigma_and_keeps_the_study(deployment, series, tmp_path):
    folder, volume, _ = series
    before = digest(folder)
    status = run_blur(deployment, folder, tmp_path / "out", sigma_mm=1.6)
    assert status.state == "done", status.error

    result = read_series(tmp_path / "out")
    sigma_zyx = [1.6 / OBLIQUE["spacing"][2], 1.6 / OBLIQUE["spacing"][1], 1.6 / OBLIQUE["spacing"][0]]
    expected = scipy.ndimage.gaussian_filter(volume.astype(np.float32), sigma_zyx, mode="reflect")
    step = (expected.max() - expected.min()) / 65534
    np.testing.assert_allclose(result.volume, expected, atol=step * 0.6 + 1e-3)
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(result.geometry[key], OBLIQUE[key], atol=1e-4)
    source = read_series(folder).metadata
    assert result.metadata["study_instance_uid"] == source["study_instance_uid"]
    assert result.metadata["patient_id"] == source["patient_id"]
    assert result.metadata["series_instance_uid"] != source["series_instance_uid"]
    assert "Gaussian blur 1.6 mm" in result.metadata["series_description"]
    assert digest(folder) == before
    assert_no_memory_held(deployment)


def test_pydicom_bundled_ct_series(deployment, tmp_path):
    shutil.copytree(CT5N, tmp_path / "ct5n")
    status = run_blur(deployment, tmp_path / "ct5n", tmp_path / "out")
    assert status.state == "done", status.error
    assert read_series(tmp_path / "out").volume.shape == read_series(CT5N).volume.shape


def test_a_stray_file_is_skipped_and_the_requested_series_is_read(deployment, series, tmp_path):
    folder, volume, _ = series
    (folder / "README.txt").write_text("scanner notes")
    other = ct_series(folder / "scout", ct_phantom((12, 16, 16)), OBLIQUE)  # a larger, other series
    wanted = pydicom.dcmread(series[2][0]).SeriesInstanceUID
    status = run_blur(deployment, folder, tmp_path / "out", series_uid=wanted)
    assert status.state == "done", status.error
    assert read_series(tmp_path / "out").volume.shape == volume.shape
    assert len(other) == 12


def _no_pixels(files):
    ds = pydicom.dcmread(files[3])
    del ds.PixelData
    ds.save_as(files[3])


def _truncated(files):
    files[4].write_bytes(files[4].read_bytes()[:700])


def _duplicate(files):
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(files[0].parent / "copy.dcm")


def _gap(files):
    by_position = sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[0]))
    by_position[5].unlink()


@pytest.mark.parametrize("spoil, reason", [
    (lambda files: [f.unlink() for f in files], "no DICOM"),
    (_no_pixels, "no pixel data"),
    (_truncated, "no pixel data: the image's file ends before them (truncated"),
    (_duplicate, "same slice position"),
    (_gap, "uneven"),
], ids=["no-dicom", "no-pixel-data", "truncated", "duplicate-positions", "non-uniform-spacing"])
def test_bad_series_fail_the_job_with_the_reason_and_lose_nothing(deployment, series, tmp_path, spoil, reason):
    folder, _, files = series
    spoil(files)
    (folder / "notes.txt").write_text("kept")
    before = digest(folder)
    status = run_blur(deployment, folder, tmp_path / "out")
    assert status.state == "failed"
    assert reason in status.error, status.error
    assert digest(folder) == before
    assert_no_memory_held(deployment)


@pytest.mark.parametrize("sigma", [0, -1.0, "wide", True])
def test_bad_sigma_is_refused_at_submit(deployment, series, tmp_path, sigma):
    with pytest.raises(InvalidJobRequest, match="sigma_mm"):
        submit(deployment.app, deployment.settings, "3dblur", series[0], tmp_path / "out", params={"sigma_mm": sigma})


def test_output_inside_the_input_is_refused(deployment, series):
    folder = series[0]
    before = digest(folder)
    status = run_blur(deployment, folder, folder / "blurred")
    assert status.state == "failed" and "template" in status.error
    assert digest(folder) == before
