"""``nuclei-seg`` end to end: real workers, Dask threads, the project's nuclei model on a real Triton."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import openslide
import pytest
from scipy import ndimage

from ops.samples import render_he
from ops.samples import he_slide
from ops.stain import nuclei_by_stain
from queues.errors import InvalidJobRequest
from queues.pipelines import submit

from tests import real_he
from tests.helpers import assert_no_memory_held, blind_to_triton, dice, digest, run_job, write_slide

FIXTURES = Path(__file__).parents[1] / "data" / "openslide"
SHAPE = (1200, 1700)  # level 0 (y, x): 5 × 7 tiles of 256, the last row and column partial
SEED = 424242


run = partial(run_job, pipeline="nuclei-seg")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return he_slide(tmp_path_factory.mktemp("slides") / "case-17.tif", SHAPE, seed=SEED)


def overlaid(rgb: np.ndarray) -> np.ndarray:
    """Where the green overlay lies: neither H&E stain nor glass makes green the strongest channel."""
    rgb = rgb.astype(np.int16)
    return (rgb[..., 1] > rgb[..., 0] + 20) & (rgb[..., 1] > rgb[..., 2] + 20)


def test_segments_the_nuclei_into_a_pyramid_with_the_seed_outputs(deployment, slide, tmp_path):
    before = digest(slide)
    status = run(deployment, slide, tmp_path / "out", params={"num_workers": 2})
    assert status.state == "done", status.error
    assert status.progress_total == 5 * 7 and status.progress_done == status.progress_total

    out = tmp_path / "out"
    with openslide.OpenSlide(out / "image.tif") as written, openslide.OpenSlide(slide) as source:
        assert written.level_count > 1 and written.dimensions == source.dimensions
        assert float(written.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25, rel=1e-3)
        result = np.asarray(written.read_region((0, 0), 0, written.dimensions))[..., :3]
        original = np.asarray(source.read_region((0, 0), 0, source.dimensions))[..., :3]

    # The green overlay lies on the nuclei the slide was rendered with, and only there.
    _, nuclei = render_he(0, 0, *SHAPE, seed=SEED, slide_shape=SHAPE)
    assert dice(overlaid(result), nuclei) > 0.6
    assert not overlaid(original).any()
    # Everything else is the slide itself, through one more JPEG generation.
    away = ~ndimage.binary_dilation(overlaid(result) | nuclei, iterations=3)
    assert np.abs(result[away].astype(int) - original[away]).mean() < 2.0

    meta = json.loads((out / "config.meta").read_text())["slides"][0]
    assert meta["file"] == "image.tif" and meta["dimensions"] == [SHAPE[1], SHAPE[0]]
    assert meta["tiles"] == 35 and 0 < meta["tissue_tiles"] < 35 and meta["model"] == "nuclei_unet"
    assert json.loads((out / "config_render.json").read_text())["dataset"] == "image.tif"
    assert (out / "thumbnail.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert digest(slide) == before
    assert_no_memory_held(deployment)


def test_an_overlap_gives_the_model_context_and_the_same_tiling(deployment, slide, tmp_path):
    status = run(deployment, slide, tmp_path / "out", params={"overlap": 32, "tile_size": 128})
    assert status.state == "done", status.error
    assert status.progress_total == 10 * 14
    with openslide.OpenSlide(tmp_path / "out" / "image.tif") as written:
        assert written.properties["openslide.level[0].tile-width"] == "128"
        result = np.asarray(written.read_region((0, 0), 0, written.dimensions))[..., :3]
    _, nuclei = render_he(0, 0, *SHAPE, seed=SEED, slide_shape=SHAPE)
    assert dice(overlaid(result), nuclei) > 0.6


def test_on_a_real_aperio_slide_it_outlines_the_nuclei_the_stain_reference_finds(deployment, tmp_path):
    # A region of OpenSlide's CMU-1 (skin, 20×) that no training saw; its nuclei by colour
    # deconvolution are the reference (tests/unit/test_nuclei_model.py holds the model alone to it).
    slide = tmp_path / "cmu-1-region.svs"
    shutil.copyfile(real_he.path_of("cmu-small-region"), slide)
    original, before = real_he.load("cmu-small-region"), digest(slide)
    status = run(deployment, slide, tmp_path / "out")
    assert status.state == "done", status.error
    with openslide.OpenSlide(tmp_path / "out" / "image.tif") as written:
        result = np.asarray(written.read_region((0, 0), 0, written.dimensions))[..., :3]
    reference = nuclei_by_stain(original)
    agreement = real_he.agreement(overlaid(result), reference.nuclei, reference.tissue)
    # Read back from the pyramid's JPEG, whose 2×2 chroma subsampling spreads the green about a
    # pixel around each nucleus: the fraction is looser here than the model's own (held to
    # FRACTION_RATIO_LIMIT in tests/unit/test_nuclei_model.py).
    assert agreement.dice >= real_he.DICE_FLOOR and 1 / 1.4 <= agreement.fraction_ratio <= 1.4, agreement
    assert digest(slide) == before


def test_an_all_glass_slide_is_written_without_inference(deployment, tmp_path):
    blank = write_slide(tmp_path / "blank.tif", (700, 900), levels=2, blank=True)
    # The model does not exist: had anything been sent, the job would have failed (submitted by
    # a front door that does not ask Triton first).
    status = run(deployment, blank, tmp_path / "out", params={"model": "no_such_model"},
                 front_door=blind_to_triton(deployment.settings))
    assert status.state == "done", status.error
    assert json.loads((tmp_path / "out" / "config.meta").read_text())["slides"][0]["tissue_tiles"] == 0
    with openslide.OpenSlide(tmp_path / "out" / "image.tif") as written:
        assert written.dimensions == (900, 700)


@pytest.mark.parametrize("name, error", [
    ("not-a-slide.svs", "SlideOpenError"),
    ("unopenable.tiff", "SlideOpenError"),
    ("unreadable.svs", "SlideReadError"),
])
def test_a_bad_slide_fails_with_the_reason_and_is_kept(deployment, tmp_path, name, error):
    path = tmp_path / name
    if name == "not-a-slide.svs":
        path.write_text("a report, not a slide\n")
    else:
        shutil.copyfile(FIXTURES / name, path)
    before = digest(path)
    status = run(deployment, path, tmp_path / "out")
    assert status.state == "failed" and error in status.error, status.error
    assert name in status.error
    assert digest(path) == before
    assert not (tmp_path / "out" / "image.tif").exists()
    assert_no_memory_held(deployment)


@pytest.mark.parametrize("params", [{"tile_size": 100}, {"tile_size": 0}, {"tile_size": 8192},
                                    {"overlap": 200}, {"num_workers": 0}, {"colour": "blue"}])
def test_bad_options_are_refused_before_anything_is_queued(deployment, slide, tmp_path, params):
    with pytest.raises(InvalidJobRequest):
        submit(deployment.app, deployment.settings, "nuclei-seg", slide, tmp_path / "out", params=params)


def test_the_seeds_input_folder_with_its_render_config(deployment, slide, tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    shutil.copyfile(slide, folder / "case-17.svs")
    render = {"dataset": "image.tif", "view": {"mode": "slide", "level": 0}, "from": "the site"}
    (folder / "config_render.json").write_text(json.dumps(render))
    status = run(deployment, folder, tmp_path / "out", params={"tile_size": 512})
    assert status.state == "done", status.error
    assert json.loads((tmp_path / "out" / "config_render.json").read_text()) == render
    assert json.loads((tmp_path / "out" / "config.meta").read_text())["slides"][0]["source"].endswith("case-17.svs")


def test_a_folder_of_two_slides_fails_with_the_reason(deployment, slide, tmp_path):
    for name in ("a.tif", "b.svs"):
        shutil.copyfile(slide, tmp_path / name)
    status = run(deployment, tmp_path, tmp_path / "out")
    assert status.state == "failed" and "SlideOpenError" in status.error and "a.tif, b.svs" in status.error
    assert (tmp_path / "a.tif").is_file() and (tmp_path / "b.svs").is_file()
