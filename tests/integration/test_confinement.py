"""Patient data stays inside the data roots: each way out tried through the worker (a job
submitted straight to the queue, past the API's checks) and the watch folder is refused,
with the file named, and nothing is written."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ops.samples import ct_phantom, ct_series
from queues.pipelines import submit, wait
from queues.watch import DONE_DIR, FAILED_DIR

from tests.helpers import GEOMETRY, digest
from tests.integration.test_watch import make_watcher, scan_until, volume_file


@pytest.fixture
def outside():
    """A folder outside every data root of the suite, holding another patient's data."""
    folder = Path(tempfile.mkdtemp(prefix="carina-outside-"))
    (folder / "secret.raw").write_bytes(bytes(range(256)) * 12)
    volume_file(folder / "other-patient.mhd")
    yield folder
    shutil.rmtree(folder)


def run(deployment, pipeline, input, output, **options):
    job = submit(deployment.app, deployment.settings, pipeline, input, output, **options)
    return wait(deployment.jobs(), job, 120)


def escaping_header(folder: Path, data_file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / "ct.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 16 12 8\nElementType = MET_SHORT\n"
                      "ElementSpacing = 1 1 1\n"
                      f"ElementDataFile = {data_file}\n")
    return header


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_a_header_whose_data_file_leads_out_fails_the_job_and_writes_nothing(deployment, outside, tmp_path, how):
    secret = outside / "secret.raw"
    data_file = os.path.relpath(secret, tmp_path / "in") if how == "relative" else secret
    header = escaping_header(tmp_path / "in", str(data_file))
    status = run(deployment, "fastio-itk", header, tmp_path / "out")
    assert status.state == "failed" and status.error.startswith("PathRefused: ")
    assert f"the data file named by {header}" in status.error and "outside the data roots" in status.error
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_link_out_of_a_dicom_folder_fails_the_job(deployment, outside, tmp_path):
    study = tmp_path / "study"
    ct_series(study, ct_phantom((6, 16, 16), seed=2), GEOMETRY)
    os.symlink(outside / "secret.raw", study / "zz.dcm")
    status = run(deployment, "3dblur", study, tmp_path / "out")
    assert status.state == "failed" and "zz.dcm is outside the data roots (it leads to" in status.error
    assert not (tmp_path / "out").exists()


def test_a_linked_volume_and_a_linked_configuration_file_fail_the_job(deployment, outside, tmp_path):
    (tmp_path / "in").mkdir()
    os.symlink(outside / "other-patient.mhd", tmp_path / "in" / "ct.mhd")
    status = run(deployment, "fastio-itk", tmp_path / "in" / "ct.mhd", tmp_path / "out")
    assert status.state == "failed" and "input" in status.error and "outside the data roots" in status.error

    config = tmp_path / "config"
    config.mkdir()
    os.symlink(outside / "secret.raw", config / "config_render.json")
    status = run(deployment, "fastio-itk", volume_file(tmp_path / "ok" / "ct.mhd"), tmp_path / "out2", config=config)
    assert status.state == "failed" and "configuration folder file" in status.error
    assert not (tmp_path / "out2").exists()


def test_an_output_that_leads_out_fails_the_job_and_writes_nothing_there(deployment, outside, tmp_path):
    os.symlink(outside, tmp_path / "out")
    before = digest(outside)
    status = run(deployment, "fastio-itk", volume_file(tmp_path / "in" / "ct.mhd"), tmp_path / "out")
    assert status.state == "failed" and "output" in status.error and "outside the data roots" in status.error
    assert digest(outside) == before


def test_the_watch_folder_files_escaping_drops_in_failed_and_no_drop_claims_another(deployment, outside, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.symlink(outside / "other-patient.mhd", inbox / "linked.mhd")
    escaping_header(inbox / "escape", str(outside / "secret.raw"))
    volume_file(inbox / "patientB" / "ct.mhd")  # a drop of its own, which the next header names
    (inbox / "claims.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 16 12 8\nElementType = MET_SHORT\n"
                                      "ElementDataFile = patientB\n")
    watcher = make_watcher(deployment, inbox)
    failed, done = inbox / FAILED_DIR, inbox / DONE_DIR
    scan_until(watcher, lambda: all((failed / f"{name}.error.txt").exists() for name in ("linked.mhd", "escape"))
               and (done / "patientB").exists() and (failed / "claims.mhd.error.txt").exists())
    assert "outside the data roots" in (failed / "linked.mhd.error.txt").read_text()
    assert "outside the data roots" in (failed / "escape.error.txt").read_text()
    assert (done / "patientB" / "ct.mhd").is_file()  # processed on its own, not moved away by the header
    assert (outside / "other-patient.mhd").is_file()  # a link's target is never moved


def test_every_file_the_stack_made_in_dev_shm_is_private(deployment, project_triton, tmp_path):
    """FastIO's segments and pools, Triton's python-backend regions: 0600, owner only."""
    from tests.conftest import SHM, _shm_before

    run(deployment, "fastio-itk", volume_file(tmp_path / "in" / "ct.mhd"), tmp_path / "out")  # pools, at least
    made = [p for p in SHM.iterdir() if p.name not in _shm_before and p.is_file()]
    assert any(p.name.startswith("triton_python_backend_shm_region") for p in made)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in made if p.stat().st_mode & 0o077} == {}
