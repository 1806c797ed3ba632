"""ops.dicom on pydicom's bundled CT slices and on synthetic series of known geometry, against ITK."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from ops.dicom import (
    dicom_to_hdf5,
    hdf5_to_dicom,
    quantise,
    read_hdf5,
    read_series,
    write_hdf5,
    write_series,
)
from ops.errors import (
    DicomFileError,
    DicomNotFound,
    DicomWriteError,
    InconsistentSeries,
    InvalidParameter,
    VolumeReadError,
    VolumeWriteError,
)
from ops.samples import CT_GEOMETRY, ct_phantom, ct_series
from ops.volume import geometry_of

# Five real CT slices (16x16, 2.5 mm apart): file names and InstanceNumbers both run
# opposite to the position along the normal.
BUNDLED = Path(pydicom.data.__file__).parent / "test_files/dicomdirtests"
CT5N = BUNDLED / "98892001/CT5N"
CT5N_SORTED = ["3353", "3023", "2693", "2392", "2062"]


def _oblique() -> dict:
    """A right-handed rotation (about z by 0.3 rad, then about x by 0.2 rad): no axis is a patient axis."""
    cz, sz, cx, sx = np.cos(0.3), np.sin(0.3), np.cos(0.2), np.sin(0.2)
    rotation = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return {"spacing": [0.7, 0.9, 2.0], "origin": [-20.0, 30.0, -50.0], "direction": list(rotation.ravel())}


OBLIQUE = _oblique()
VOLUME = ct_phantom((6, 32, 32))


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_geometry(actual: dict, expected: dict, atol: float = 1e-6) -> None:
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(actual[key], expected[key], atol=atol, err_msg=key)


def itk_read(folder: Path):
    """The series as ITK reads it: GDCM sorts the files, ImageSeriesReader stacks them."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(False)
    names.SetDirectory(str(folder))
    (uid,) = names.GetSeriesUIDs()
    image = itk.imread(names.GetFileNames(uid))
    return itk.array_from_image(image), geometry_of(image)


def edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


@pytest.fixture
def series(tmp_path) -> tuple[Path, list[Path]]:
    """An oblique series with shuffled names; the paths in z order."""
    folder = tmp_path / "in"
    return folder, ct_series(folder, VOLUME, OBLIQUE, shuffle_seed=3)


# --------------------------------------------------------------------------- reading


def test_bundled_ct_is_sorted_along_the_normal_and_agrees_with_itk():
    before = digest(CT5N)
    result = read_series(CT5N)
    assert result.metadata["files"] == CT5N_SORTED
    assert result.volume.shape == (5, 16, 16) and result.volume.dtype == np.int16
    raw = np.stack([pydicom.dcmread(CT5N / name).pixel_array for name in CT5N_SORTED])
    np.testing.assert_array_equal(result.volume, raw.astype(np.int32) - 1024)
    assert_geometry(result.geometry, {"spacing": [0.488281, 0.488281, 2.5], "origin": [-72.199997, -143.0, -1.2375],
                                      "direction": np.eye(3).ravel()})
    meta = result.metadata
    assert (meta["modality"], meta["number_of_slices"], meta["rows"], meta["columns"]) == ("CT", 5, 16, 16)
    assert (meta["window_center"], meta["window_width"]) == (40.0, 400.0)
    assert meta["rescale"] == {"applied": True, "slope": 1.0, "intercept": -1024.0, "per_slice": False, "type": None}
    assert meta["other_series"] == [] and meta["skipped"] == []
    json.dumps(meta)
    itk_array, itk_geometry = itk_read(CT5N)
    np.testing.assert_array_equal(result.volume, itk_array)
    assert_geometry(result.geometry, itk_geometry)
    assert digest(CT5N) == before


def test_bundled_patient_folder_reads_its_largest_series_and_reports_the_scout():
    result = read_series(CT5N.parent)  # CT5N, and CT2N: two scout slices of another series
    assert result.metadata["files"] == [f"CT5N/{name}" for name in CT5N_SORTED]
    assert [s["number_of_files"] for s in result.metadata["other_series"]] == [2]
    with pytest.raises(InconsistentSeries, match="CT2N/.* has ImageOrientationPatient"):
        read_series(CT5N.parent, series_uid=result.metadata["other_series"][0]["series_instance_uid"])


@pytest.mark.parametrize(
    "folder, error, message",
    [
        # four slices at z = -99.48, 103.02, 104.27, 105.52 mm
        ("77654033/CT2", InconsistentSeries, r"uneven slice spacing: a gap of 202\.5000 mm between 17106 and 17136"),
        ("98892003/MR700", InconsistentSeries, "has ImageOrientationPatient"),  # a radial localiser
        ("TINY_ALPHA", DicomFileError, "IM0000.*: no pixel data"),  # a DICOMDIR test set of stubs
    ],
)
def test_bundled_series_that_are_no_volume_are_refused(folder, error, message):
    before = digest(BUNDLED / folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TINY_ALPHA's DICOMDIR and README are skipped
        with pytest.raises(error, match=message):
            read_series(BUNDLED / folder)
    assert digest(BUNDLED / folder) == before


def test_shuffled_oblique_series_comes_back_in_z_order(series):
    folder, paths = series
    assert sorted(p.name for p in paths) != [p.name for p in paths]  # the names do not give the order
    result = read_series(folder)
    np.testing.assert_array_equal(result.volume, VOLUME)
    assert result.volume.dtype == np.int16
    assert_geometry(result.geometry, OBLIQUE)
    assert result.metadata["files"] == [p.name for p in paths]
    itk_array, itk_geometry = itk_read(folder)
    np.testing.assert_array_equal(itk_array, VOLUME)
    assert_geometry(itk_geometry, OBLIQUE)


@pytest.mark.parametrize(
    "options, dtype",
    [
        ({"transfer_syntax": RLELossless}, np.int16),
        ({"transfer_syntax": JPEG2000Lossless, "unsigned": True, "bits_stored": 12}, np.int16),
        ({"transfer_syntax": RLELossless, "unsigned": True, "bits_stored": 12, "monochrome1": True}, np.int16),
        ({"monochrome1": True}, np.int16),
        ({"transfer_syntax": "1.2.840.10008.1.2", "rescale": (0.5, -1024.0)}, np.float32),
    ],
    ids=["rle", "j2k-unsigned-12bit", "rle-unsigned-monochrome1", "signed-monochrome1", "implicit-slope-0.5"],
)
def test_encodings_decode_to_the_same_values_as_itk(tmp_path, options, dtype):
    ct_series(tmp_path, VOLUME, OBLIQUE, **options)
    result = read_series(tmp_path)
    assert result.volume.dtype == dtype
    np.testing.assert_array_equal(result.volume, VOLUME)
    assert_geometry(result.geometry, OBLIQUE)
    # MONOCHROME1 comes back inverted, so higher is brighter, and its window moves with it
    assert result.metadata["inverted"] == bool(options.get("monochrome1"))
    assert result.metadata["window_center"] == pytest.approx(40.0)
    itk_array, _ = itk_read(tmp_path)
    np.testing.assert_allclose(itk_array, VOLUME)


@pytest.mark.parametrize(
    "values, rescale, unsigned, dtype",
    [
        ([0, 1], (1.0, 0.0), False, np.int8),
        ([-1024, 3071], (1.0, -1024.0), True, np.int16),
        ([0, 65535], (1.0, 0.0), True, np.int32),
        ([-1024, 1000], (2.0, -1024.0), False, np.int16),
        ([-1024.0, 1000.5], (0.5, -1024.0), False, np.float32),
    ],
)
def test_dtype_is_the_smallest_signed_type_or_float32(tmp_path, values, rescale, unsigned, dtype):
    volume = np.resize(np.array(values), (2, 4, 4))
    ct_series(tmp_path, volume, CT_GEOMETRY, rescale=rescale, unsigned=unsigned)
    result = read_series(tmp_path)
    assert result.volume.dtype == dtype
    np.testing.assert_array_equal(result.volume, volume)


def test_single_slice_takes_its_spacing_from_slice_thickness(tmp_path):
    (path,) = ct_series(tmp_path, VOLUME[:1], OBLIQUE)
    result = read_series(tmp_path)
    assert result.volume.shape == (1, 32, 32)
    assert_geometry(result.geometry, OBLIQUE)
    edit(path, lambda ds: delattr(ds, "SliceThickness"))
    assert read_series(tmp_path).geometry["spacing"][2] == 1.0


def test_two_series_the_largest_is_read_and_the_other_reported(tmp_path):
    big, small = generate_uid(), generate_uid()
    ct_series(tmp_path / "a", VOLUME, OBLIQUE, series_uid=big)
    ct_series(tmp_path / "b", VOLUME[:3], CT_GEOMETRY, series_uid=small)
    result = read_series(tmp_path)
    assert result.metadata["series_instance_uid"] == big
    assert result.volume.shape == VOLUME.shape
    assert [(s["series_instance_uid"], s["number_of_files"]) for s in result.metadata["other_series"]] == [(small, 3)]
    chosen = read_series(tmp_path, series_uid=small)
    np.testing.assert_array_equal(chosen.volume, VOLUME[:3])
    assert chosen.metadata["other_series"][0]["series_instance_uid"] == big


def test_non_dicom_files_are_skipped_with_a_warning(series):
    folder, _ = series
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    (folder / "sub" / "blank.dcm").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"\0" * 200)
    shutil.copy(BUNDLED / "DICOMDIR", folder / "DICOMDIR")
    before = digest(folder)
    with pytest.warns(UserWarning, match=r"skipped 4 file.*DICOMDIR \(DICOMDIR index\).*notes\.txt"):
        result = read_series(folder)
    np.testing.assert_array_equal(result.volume, VOLUME)
    assert {s["file"]: s["reason"] for s in result.metadata["skipped"]} == {
        ".DS_Store": "hidden file", "DICOMDIR": "DICOMDIR index", "notes.txt": "not DICOM",
        "sub/blank.dcm": "not DICOM"}
    assert digest(folder) == before


def _drop_pixels(path: Path) -> None:
    edit(path, lambda ds: delattr(ds, "PixelData"))


def _truncate_tail(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _truncate_rle(path: Path) -> None:
    # pydicom drops an encapsulated PixelData that ends before its delimiter (with a warning)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 400])


def _garble_rle(path: Path) -> None:
    from pydicom.encaps import encapsulate

    edit(path, lambda ds: setattr(ds, "PixelData", encapsulate([b"\x02" + b"\x00" * 63 + b"\x81" * 40])))


@pytest.mark.parametrize(
    "damage, syntax, message",
    [
        (_drop_pixels, None, "no pixel data"),
        (_truncate_tail, None, r"truncated pixel data \(\d+ bytes, 2048 expected"),
        (_truncate_header, None, "corrupt or truncated"),
        (_truncate_rle, RLELossless, "no pixel data .*truncated"),
        (_garble_rle, RLELossless, r"cannot decode the pixel data \(RLE Lossless\)"),
    ],
    ids=["no-pixels", "truncated-pixels", "truncated-header", "truncated-rle", "garbled-rle"],
)
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter", "ignore:The decoded RLE segment")
def test_a_damaged_slice_is_named(tmp_path, damage, syntax, message):
    paths = ct_series(tmp_path, VOLUME, OBLIQUE, **({"transfer_syntax": syntax} if syntax else {}))
    damage(paths[2])
    before = digest(tmp_path)
    with pytest.raises(DicomFileError, match=message) as raised:
        read_series(tmp_path)
    assert str(raised.value).startswith(paths[2].name)
    assert digest(tmp_path) == before


def test_missing_folder_empty_folder_and_unknown_series(tmp_path, series):
    with pytest.raises(DicomNotFound, match="does not exist"):
        read_series(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.warns(UserWarning), pytest.raises(DicomNotFound, match="no DICOM series found"):
        read_series(tmp_path / "junk")
    folder, _ = series
    uid = read_series(folder).metadata["series_instance_uid"]
    with pytest.raises(DicomNotFound, match=rf"no series 1\.2\.3; found {uid} \(6 files\)"):
        read_series(folder, series_uid="1.2.3")


def test_duplicate_positions_name_both_files(series):
    folder, paths = series
    duplicate = folder / "copy.dcm"
    shutil.copy(paths[3], duplicate)
    edit(duplicate, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    before = digest(folder)
    with pytest.raises(InconsistentSeries, match="same slice position") as raised:
        read_series(folder)
    assert paths[3].name in str(raised.value) and "copy.dcm" in str(raised.value)
    assert digest(folder) == before


def test_a_missing_slice_is_refused_as_uneven_spacing(series):
    folder, paths = series
    paths[2].unlink()
    before = digest(folder)
    with pytest.raises(InconsistentSeries, match=rf"uneven slice spacing: a gap of 4\.0000 mm between "
                                                 rf"{paths[1].name} and {paths[3].name}"):
        read_series(folder)
    assert digest(folder) == before


def test_slightly_uneven_gaps_within_tolerance_are_accepted(series):
    folder, paths = series
    # 0.005 mm along the normal: below the 0.02 mm tolerance (1 % of 2 mm)
    normal = np.asarray(OBLIQUE["direction"]).reshape(3, 3)[:, 2]

    def nudge(ds):
        ds.ImagePositionPatient = [float(v) + 0.005 * n for v, n in zip(ds.ImagePositionPatient, normal)]

    edit(paths[2], nudge)
    assert read_series(folder).geometry["spacing"][2] == pytest.approx(2.0)


def test_sheared_stack_is_refused(series):
    folder, paths = series
    row = np.asarray(OBLIQUE["direction"]).reshape(3, 3)[:, 0]
    for k, path in enumerate(paths):  # a gantry tilt: each slice moves 0.5 mm further along its rows
        edit(path, lambda ds, k=k: setattr(
            ds, "ImagePositionPatient", [float(v) + 0.5 * k * r for v, r in zip(ds.ImagePositionPatient, row)]))
    with pytest.raises(InconsistentSeries, match=rf"{paths[-1].name} is displaced 2\.5000 mm in-plane.*sheared"):
        read_series(folder)


def test_slices_of_another_size_or_orientation_are_refused(tmp_path):
    uid = generate_uid()
    ct_series(tmp_path / "a", VOLUME[:3], CT_GEOMETRY, series_uid=uid)
    odd = dict(CT_GEOMETRY, origin=[-64.0, -64.0, -92.5])
    ct_series(tmp_path / "b", VOLUME[:1, :, :30], odd, series_uid=uid)
    with pytest.raises(InconsistentSeries, match="32x30 pixels"):
        read_series(tmp_path)
    shutil.rmtree(tmp_path / "b")
    ct_series(tmp_path / "b", VOLUME[:1], dict(odd, direction=OBLIQUE["direction"]), series_uid=uid)
    with pytest.raises(InconsistentSeries, match="ImageOrientationPatient"):
        read_series(tmp_path)


# --------------------------------------------------------------------------- writing


def test_write_then_read_keeps_geometry_and_values_within_a_step(tmp_path, series):
    folder, _ = series
    source = read_series(folder)
    before = digest(folder)
    blurred = source.volume.astype(np.float32) * 0.37 + 0.125  # non-integer values: quantised with a slope
    paths = write_series(blurred, source.geometry, folder, tmp_path / "out", "blurred", source.metadata)
    assert [p.name for p in paths] == [f"IMG{k:04d}.dcm" for k in range(1, 7)]
    assert digest(folder) == before

    result = read_series(tmp_path / "out")
    step = float(pydicom.dcmread(paths[0]).RescaleSlope)
    assert step == pytest.approx((blurred.max() - blurred.min()) / 65534, rel=1e-6)
    assert result.volume.dtype == np.float32
    assert np.abs(result.volume - blurred).max() <= step / 2 + 1e-4
    assert_geometry(result.geometry, OBLIQUE)
    itk_array, itk_geometry = itk_read(tmp_path / "out")
    assert np.abs(itk_array - blurred).max() <= step / 2 + 1e-4
    assert_geometry(itk_geometry, OBLIQUE, atol=1e-3)

    meta = result.metadata
    assert meta["series_instance_uid"] != source.metadata["series_instance_uid"]
    for key in ("study_instance_uid", "patient_id", "frame_of_reference_uid", "sop_class_uid"):
        assert meta[key] == source.metadata[key]
    assert meta["series_description"] == "blurred"
    datasets = [pydicom.dcmread(p) for p in paths]
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, 7))
    assert len({ds.SOPInstanceUID for ds in datasets}) == 6
    ds = datasets[0]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]


@pytest.mark.parametrize(
    "low, high, representation, intercept",
    [(-1024, 3071, 1, 0.0), (0, 60000, 0, 0.0), (-40000, 20000, 1, -7232.0)],
)
def test_integer_volumes_are_written_exactly(tmp_path, low, high, representation, intercept):
    volume = np.linspace(low, high, 6 * 32 * 32).round().astype(np.int32).reshape(6, 32, 32)
    template = tmp_path / "template"
    ct_series(template, VOLUME, OBLIQUE)
    paths = write_series(volume, OBLIQUE, template, tmp_path / "out", "exact")
    ds = pydicom.dcmread(paths[0])
    rescale = (float(ds.RescaleSlope), float(ds.RescaleIntercept))
    assert (ds.PixelRepresentation, rescale) == (representation, (1.0, intercept))
    np.testing.assert_array_equal(read_series(tmp_path / "out").volume, volume)
    np.testing.assert_array_equal(itk_read(tmp_path / "out")[0], volume)


def test_quantise_float_uses_the_full_int16_range_without_clipping():
    volume = np.array([-3.3, 0.0, 1e-3, 1234.567], dtype=np.float64).reshape(1, 2, 2)
    stored, slope, intercept = quantise(volume)
    assert stored.dtype == np.int16 and stored.min() >= -32767 and stored.max() <= 32767
    assert np.abs(stored * slope + intercept - volume).max() <= slope / 2 * (1 + 1e-9)
    stored, slope, intercept = quantise(np.full((1, 1, 2), 2.5))
    assert (stored.tolist(), slope, intercept) == ([[[0, 0]]], 1.0, 2.5)


def test_monochrome1_compressed_template_gives_a_plain_monochrome2_series(tmp_path):
    template = tmp_path / "template"
    ct_series(template, VOLUME, OBLIQUE, transfer_syntax=RLELossless, monochrome1=True, unsigned=True, bits_stored=12)
    source = read_series(template)
    write_series(source.volume, source.geometry, template, tmp_path / "out", "copy", source.metadata)
    result = read_series(tmp_path / "out")
    np.testing.assert_array_equal(result.volume, VOLUME)
    assert (result.metadata["photometric_interpretation"], result.metadata["inverted"]) == ("MONOCHROME2", False)
    assert (result.metadata["window_center"], result.metadata["window_width"]) == (40.0, 400.0)


def test_a_left_handed_direction_reads_back_reversed_in_z(tmp_path, series):
    folder, _ = series
    flipped = np.asarray(OBLIQUE["direction"]).reshape(3, 3) * [1, 1, -1]
    write_series(VOLUME, dict(OBLIQUE, direction=list(flipped.ravel())), folder, tmp_path / "out", "flipped")
    result = read_series(tmp_path / "out")
    np.testing.assert_array_equal(result.volume, VOLUME[::-1])
    last = np.asarray(OBLIQUE["origin"]) + flipped @ [0, 0, 5 * 2.0]  # the same physical slices
    assert_geometry(result.geometry, dict(OBLIQUE, origin=list(last)))


def test_a_window_that_no_longer_fits_is_recomputed(tmp_path, series):
    folder, _ = series
    mask = (VOLUME > 0).astype(np.uint8)
    write_series(mask, OBLIQUE, folder, tmp_path / "out", "mask")
    meta = read_series(tmp_path / "out").metadata
    assert (meta["window_center"], meta["window_width"]) == (0.5, 1.0)


def test_write_refuses_the_template_folder_and_bad_arguments(tmp_path, series):
    folder, _ = series
    before = digest(folder)
    for out in (folder, folder / "derived"):
        with pytest.raises(DicomWriteError, match="inside the template folder"):
            write_series(VOLUME, OBLIQUE, folder, out, "x")
    with pytest.raises(DicomWriteError, match="inside the template folder"):
        write_series(VOLUME, OBLIQUE, sorted(folder.iterdir()), folder / "derived", "x")
    bad = [
        ((VOLUME[0], OBLIQUE, "x"), "3D"),
        ((np.full((1, 2, 2), np.nan), OBLIQUE, "x"), "NaN"),
        ((VOLUME, {"spacing": [1, 1], "origin": [0, 0, 0], "direction": np.eye(3).ravel()}, "x"), "spacing"),
        ((VOLUME, dict(OBLIQUE, direction=[1, 0, 0, 0, 2, 0, 0, 0, 1]), "x"), "orthonormal"),
        ((VOLUME, OBLIQUE, ""), "series_description"),
    ]
    for (volume, geometry, description), message in bad:
        with pytest.raises(InvalidParameter, match=message):
            write_series(volume, geometry, folder, tmp_path / "out", description)
    assert digest(folder) == before and not (folder / "derived").exists()


# --------------------------------------------------------------------------- HDF5 + JSON


def test_hdf5_and_json_round_trip(tmp_path, series):
    import h5py

    folder, _ = series
    source = dicom_to_hdf5(folder, tmp_path / "v.h5", tmp_path / "v.json")
    with h5py.File(tmp_path / "v.h5") as f:
        data = f["volume"]
        assert data.shape == (6, 32, 32) and data.dtype == np.int16
        np.testing.assert_allclose(data.attrs["direction"], OBLIQUE["direction"], atol=1e-6)
        assert data.attrs["axes"] == "zyx"
    sidecar = json.loads((tmp_path / "v.json").read_text())
    assert sidecar == json.loads(json.dumps({"geometry": source.geometry, "metadata": source.metadata}))

    volume, geometry, attrs = read_hdf5(tmp_path / "v.h5")
    np.testing.assert_array_equal(volume, VOLUME)
    assert geometry == source.geometry and attrs["series_instance_uid"] == source.metadata["series_instance_uid"]

    hdf5_to_dicom(tmp_path / "v.h5", folder, tmp_path / "out", series_description="from hdf5")
    hdf5_to_dicom(tmp_path / "v.h5", folder, tmp_path / "out2", json_path=tmp_path / "v.json")
    for out in ("out", "out2"):
        result = read_series(tmp_path / out)
        np.testing.assert_array_equal(result.volume, VOLUME)
        assert_geometry(result.geometry, OBLIQUE)
    assert read_series(tmp_path / "out").metadata["series_description"] == "from hdf5"


def test_hdf5_without_the_volume_dataset_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["other"] = np.zeros((2, 2, 2))
    with pytest.raises(VolumeReadError, match="no 'volume' dataset"):
        read_hdf5(tmp_path / "bad.h5")
    with pytest.raises(VolumeReadError, match="does not exist"):
        hdf5_to_dicom(tmp_path / "missing.h5", tmp_path, tmp_path / "out")


def test_a_failed_write_leaves_no_partial_file_and_names_the_file(tmp_path, series):
    folder, _ = series
    (tmp_path / "v.h5").mkdir()  # a folder where the file goes: the final rename fails
    with pytest.raises(VolumeWriteError, match="cannot write .*v.h5"):
        write_hdf5(VOLUME, OBLIQUE, tmp_path / "v.h5")
    (tmp_path / "v.json").mkdir()
    with pytest.raises(VolumeWriteError, match="cannot write .*v.json"):
        dicom_to_hdf5(folder, tmp_path / "w.h5", tmp_path / "v.json")
    (tmp_path / "out" / "IMG0003.dcm").mkdir(parents=True)
    with pytest.raises(DicomWriteError, match="cannot write .*IMG0003.dcm"):
        write_series(VOLUME, OBLIQUE, folder, tmp_path / "out", "x")
    assert not list(tmp_path.rglob("*.partial"))
