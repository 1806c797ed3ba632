"""queues.watch without a broker: what an inbox entry is, when it has changed, which rule takes it."""

from __future__ import annotations

import json
import os

import pytest

from queues.errors import ConfigError
from queues.rules import DEFAULT_RULES, Rule, load_rules
from queues.watch import describe, is_partial, signature


def dicom_file(path, modality="CT", body_part="ABDOMEN"):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Modality, ds.BodyPartExamined = modality, body_part
    ds.save_as(path, enforce_file_format=True)
    return path


def first_rule(name, kind, tags, rules=DEFAULT_RULES):
    return next((r.pipeline for r in rules if r.takes(name, kind, tags)), None)


def test_partial_and_hidden_names_are_left_alone():
    assert is_partial(".ct.nii.gz") and is_partial("ct.nii.gz.part") and is_partial("slide.svs.crdownload")
    assert not is_partial("ct.nii.gz") and not is_partial("study")


def test_entries_are_told_apart_by_what_they_hold(tmp_path):
    (tmp_path / "slide.SVS").write_bytes(b"x")
    assert describe(tmp_path / "slide.SVS")[0] == "slide"
    (tmp_path / "ct.nii.gz").write_bytes(b"x")
    assert describe(tmp_path / "ct.nii.gz")[0] == "volume"
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        dicom_file(series / f"IM{i}")  # no suffix: told by the DICM preamble
    (series / "notes.txt").write_text("sidecars decide nothing")
    assert describe(series) == ("dicom", {"Modality": "CT", "BodyPartExamined": "ABDOMEN", "SeriesDescription": "",
                                          "StudyDescription": "", "Manufacturer": ""}, "")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.svs").write_bytes(b"x")
    dicom_file(mixed / "b.dcm")
    kind, _, why = describe(mixed)
    assert kind == "mixed" and "1 dicom, 1 slide" in why
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    assert describe(tmp_path / "report.pdf")[0] == "unknown"


def test_the_default_rules_route_by_kind_and_dicom_header():
    assert first_rule("case.svs", "slide", {}) == "nuclei-seg"
    assert first_rule("study", "dicom", {"Modality": "CT", "BodyPartExamined": "ABDOMEN"}) == "spleen-seg"
    assert first_rule("study", "dicom", {"Modality": "MR", "BodyPartExamined": "BRAIN"}) == "3dblur"
    assert first_rule("ct.nii.gz", "volume", {}) == "spleen-seg"
    assert first_rule("report.pdf", "unknown", {}) is None


def test_the_signature_changes_while_a_file_grows_and_not_otherwise(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"1234")
    first = signature(folder)
    assert signature(folder) == first
    with open(folder / "a.dcm", "ab") as f:
        f.write(b"5678")
    assert signature(folder) != first
    grown = signature(folder)
    (folder / ".b.dcm.part").write_bytes(b"in progress")  # partial files inside a folder do not count
    assert signature(folder) == grown
    os.utime(folder / "a.dcm", ns=(1, 1))
    assert signature(folder) != grown


def test_rules_load_from_json_and_bad_ones_are_refused(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"match": "*.svs", "pipeline": "nuclei-seg", "params": {"tile_size": 512}},
                                {"kind": "dicom", "dicom": {"Modality": "MR"}, "pipeline": "3dblur",
                                 "priority": "higher"}]))
    rules = load_rules(path)
    assert rules[0] == Rule("nuclei-seg", match="*.svs", params={"tile_size": 512})
    assert first_rule("x", "dicom", {"Modality": "mr"}, rules) == "3dblur"  # values match case-insensitively
    for bad, message in (([{"pipeline": "nope"}], "unknown pipeline"), ([{"pipeline": "3dblur", "kind": "pdf"}], "kind"),
                         ([{"pipeline": "3dblur", "priority": "asap"}], "priority"),
                         ([{"pipeline": "3dblur", "colour": 1}], "unknown fields"), ({}, "list"), ([], "list")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_rules(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="rules file"):
        load_rules(path)
