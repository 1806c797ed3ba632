"""A fastio-itk crop resolved against a volume's size, and the size read from each header
format without numpy or ITK (queues.crop, queues.headers), held to ITK's own reading."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from ops.volume import write_volume
from queues.crop import CropRegion, resolve_crop
from queues.errors import InvalidJobRequest
from queues.headers import volume_file, volume_size
from tests.helpers import GEOMETRY

DIMS_XYZ = (6, 5, 4)  # an array of shape (4, 5, 6)


@pytest.mark.parametrize(
    "start, size, expected",
    [
        ((-1, -1, -1), (-1, -1, -1), CropRegion((0, 0, 0), (6, 5, 4))),
        ((1, 2, 3), (-1, -1, -1), CropRegion((1, 2, 3), (5, 3, 1))),
        ((0, 0, 0), (2, 3, 1), CropRegion((0, 0, 0), (2, 3, 1))),
        ((5, 4, 3), (1, 1, 1), CropRegion((5, 4, 3), (1, 1, 1))),
        ((np.int64(1), 0, 0), (-1, -1, -1), CropRegion((1, 0, 0), (5, 5, 4))),
    ],
)
def test_resolve_crop_applies_the_seed_defaults(start, size, expected):
    assert resolve_crop(DIMS_XYZ, start, size) == expected


@pytest.mark.parametrize(
    "start, size, message",
    [
        ((6, 0, 0), (-1, -1, -1), "CROP_START_X=6 is outside"),
        ((0, 0, 0), (0, -1, -1), "CROP_SIZE_X=0"),
        ((0, 3, 0), (-1, 3, -1), "past the image's edge"),
        ((-2, 0, 0), (-1, -1, -1), "negative"),
        ((0, 0, 1.5), (-1, -1, -1), "CROP_START_Z=1.5 is not an integer"),
        ((0, 0, "1"), (-1, -1, -1), "not an integer"),
        ((True, 0, 0), (-1, -1, -1), "not an integer"),
        ((0, 0), (-1, -1, -1), "three values"),
    ],
)
def test_resolve_crop_refuses_bad_regions(start, size, message):
    with pytest.raises(InvalidJobRequest, match=message):
        resolve_crop(DIMS_XYZ, start, size)


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_the_size_a_header_declares_is_the_size_itk_reads(tmp_path, suffix, dtype):
    path = write_volume(np.zeros((4, 5, 6), dtype), GEOMETRY, tmp_path / f"v{suffix}")
    assert volume_size(path) == (6, 5, 4)
    assert volume_file(tmp_path) == path  # a detached header's data file is no volume file of its own


def test_a_nifti_header_of_either_byte_order_and_version_is_read(tmp_path):
    header = bytearray(540)
    header[0:4] = (540).to_bytes(4, "big")
    header[16:16 + 64] = b"".join(v.to_bytes(8, "big") for v in (4, 7, 8, 9, 1, 1, 1, 1))
    path = tmp_path / "v2.nii.gz"
    path.write_bytes(gzip.compress(bytes(header)))
    assert volume_size(path) == (7, 8, 9)  # the fourth axis, of size 1, dropped


@pytest.mark.parametrize("name, content", [
    ("garbage.nii", b"not nifti" * 50), ("short.nii", b"\x5c\x01"), ("bad.nii.gz", b"not gzip"),
    ("nosize.mhd", b"NDims = 3\nElementType = MET_SHORT\n"), ("words.mhd", b"DimSize = a b c\n"),
])
def test_a_header_that_declares_no_size_gives_none_for_the_worker_to_explain(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    assert volume_size(tmp_path / name) is None


def test_a_folder_of_several_volumes_or_none_names_no_volume_file(tmp_path):
    assert volume_file(tmp_path) is None
    for name in ("a.nii", "b.nii"):
        (tmp_path / name).write_bytes(b"")
    assert volume_file(tmp_path) is None
