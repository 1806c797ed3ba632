"""A MONAI bundle, built here with the monai package, imported by ``carina import-bundle`` and
run through the whole stack (CLI → Redis → workers → Triton), held to MONAI's own bundle
inference (``monai.bundle.run``) on the same CT: the same label on ≥ 99.9 % of voxels.

The network is a seeded, untrained UNet: its labels are speckled, not an organ, which makes
the comparison harder than a trained model's would (every voxel near a tie between the two
channels is a chance to differ). The last test shows that each way of getting the recipe
wrong costs far more than the 0.1 % allowed: windows fed as (z, y, x) to a network that takes
(x, y, z), no reorientation to RAS, labels returned by nearest neighbour where MONAI
interpolates probabilities, Gaussian blending where the bundle's inferer blends constant."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from carina.triton import LocalTriton
from ops.samples import spleen_phantom
from ops.volume import read_volume, write_volume
from tests.bundle_maker import run_bundle, write_configs, write_network
from tests.helpers import one_worker
from tests.triton_fixtures import ensure_triton_installed

# An oblique-free but permuted direction (the index x axis runs along world −y): the import's
# reorientation to RAS must transpose as well as flip.
STUDY_GEOMETRY = {"spacing": [1.3, 1.1, 2.5], "origin": [40.0, -90.0, 12.0],
                  "direction": [0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0]}


def carina(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "carina", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = write_configs(tmp_path_factory.mktemp("bundles") / "spleen_ct_test")
    write_network(root)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    ct, _ = spleen_phantom((40, 112, 120), tuple(STUDY_GEOMETRY["spacing"]), seed=4242)
    folder = tmp_path_factory.mktemp("study")
    return write_volume(ct, STUDY_GEOMETRY, folder / "ct.nii.gz")


@pytest.fixture(scope="module")
def monai_labels(bundle, study, tmp_path_factory):
    output = tmp_path_factory.mktemp("monai-out")
    done = run_bundle(bundle, study.parent, output)
    assert done.returncode == 0, done.stderr[-3000:]
    labels, _ = read_volume(output / "ct_seg.nii.gz")
    return labels


@pytest.fixture(scope="module")
def imported(bundle, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    definitions = tmp_path_factory.mktemp("definitions")
    started = time.perf_counter()
    done = carina(None, "import-bundle", str(bundle), "--models", str(repository), "--pipelines", str(definitions))
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    return repository, definitions, done.stdout, seconds


@pytest.fixture(scope="module")
def bundle_stack(imported, redis_server, tmp_path_factory):
    repository, definitions, _, _ = imported
    ensure_triton_installed()
    with LocalTriton(repository) as triton, one_worker(redis_server.url.replace("/0", "/14"), "bundle", triton.url,
                                                       tmp_path_factory.mktemp("bundle-logs"),
                                                       CARINA_PIPELINES_DIR=str(definitions)) as env:
        yield env


def test_the_import_maps_the_whole_recipe_and_writes_a_model_folder_and_a_definition(imported):
    repository, definitions, report, _ = imported
    for line in ("Orientationd: orientation RAS", "Spacingd: target_spacing_xyz [1.5, 1.5, 2.0]",
                 "ScaleIntensityRanged: intensity_window [-57, 164] onto [0.0, 1.0], clipped",
                 "SlidingWindowInferer: roi_size [64, 64, 48] (x, y, z), sw_batch_size 4, overlap 0.5",
                 "SaveImaged: not needed", "network: 2 output channels (background, spleen)"):
        assert line in report
    model = repository / "spleen_ct_test"
    interface = json.loads((model / "interface.json").read_text())
    assert interface["inputs"][0]["dims"] == [1, 48, 64, 64]  # Carina's (z, y, x)
    assert interface["outputs"][0]["dims"] == [2, 48, 64, 64]
    assert (model / "1" / "model.onnx").is_file() and (repository / "onnx_backend.py").is_file()
    assert (model / "1" / "model.py").read_bytes() == (Path(__file__).parents[2] / "models" / "spleen_ct" / "1" /
                                                       "model.py").read_bytes()
    assert [p.name for p in definitions.iterdir()] == ["spleen_ct_test.yaml"]


def test_the_imported_pipeline_is_listed(bundle_stack):
    listed = carina(bundle_stack, "pipelines")
    assert listed.returncode == 0, listed.stderr
    assert "spleen_ct_test" in listed.stdout and "MONAI bundle Test spleen CT segmentation 0.1.0" in listed.stdout


def test_the_imported_pipeline_gives_monai_s_own_labels(bundle_stack, study, monai_labels, tmp_path):
    done = carina(bundle_stack, "submit", "spleen_ct_test", "-i", str(study), "-o", str(tmp_path / "out"), "--wait")
    assert done.returncode == 0, done.stderr[-3000:]
    labels, geometry = read_volume(tmp_path / "out" / "ct.mhd")
    assert labels.shape == monai_labels.shape
    assert np.allclose(geometry["direction"], STUDY_GEOMETRY["direction"])
    same = float((labels == monai_labels.astype(labels.dtype)).mean())
    foreground = float((monai_labels == 1).mean())
    print(f"\nimported bundle vs MONAI's bundle inference: {same:.5%} of voxels the same "
          f"(MONAI labels {foreground:.1%} of them spleen)")
    assert 0.02 < foreground < 0.98  # both labels in play: agreement is not won by a constant
    assert same >= 0.999
    volumes = json.loads((tmp_path / "out" / "publish" / "config.meta").read_text())["volumes"]
    assert volumes[1]["file"] == "image.seg.mhd" and volumes[1]["labels"] == {"0": "background", "1": "spleen"}


@pytest.mark.parametrize("wrong", ["windows as (z, y, x)", "no reorientation", "nearest-neighbour inversion",
                                   "Gaussian blending"])
def test_each_way_of_getting_the_recipe_wrong_costs_more_than_the_tolerance(bundle, study, monai_labels, wrong):
    """The op with the bundle's own TorchScript network, the recipe as imported but for one thing."""
    torch = pytest.importorskip("torch")
    from ops.segmentation import segment
    from tests.bundle_maker import PIXDIM, ROI_XYZ

    network = torch.jit.load(str(bundle / "models" / "model.ts")).eval()

    def predict(windows, transposed=wrong != "windows as (z, y, x)"):
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(windows))
            return (network(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2) if transposed else network(x)).numpy()

    recipe = dict(roi_size=tuple(ROI_XYZ[::-1]), sw_batch_size=4, overlap=0.5, mode="constant",
                  target_spacing_xyz=tuple(PIXDIM), intensity_window=(-57, 164), orientation="RAS",
                  label_resampling="linear")
    recipe.update({"windows as (z, y, x)": {"roi_size": tuple(ROI_XYZ)}, "no reorientation": {"orientation": None},
                   "nearest-neighbour inversion": {"label_resampling": "nearest"},
                   "Gaussian blending": {"mode": "gaussian"}}[wrong])
    volume, geometry = read_volume(study)
    same = float((segment(volume, geometry, predict, **recipe) == monai_labels).mean())
    print(f"\n{wrong}: {same:.2%} of voxels as MONAI's")
    assert same < 0.999  # below what the import is held to
