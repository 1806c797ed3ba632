"""The example plugin (examples/carina-organ-stats) installed with pip: its pipeline is listed
with its source and runs, its stage kind on a worker that loaded it from the entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ops.samples import spleen_phantom
from ops.volume import read_volume, write_volume
from tests.helpers import GEOMETRY, one_worker

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "carina-organ-stats"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The plugin installed by pip into a folder of its own, which the test's processes put
    on their path (the project's environment stays as it was for the other tests)."""
    target = tmp_path_factory.mktemp("plugin-site")
    build = tmp_path_factory.mktemp("plugin-build")
    shutil.copytree(PLUGIN, build / "src")  # pip builds in place; the checkout stays clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(build / "src")], check=True, timeout=300)
    return target


@pytest.fixture(scope="module")
def plugin_stack(installed, redis_server, project_triton, tmp_path_factory):
    with one_worker(redis_server.url.replace("/0", "/13"), "plugin", project_triton.url,
                    tmp_path_factory.mktemp("plugin-logs"),
                    PYTHONPATH=os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])) as env:
        yield env


def carina(env, *args):
    return subprocess.run([sys.executable, "-m", "carina", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_plugin_s_pipeline_is_listed_with_its_source(plugin_stack):
    listed = carina(plugin_stack, "pipelines")
    assert listed.returncode == 0, listed.stderr
    assert "spleen-stats" in listed.stdout and "[package carina-organ-stats (organ-stats)]" in listed.stdout
    assert "organ_stats.label_statistics (cpu)" in listed.stdout


def test_a_job_runs_through_the_plugin_s_stage_and_its_figures_hold(plugin_stack, tmp_path):
    ct, _ = spleen_phantom((24, 96, 96), (2.5, 2.5, 3.0), seed=7)
    path = write_volume(ct, {**GEOMETRY, "spacing": [2.5, 2.5, 3.0]}, tmp_path / "in" / "ct.nii.gz")
    done = carina(plugin_stack, "submit", "spleen-stats", "-i", str(path), "-o", str(tmp_path / "out"), "--wait")
    assert done.returncode == 0, done.stderr[-3000:]
    statistics = json.loads((tmp_path / "out" / "statistics.json").read_text())
    labels, _ = read_volume(tmp_path / "out" / "ct.mhd")  # the segmentation's own output, beside it
    assert set(statistics) <= {"background", "spleen"} and "background" in statistics
    for figures in statistics.values():
        under = ct[labels == figures["value"]].astype(np.float64)
        assert figures["voxels"] == under.size and figures["volume_ml"] == round(under.size * 2.5 * 2.5 * 3 / 1000, 3)
        assert figures["hu_mean"] == pytest.approx(under.mean()) and figures["hu_max"] == under.max()
