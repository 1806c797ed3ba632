"""ops.volume, ops.crop and ops.render on small hand-checked volumes, against ITK itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ops.crop import crop_volume
from ops.errors import InvalidCrop, VolumeReadError
from ops.render import write_render_files, volume_meta
from ops.volume import read_volume, write_volume

# A rotation about z by 90 degrees: the direction matters to the crop's origin.
ROTATED = {"spacing": [0.5, 0.75, 2.0], "origin": [-10.0, 5.0, 100.0],
           "direction": [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]}


def volume(shape=(4, 5, 6), dtype=np.int16):
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape)


@pytest.mark.parametrize("suffix", [".mhd", ".nii.gz"])
def test_write_then_read_keeps_voxels_and_geometry(tmp_path, suffix):
    path = write_volume(volume(), ROTATED, tmp_path / f"v{suffix}")
    array, geometry = read_volume(path)
    np.testing.assert_array_equal(array, volume())
    assert array.dtype == np.int16
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(geometry[key], ROTATED[key], atol=1e-5)


def test_crop_matches_slicing_and_itk_origin():
    import itk

    array = volume()
    cropped, geometry = crop_volume(array, ROTATED, (1, 2, 3), (4, 2, 1))
    np.testing.assert_array_equal(cropped, array[3:4, 2:4, 1:5])
    assert cropped.flags.c_contiguous and not np.shares_memory(cropped, array)
    # origin = origin + direction @ (index * spacing), computed by hand for this rotation
    index_mm = np.array([1 * 0.5, 2 * 0.75, 3 * 2.0])
    expected = np.array(ROTATED["origin"]) + np.array(ROTATED["direction"]).reshape(3, 3) @ index_mm
    np.testing.assert_allclose(geometry["origin"], expected)
    assert geometry["spacing"] == ROTATED["spacing"] and geometry["direction"] == ROTATED["direction"]
    # and ITK, writing the extracted image itself, puts the same origin in the file
    image = itk.image_view_from_array(array)
    image.SetSpacing(ROTATED["spacing"]); image.SetOrigin(ROTATED["origin"])
    image.SetDirection(np.array(ROTATED["direction"]).reshape(3, 3))
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint([1, 2, 3]), expected)


def test_read_refuses_missing_and_non_image_files(tmp_path):
    with pytest.raises(VolumeReadError, match="does not exist"):
        read_volume(tmp_path / "nope.mhd")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(VolumeReadError, match="not a volume format"):
        read_volume(text)
    fake = tmp_path / "fake.mhd"
    fake.write_bytes(b"\x00\xff garbage")
    with pytest.raises(VolumeReadError, match="not a MetaImage header"):
        read_volume(fake)
    fake_nii = tmp_path / "fake.nii"
    fake_nii.write_bytes(b"not nifti at all" * 40)
    with pytest.raises(VolumeReadError, match="cannot read fake.nii"):
        read_volume(fake_nii)


def test_read_names_a_truncated_raw(tmp_path):
    path = write_volume(volume(), ROTATED, tmp_path / "v.mhd")
    raw = tmp_path / "v.raw"
    raw.write_bytes(raw.read_bytes()[:50])
    with pytest.raises(VolumeReadError, match=r"truncated \(50 bytes, 240 expected"):
        read_volume(path)


def test_read_refuses_a_2d_image(tmp_path):
    import itk

    itk.imwrite(itk.image_from_array(np.zeros((5, 6), np.uint8)), str(tmp_path / "flat.mha"))
    with pytest.raises(VolumeReadError, match="2D image"):
        read_volume(tmp_path / "flat.mha")


def test_render_files_default_and_copied(tmp_path):
    meta = volume_meta("output.mhd", volume(), ROTATED)
    assert meta["dimensions"] == [6, 5, 4] and meta["intensity_range"] == [0.0, 119.0]
    out = tmp_path / "out"
    out.mkdir()
    write_render_files(out, meta, None)
    assert json.loads((out / "config_render.json").read_text())["dataset"] == "output.mhd"
    assert json.loads((out / "config.meta").read_text())["volumes"][0]["file"] == "output.mhd"
    config = tmp_path / "config"
    config.mkdir()
    (config / "config_render.json").write_text('{"mine": true}')
    write_render_files(out, meta, config)
    assert json.loads((out / "config_render.json").read_text()) == {"mine": True}


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint32, np.int64, np.uint64])
def test_volumes_of_types_itk_does_not_wrap_crop_exactly_in_their_own_type(dtype):
    from tests.helpers import GEOMETRY

    info = np.iinfo(dtype)
    volume = np.linspace(max(info.min, -2**40), min(info.max, 2**40), 6 * 7 * 8).astype(dtype).reshape(6, 7, 8)
    start, size = (1, 2, 3), (4, 3, 2)  # (x, y, z)
    cropped, geometry = crop_volume(volume, GEOMETRY, start, size)
    assert cropped.dtype == dtype
    np.testing.assert_array_equal(cropped, volume[3:5, 2:5, 1:5])
    assert geometry == crop_volume(volume.astype(np.float64), GEOMETRY, start, size)[1]


def test_a_64_bit_volume_float64_cannot_hold_is_refused():
    with pytest.raises(InvalidCrop, match="beyond 2\\*\\*53"):
        crop_volume(np.full((2, 2, 2), 2**60, np.int64), {"spacing": [1, 1, 1], "origin": [0, 0, 0],
                                                           "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
                    (0, 0, 0), (1, 1, 1))


@pytest.mark.parametrize("dtype, read_as", [(np.int8, np.int16), (np.int64, np.float64), (np.uint64, np.float64),
                                            (np.int32, np.int32), (np.uint32, np.uint32)])
def test_pixel_types_itk_cannot_read_as_such_come_back_exactly_in_the_type_it_can(tmp_path, dtype, read_as):
    from tests.helpers import write_nifti

    info = np.iinfo(dtype)
    values = np.linspace(max(info.min, -2**52), min(info.max, 2**52), 2 * 3 * 4).astype(dtype).reshape(2, 3, 4)
    array, geometry = read_volume(write_nifti(tmp_path / "v.nii", values))
    assert array.dtype == read_as
    np.testing.assert_array_equal(array.astype(dtype), values)
    assert geometry["spacing"] == [1.0, 1.0, 2.0]


def test_a_multi_component_image_fails_naming_what_was_found(tmp_path):
    import itk

    itk.imwrite(itk.image_from_array(np.zeros((4, 5, 6, 3), np.uint8), is_vector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(VolumeReadError, match=r"^rgb.mha: 3 components per pixel \(vector\); a scalar volume"):
        read_volume(tmp_path / "rgb.mha")


def test_a_file_whose_content_is_another_format_than_its_name_fails_naming_both(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    shutil.copyfile(get_testdata_file("CT_small.dcm"), tmp_path / "ct.nii")
    with pytest.raises(VolumeReadError, match="^ct.nii: its content is DICOM, not the NIfTI its name says$"):
        read_volume(tmp_path / "ct.nii")
