"""Pipelines as definitions (queues/catalogue.py): the project's four, their parameters
checked as before, and every fault of a definition named by file and field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from queues.catalogue import (BUILTIN_STAGE_KINDS, DefinitionError, get_pipeline, load_catalogue, read_definition,
                              stage_kinds)
from queues.errors import InvalidJobRequest, UnknownPipeline
from queues.settings import Settings

SETTINGS = Settings()
SEEDS = {"3dblur", "fastio-itk", "nuclei-seg", "spleen-seg"}


def test_the_project_s_four_pipelines_are_definitions_with_their_seed_stages():
    pipelines = load_catalogue(SETTINGS)
    assert SEEDS <= set(pipelines)
    assert [(s.task, s.queue) for s in pipelines["fastio-itk"].stages] == [
        ("carina.fastio_itk.read_volume", "io"), ("carina.fastio_itk.filter_volume", "cpu"),
        ("carina.fastio_itk.write_volume", "io")]
    assert [s.queue for s in pipelines["spleen-seg"].stages] == ["io", "gpu", "io"]
    assert [s.queue for s in pipelines["nuclei-seg"].stages] == ["cpu", "gpu", "io"]
    assert {p.source for p in pipelines.values()} == {"carina"}


def test_the_workers_register_every_stage_kind_the_project_names():
    import workers  # noqa: F401  (registers the tasks)
    from queues.app import app

    assert set(BUILTIN_STAGE_KINDS) <= set(app.tasks)
    assert {name for name in app.tasks if name.startswith("carina.") and name != "carina.lifecycle.cancel"} == \
        set(BUILTIN_STAGE_KINDS)


@pytest.mark.parametrize("pipeline, given, expected", [
    ("fastio-itk", {}, {}),
    ("fastio-itk", {"crop_start": [1, 2, 3]}, {"crop_start": [1, 2, 3]}),
    ("3dblur", {}, {"sigma_mm": 1.0}),
    ("3dblur", {"sigma_mm": 2, "series_uid": "1.2.3"}, {"sigma_mm": 2.0, "series_uid": "1.2.3"}),
    ("spleen-seg", {}, {"overlap": 0.25, "model": "spleen_ct"}),
    ("spleen-seg", {"overlap": 0, "sw_batch_size": 8}, {"overlap": 0.0, "sw_batch_size": 8, "model": "spleen_ct"}),
    ("nuclei-seg", {}, {"tile_size": 256, "overlap": 0, "model": "nuclei_unet", "mask_pixel_count_limit": 1048576}),
    ("nuclei-seg", {"tile_size": 64, "overlap": 32, "num_workers": 2},
     {"tile_size": 64, "overlap": 32, "model": "nuclei_unet", "num_workers": 2, "mask_pixel_count_limit": 1048576}),
])
def test_parameters_take_their_defaults_and_types(pipeline, given, expected):
    checked = get_pipeline(SETTINGS, pipeline).validate(given)
    assert checked == expected and all(type(checked[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize("pipeline, given, message", [
    ("fastio-itk", {"crop_size": "big"}, "crop_size='big': expected three integers X Y Z"),
    ("fastio-itk", {"crop_start": [1.5, 0, 0]}, "crop_start=[1.5, 0, 0]: expected three integers"),
    ("fastio-itk", {"sigma_mm": 1}, "fastio-itk does not take ['sigma_mm']"),
    ("3dblur", {"sigma_mm": -1}, "sigma_mm=-1: a number of millimetres > 0 (and < 1000)"),
    ("3dblur", {"sigma_mm": True}, "sigma_mm=True"),
    ("3dblur", {"series_uid": "1.2.x"}, "series_uid='1.2.x': a DICOM UID (digits and dots)"),
    ("3dblur", {"series_uid": "..."}, "a DICOM UID"),
    ("3dblur", {"series_uid": "1" * 65}, "a DICOM UID"),
    ("spleen-seg", {"overlap": 0.95}, "overlap=0.95: a fraction from 0 to 0.9"),
    ("spleen-seg", {"sw_batch_size": 0}, "sw_batch_size=0: an integer from 1 to 64"),
    ("spleen-seg", {"model": "../x"}, "model='../x': a Triton model name"),
    ("nuclei-seg", {"tile_size": 100}, "tile_size=100: pixels, a multiple of 16 up to 4096"),
    ("nuclei-seg", {"tile_size": 64, "overlap": 40}, "overlap=40: pixels of context around each tile, 0 to 32"),
    ("nuclei-seg", {"num_workers": 0}, "num_workers=0: parallel tile batches, 1 to 256"),
    ("nuclei-seg", {"mask_pixel_count_limit": 10}, "mask_pixel_count_limit=10: pixels of the tissue mask"),
])
def test_a_bad_parameter_is_refused_with_what_it_should_be(pipeline, given, message):
    with pytest.raises(InvalidJobRequest) as refused:
        get_pipeline(SETTINGS, pipeline).validate(given)
    assert message in str(refused.value)


def test_an_unknown_pipeline_names_the_known_ones():
    with pytest.raises(UnknownPipeline, match="known pipelines: 3dblur, .*fastio-itk, nuclei-seg, spleen-seg"):
        get_pipeline(SETTINGS, "liver-seg")


GOOD = {"name": "liver-seg", "description": "a liver", "parameters": {"overlap": {"type": "number", "default": 0.5,
                                                                               "minimum": 0, "maximum": 0.9}},
        "stages": [{"kind": "carina.segmentation.read_volume", "queue": "io"},
                   {"kind": "carina.segmentation.infer", "queue": "gpu"}]}
WRITE = {"kind": "carina.segmentation.write_results", "queue": "io"}


def faulty(**changes):
    definition = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        node, *keys = path.split("__")
        target = definition
        for key in [node, *keys][:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = [node, *keys][-1]
        if value is None:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return definition


@pytest.mark.parametrize("definition, field, problem", [
    (faulty(stages__1__kind="carina.liver.infer"), "stages[1].kind", "not a stage kind"),
    (faulty(stages__1__queue="tpu"), "stages[1].queue", "not a kind of queue (io, cpu, gpu)"),
    (faulty(parameters__overlap__type=None), "parameters.overlap.type", "one of integer, number, string, xyz"),
    (faulty(parameters__overlap__default=2.0), "parameters.overlap.default", "outside what the parameter takes"),
    (faulty(parameters__overlap__maximum="windows / 2"), "parameters.overlap.maximum", "an earlier parameter"),
    (faulty(parameters__overlap__step=1), "parameters.overlap.step", "unknown field"),
    (faulty(stages=[]), "stages", "expected a list of stages"),
    (faulty(name="Liver Seg"), "name", "lower-case letters"),
    (faulty(checks=["crop_inside_moon"]), "checks", "crop_inside_volume"),
    (faulty(model="liver"), "model", "unknown field"),
    (faulty(settings={"orientation": "RAR"}), "settings.orientation", "three letters of R/L, A/P, S/I"),
    (faulty(settings={"blend_mode": "max"}), "settings.blend_mode", "constant or gaussian"),
    (faulty(settings={"intensity_window": [0, 1], "normalize_intensity": "all"}), "settings.normalize_intensity",
     "one or the other"),
    (faulty(settings={"label_names": {"one": "liver"}}, stages=[*GOOD["stages"], WRITE]), "settings.label_names",
     "{\"1\": \"spleen\"}"),
], ids=["stage-kind", "queue-kind", "no-type", "default-out-of-range", "relative-bound", "unknown-param-field",
        "no-stages", "bad-name", "unknown-check", "unknown-field", "orientation", "blend-mode", "window-and-normalize",
        "label-names"])
def test_every_fault_of_a_definition_names_the_file_and_the_field(tmp_path, definition, field, problem):
    path = tmp_path / "liver.yaml"
    path.write_text(json.dumps(definition))  # JSON is YAML
    with pytest.raises(DefinitionError) as refused:
        read_definition(path, stage_kinds(), "folder")
    assert str(refused.value).startswith(f"{path}: {field}: ") and problem in str(refused.value)


def test_a_file_that_is_not_yaml_is_named(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(DefinitionError, match="broken.yaml: cannot be read as a definition"):
        read_definition(tmp_path / "broken.yaml", stage_kinds(), "folder")


def test_a_folder_adds_pipelines_and_a_fault_or_a_duplicate_loads_none(tmp_path):
    settings = dataclasses.replace(SETTINGS, pipelines_dir=tmp_path)
    (tmp_path / "liver.json").write_text(json.dumps(GOOD))
    pipelines = load_catalogue(settings)
    assert pipelines["liver-seg"].source == f"folder {tmp_path}" and "spleen-seg" in pipelines
    assert pipelines["liver-seg"].validate({}) == {"overlap": 0.5}

    (tmp_path / "spleen.yaml").write_text(json.dumps({**GOOD, "name": "spleen-seg"}))
    with pytest.raises(DefinitionError, match="pipeline 'spleen-seg' is defined twice: by .*spleen-seg.yaml "
                                              r"\(carina\) and here \(folder"):
        load_catalogue(settings)
    (tmp_path / "spleen.yaml").unlink()
    (tmp_path / "zz-bad.yaml").write_text(json.dumps(faulty(stages__0__queue="tpu")))
    with pytest.raises(DefinitionError, match="zz-bad.yaml: stages"):
        load_catalogue(settings)


def test_a_pipelines_dir_that_is_not_a_folder_is_named(tmp_path):
    with pytest.raises(DefinitionError, match="CARINA_PIPELINES_DIR=.*not a folder"):
        load_catalogue(dataclasses.replace(SETTINGS, pipelines_dir=tmp_path / "absent"))


def test_a_stage_no_live_worker_would_take_is_named_with_why():
    from queues.jobs import JobStatus
    from queues.pipelines import unserved_stages
    from queues.presence import Worker

    status = JobStatus(job_id="j", pipeline="spleen-seg", state="queued", stages=[])
    io_cpu = Worker("w1", "host-a", ("io", "cpu", "io.host-a"), 0.0, 30.0,
                    frozenset({"carina.segmentation.read_volume"}))
    gpu_without_infer = Worker("w2", "host-a", ("gpu.host-a",), 0.0, 30.0, frozenset({"carina.nuclei.segment"}))
    assert unserved_stages(SETTINGS, status, [io_cpu]) == [("carina.segmentation.infer", "gpu", "queue"),
                                                           ("carina.segmentation.write_results", "io", "kind")]
    both = [io_cpu, gpu_without_infer]
    assert ("carina.segmentation.infer", "gpu", "kind") in unserved_stages(SETTINGS, status, both)
    older = Worker("w3", "host-a", ("io", "cpu", "gpu"), 0.0, 30.0)  # says nothing of its kinds: taken to run all
    assert unserved_stages(SETTINGS, status, [older]) == []


def test_the_spleen_recipe_is_the_definition_s_and_a_bad_one_is_named(tmp_path):
    assert get_pipeline(SETTINGS, "spleen-seg").settings == {
        "roi_size": [96, 96, 96], "target_spacing_xyz": [1.5, 1.5, 2.0], "intensity_window": [-57, 164],
        "output_channels": 2}
    for settings, field, problem in [({"roi_size": [96, 96]}, "settings.roi_size", "three positive integers"),
                                     ({"intensity_window": [200, 100]}, "settings.intensity_window", "[low, high]"),
                                     ({"learning_rate": 0.1}, "settings.learning_rate", "no stage of this pipeline")]:
        path = tmp_path / "liver.yaml"
        path.write_text(json.dumps({**GOOD, "settings": settings}))
        with pytest.raises(DefinitionError) as refused:
            read_definition(path, stage_kinds(), "folder")
        assert str(refused.value).startswith(f"{path}: {field}: ") and problem in str(refused.value)


@pytest.mark.parametrize("settings, field, problem", [
    ({"threshold": 1.5}, "settings.threshold", "above 0 and below 1"),
    ({"input_layout": "NHWC"}, "settings.input_layout", "channels_first (B, 3, S, S) or channels_last"),
    ({"jpeg_quality": 0}, "settings.jpeg_quality", "1 to 100"),
    ({"roi_size": [96, 96, 96]}, "settings.roi_size", "no stage of this pipeline reads it"),
])
def test_the_tile_segmentation_s_settings_are_checked_like_the_others(tmp_path, settings, field, problem):
    definition = {**get_pipeline(SETTINGS, "nuclei-seg").definition, "name": "nuclei-lite", "settings": settings}
    path = tmp_path / "nuclei-lite.json"
    path.write_text(json.dumps(definition))
    with pytest.raises(DefinitionError) as refused:
        read_definition(path, stage_kinds(), "folder")
    assert str(refused.value).startswith(f"{path}: {field}: ") and problem in str(refused.value)
    good = {**definition, "settings": {"threshold": 0.4, "input_layout": "channels_last", "jpeg_quality": 80}}
    path.write_text(json.dumps(good))
    assert read_definition(path, stage_kinds(), "folder").settings["threshold"] == 0.4
