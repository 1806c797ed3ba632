"""A pipeline added as a definition in CARINA_PIPELINES_DIR: listed, shown and run through the
CLI on workers that have never seen the definition (they need its stage kinds, not the file);
a faulty definition stops the front door with its file and field named."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import yaml

from ops.volume import read_volume

CORNER = {
    "name": "crop-corner",
    "description": "the 2×2×2 corner of a volume, for a quick look",
    "parameters": {"crop_start": {"type": "xyz", "default": [0, 0, 0]},
                   "crop_size": {"type": "xyz", "default": [2, 2, 2]}},
    "checks": ["crop_inside_volume"],
    "stages": [{"kind": "carina.fastio_itk.read_volume", "queue": "io"},
               {"kind": "carina.fastio_itk.filter_volume", "queue": "cpu"},
               {"kind": "carina.fastio_itk.write_volume", "queue": "io"}],
}


def carina(env, *args):
    return subprocess.run([sys.executable, "-m", "carina", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_pipeline_from_a_folder_is_listed_shown_and_runs(deployment, sample, tmp_path):
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "corner.yaml").write_text(yaml.safe_dump(CORNER))
    env = {**deployment.env, "CARINA_PIPELINES_DIR": str(folder)}

    listed = carina(env, "pipelines")
    line = f"crop-corner  the 2×2×2 corner of a volume, for a quick look  [folder {folder}]"
    assert listed.returncode == 0 and line in listed.stdout and "[carina]" in listed.stdout
    shown = yaml.safe_load(carina(env, "pipelines", "show", "crop-corner").stdout)
    assert shown["source"] == f"folder {folder}" and shown["stages"] == CORNER["stages"]

    done = carina(env, "submit", "crop-corner", "-i", str(sample[0]), "-o", str(tmp_path / "out"), "--wait")
    assert done.returncode == 0, done.stderr
    assert read_volume(tmp_path / "out" / "output.mhd")[0].shape == (2, 2, 2)
    bigger = carina(env, "submit", "crop-corner", "-i", str(sample[0]), "-o", str(tmp_path / "out3"),
                    "--param", "crop_size=[3, 4, 5]", "--wait")
    assert bigger.returncode == 0, bigger.stderr
    assert read_volume(tmp_path / "out3" / "output.mhd")[0].shape == (5, 4, 3)
    refused = carina(env, "submit", "crop-corner", "-i", str(sample[0]), "-o", str(tmp_path / "o"),
                     "--param", "crop_start=[99, 0, 0]")
    assert refused.returncode == 2 and "ct.mhd: CROP_START_X=99 is outside the image" in refused.stderr


def test_a_faulty_definition_stops_the_front_door_naming_file_and_field(deployment, sample, tmp_path):
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "bad.json").write_text(json.dumps({**CORNER, "stages": [{"kind": "carina.liver.infer", "queue": "gpu"}]}))
    env = {**deployment.env, "CARINA_PIPELINES_DIR": str(folder)}
    for command in (["pipelines"], ["submit", "fastio-itk", "-i", str(sample[0]), "-o", str(tmp_path / "out")]):
        refused = carina(env, *command)
        assert refused.returncode == 2, refused
        assert refused.stderr.strip() == (f"carina: error: {folder / 'bad.json'}: stages[0].kind: 'carina.liver.infer' "
                                          "is not a stage kind the workers know (12 known: the project's and the "
                                          "carina.stages entry points)")
    assert not (tmp_path / "out").exists()


def test_a_definition_s_settings_reach_its_stages(deployment, tmp_path):
    """The spleen's stage kinds under another recipe (a coarser spacing): the windows the job
    runs are those that recipe makes, not the spleen's."""
    import numpy as np

    from ops.samples import spleen_phantom
    from ops.segmentation import window_count
    from ops.volume import write_volume
    from queues.pipelines import submit, wait
    from tests.helpers import GEOMETRY

    spleen = yaml.safe_load((Path(__file__).resolve().parents[2] / "queues" / "definitions" / "spleen-seg.yaml")
                            .read_text())
    coarse = {**spleen, "name": "spleen-coarse", "settings": {**spleen["settings"], "target_spacing_xyz": [4, 4, 6]}}
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "coarse.yaml").write_text(yaml.safe_dump(coarse))
    settings = dataclasses.replace(deployment.settings, pipelines_dir=folder)
    ct, _ = spleen_phantom((48, 160, 160), (1.5, 1.5, 2.0), seed=900_011)
    geometry = {**GEOMETRY, "spacing": [1.5, 1.5, 2.0]}
    path = write_volume(ct, geometry, tmp_path / "in" / "ct.nii.gz")
    status = wait(deployment.jobs(), submit(deployment.app, settings, "spleen-coarse", path, tmp_path / "out"), 240)
    assert status.state == "done", status.error
    expected = {name: window_count(ct.shape, geometry, 0.25, target_spacing_xyz=spacing)[0]
                for name, spacing in (("coarse", (4, 4, 6)), ("spleen", (1.5, 1.5, 2.0)))}
    assert status.progress_total == expected["coarse"] != expected["spleen"]
    assert read_volume(tmp_path / "out" / "ct.mhd")[0].shape == ct.shape and np.isin(
        read_volume(tmp_path / "out" / "ct.mhd")[0], [0, 1]).all()
