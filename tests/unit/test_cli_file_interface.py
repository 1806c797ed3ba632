"""``carina dicom-to-hdf5`` / ``hdf5-to-dicom``: the seed's scripts, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np

from ops.dicom import read_series
from ops.samples import ct_phantom, ct_series

CLI = [sys.executable, "-m", "carina"]


def test_round_trip_through_hdf5_and_json(tmp_path):
    volume = ct_phantom((5, 16, 12))
    ct_series(tmp_path / "dcm", volume)
    h5, sidecar = tmp_path / "v.h5", tmp_path / "v.json"
    done = subprocess.run(CLI + ["dicom-to-hdf5", "-i", str(tmp_path / "dcm"), "--hdf5", str(h5), "-j", str(sidecar)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with h5py.File(h5) as f:
        np.testing.assert_array_equal(f["volume"][...], volume)
    assert json.loads(sidecar.read_text())["geometry"]["spacing"] == read_series(tmp_path / "dcm").geometry["spacing"]

    back = subprocess.run(CLI + ["hdf5-to-dicom", "--hdf5", str(h5), "-d", str(tmp_path / "dcm"),
                                 "-o", str(tmp_path / "out"), "-j", str(sidecar)],
                          capture_output=True, text=True, timeout=60)
    assert back.returncode == 0, back.stderr
    np.testing.assert_array_equal(read_series(tmp_path / "out").volume, volume)


def test_errors_are_reported_not_raised(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run(CLI + ["dicom-to-hdf5", "-i", str(tmp_path / "empty"), "--hdf5", str(tmp_path / "v.h5"),
                                "-j", str(tmp_path / "v.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "carina: error:" in out.stderr and "no DICOM" in out.stderr
    assert not (tmp_path / "v.h5").exists()
