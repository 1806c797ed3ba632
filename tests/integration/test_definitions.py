"""A pipeline added as a definition in CARINA_PIPELINES_DIR: listed, shown and run through the
CLI on workers that have never seen the definition (they need its stage kinds, not the file);
a faulty definition stops the front door with its file and field named."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert listed.returncode == 0 and f"crop-corner  the 2×2×2 corner of a volume, for a quick look  [folder {folder}]" \
        in listed.stdout and "[carina]" in listed.stdout
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
