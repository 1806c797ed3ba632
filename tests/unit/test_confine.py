"""Path confinement: every way out of the data roots that a file can take is refused, named."""

from __future__ import annotations

import os

import pytest

from queues.confine import check_input, check_output, real_roots
from queues.errors import PathRefused
from queues.headers import header_data_files


@pytest.fixture
def roots(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("patient B")
    return real_roots([tmp_path / "root"]), tmp_path / "root", tmp_path / "outside"


def mhd(path, data_file):
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
                    f"ElementDataFile = {data_file}\n")
    return path


@pytest.mark.parametrize("data_file", ["../outside/secret.txt", "{outside}/secret.txt"])
def test_a_header_naming_a_file_outside_is_refused_with_both_named(roots, data_file):
    allowed, root, outside = roots
    header = mhd(root / "escape.mhd", data_file.format(outside=outside))
    with pytest.raises(PathRefused, match=r"the data file named by .*escape\.mhd.* is outside the data roots"):
        check_input(header, allowed)


def test_a_header_inside_passes_and_its_list_and_pattern_forms_are_followed(roots):
    allowed, root, outside = roots
    (root / "a.raw").write_bytes(b"x" * 8)
    check_input(mhd(root / "ok.mhd", "a.raw"), allowed)
    check_input(mhd(root / "local.mha", "LOCAL"), allowed)
    listed = root / "list.mhd"
    listed.write_text("NDims = 3\nElementDataFile = LIST\na.raw\n../outside/secret.txt\n")
    assert header_data_files(listed)[-1] == root / "../outside/secret.txt"
    with pytest.raises(PathRefused):
        check_input(listed, allowed)
    with pytest.raises(PathRefused):
        check_input(mhd(root / "pattern.mhd", "../outside/slice%03d.raw 1 10 1"), allowed)
    with pytest.raises(PathRefused, match="placeholder in a folder name"):
        check_input(mhd(root / "sneaky.mhd", "dir%d/slice.raw 1 2 1"), allowed)


def test_an_nrrd_data_file_is_followed_and_its_pixels_are_not_read_as_header(roots):
    allowed, root, outside = roots
    detached = root / "v.nhdr"
    detached.write_text(f"NRRD0004\ntype: uchar\ndimension: 1\nsizes: 8\ndata file: {outside}/secret.txt\n")
    with pytest.raises(PathRefused):
        check_input(detached, allowed)
    attached = root / "v.nrrd"
    attached.write_bytes(b"NRRD0004\ntype: uchar\nsizes: 8\n\ndata file: /etc/passwd\n")
    check_input(attached, allowed)


def test_links_out_of_the_root_are_refused_wherever_they_are(roots):
    allowed, root, outside = roots
    (root / "study").mkdir()
    (root / "study" / "1.dcm").write_bytes(b"x")
    check_input(root / "study", allowed)
    os.symlink(outside / "secret.txt", root / "study" / "2.dcm")
    with pytest.raises(PathRefused, match=r"input file .*2\.dcm is outside the data roots \(it leads to"):
        check_input(root / "study", allowed)
    os.symlink(outside, root / "linked-folder")
    with pytest.raises(PathRefused):
        check_input(root / "linked-folder", allowed)
    os.symlink(outside / "secret.txt", root / "ct.nii.gz")
    with pytest.raises(PathRefused):
        check_input(root / "ct.nii.gz", allowed)


def test_a_link_that_stays_inside_is_followed(roots):
    allowed, root, outside = roots
    (root / "real.nii.gz").write_bytes(b"x")
    os.symlink(root / "real.nii.gz", root / "alias.nii.gz")
    check_input(root / "alias.nii.gz", allowed)


def test_outputs_and_their_staging_folder_stay_inside(roots):
    allowed, root, outside = roots
    (root / "results").mkdir()
    check_output(root / "results" / "job", allowed)
    with pytest.raises(PathRefused, match="the folder of the output"):
        check_output(outside / "job", allowed)
    os.symlink(outside, root / "out")
    with pytest.raises(PathRefused, match="output .* is outside the data roots"):
        check_output(root / "out", allowed)
