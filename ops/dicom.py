"""DICOM series in and out, and the seed's HDF5 + JSON file interface over them.

Conventions (those of :mod:`ops.volume`):

* volumes are C-ordered numpy arrays indexed **(z, y, x)**: one z index per slice, y down
  the rows, x along the columns;
* geometry is a JSON-able dict in ITK's **(x, y, z)** physical order: ``spacing`` (mm),
  ``origin`` (mm, the LPS patient-coordinate point of voxel (0, 0, 0), i.e. the
  ImagePositionPatient of the first slice), ``direction`` (3×3, row-major, its columns
  the directions of the x, y and z index axes). This is what ``itk.imread`` on the same
  series gives.

Reading (:func:`read_series`) refuses what it cannot turn into one regular volume rather
than guess; the choices, each with its reason:

* **Slice order** is the position along the slice normal (row cosine × column cosine of
  ImageOrientationPatient), ascending, never the file name or InstanceNumber; the z axis
  points along the normal, as ITK's GDCM reader orders it.
* **Uneven spacing is refused**: every gap between consecutive slices must be within
  ``max(GAP_TOLERANCE_MM, GAP_TOLERANCE_REL × mean gap)`` (0.01 mm or 1 %) of the mean,
  since a volume has one z spacing; a missing slice shows as a double gap and is named.
  Slices displaced in-plane from the stack by more than the same tolerance (gantry tilt)
  are refused too: no (spacing, origin, direction) describes a sheared stack.
* **A single slice** is a volume of depth 1 whose z spacing is SliceThickness, or 1.0 mm
  when that is absent or not positive.
* **MONOCHROME1 is inverted** so that a higher value is brighter, as in MONOCHROME2:
  within the stored bit range before the rescale, ``stored' = (2**BitsStored - 1) - stored``
  for unsigned pixels and ``-1 - stored`` for signed ones (each range onto itself). The
  window centre reported is moved to match. The metadata keeps the original
  interpretation and says ``inverted: true``.
* **dtype**: RescaleSlope and RescaleIntercept (per slice) are applied. When every slope and
  intercept is an integer the result is the smallest signed integer type holding the
  rescaled values (int16 for CT in HU; int8 for a 0/1 mask); otherwise float32.
* Files without the DICOM Part 10 ``DICM`` prefix and hidden files (a name starting with
  ``.``, e.g. an interrupted write's temporary file) are skipped with a warning and listed
  under ``metadata["skipped"]``, as is a DICOMDIR. A ``DICM`` file whose header cannot be
  parsed, or that has no SeriesInstanceUID, is refused: it may be a truncated slice of the
  wanted series.
* Colour, multi-frame, and float-pixel images are refused (:class:`DicomFileError`).

Writing (:func:`write_series`) makes a derived series from a template series: same patient,
study and frame of reference, new series and instance UIDs, geometry from the volume's,
16-bit pixels, uncompressed (explicit VR little endian). See its docstring for the
quantisation.

HDF5 layout written by :func:`dicom_to_hdf5` and :func:`write_hdf5`, read by
:func:`hdf5_to_dicom` and :func:`read_hdf5`::

    /volume              dataset, shape (z, y, x), the volume's dtype, contiguous, uncompressed
        @spacing         float64[3], mm, (x, y, z)
        @origin          float64[3], mm, (x, y, z), LPS
        @direction       float64[9], row-major 3×3, columns = the x, y, z axes' directions
        @axes            "zyx": the dataset's index order
        @series_instance_uid   the source series (optional; picks the template series)

The JSON beside it is ``{"geometry": {...}, "metadata": {...}}`` with :func:`read_series`'s
geometry and metadata.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ops.errors import (
    DicomFileError,
    DicomNotFound,
    DicomWriteError,
    InconsistentSeries,
    InvalidParameter,
    OpsError,
    VolumeReadError,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

GAP_TOLERANCE_MM = 0.01  # absolute slack on a slice gap or an in-plane displacement, mm
GAP_TOLERANCE_REL = 0.01  # relative slack, as a fraction of the mean slice gap
ORIENTATION_TOLERANCE = 1e-4  # direction cosines further apart than this are another orientation
SPACING_TOLERANCE_MM = 1e-4  # PixelSpacing values further apart than this differ
UNIT_TOLERANCE = 1e-3  # how far a direction cosine may be from unit length / orthogonality
DEFAULT_SLICE_SPACING_MM = 1.0  # a single slice without a positive SliceThickness
HDF5_DATASET = "volume"
FILE_NAME = "IMG{:04d}.dcm"

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR
_SIGNED_TYPES = (np.int8, np.int16, np.int32, np.int64)
# Attributes of a template slice that would be wrong for the new pixels or position.
_STALE = (
    "NumberOfFrames", "PixelPaddingValue", "PixelPaddingRangeLimit", "SmallestImagePixelValue",
    "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "WindowCenter",
    "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction", "VOILUTSequence", "ModalityLUTSequence",
    "PlanarConfiguration", "PixelAspectRatio", "IconImageSequence", "ImagesInAcquisition", "RescaleSlope",
    "RescaleIntercept", "SpacingBetweenSlices", "SliceLocation", "FloatPixelData", "DoubleFloatPixelData",
    "PixelData", "DigitalSignaturesSequence", "MACParametersSequence", "EncryptedAttributesSequence",
    "DataSetTrailingPadding", "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
)


class DicomSeries(NamedTuple):
    """One series read into a volume.

    Attributes:
        volume: (z, y, x), rescaled; int8/16/32/64 or float32 (see the module's docstring).
        geometry: ``spacing``, ``origin``, ``direction`` in ITK's (x, y, z) order.
        metadata: JSON-able: UIDs and ids, description, sizes, the rescale, the pixel
            format, the window, the slice files in z order, the other series in the folder,
            the skipped files.
    """

    volume: np.ndarray
    geometry: dict[str, Any]
    metadata: dict[str, Any]


class _Slice(NamedTuple):
    path: Path
    name: str  # relative to the folder read, for messages and metadata
    ds: Any  # a pydicom Dataset


# --------------------------------------------------------------------------- reading


def read_series(folder: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Read one DICOM series from ``folder`` (searched recursively) into a volume.

    Args:
        folder: a folder of DICOM files; other files are skipped with a warning.
        series_uid: the SeriesInstanceUID to read; ``None`` reads the series with the most
            image files (those with Rows), then the most files, then the smaller UID; the
            others are listed in ``metadata["other_series"]``.

    Returns:
        A :class:`DicomSeries`; its volume is a new array (z, y, x), slices sorted along
        the normal, dtype as described in the module's docstring. No file is modified.

    Raises:
        DicomNotFound: ``folder`` is not a folder, holds no DICOM series, or not ``series_uid``
            (the message lists the UIDs found).
        DicomFileError: a file of the series has no pixel data, is truncated or corrupt, cannot
            be decoded, lacks its position, orientation or pixel spacing, or is colour or
            multi-frame; also a ``DICM`` file whose header cannot be parsed. The file is named.
        InconsistentSeries: the slices differ in rows, columns, orientation or pixel spacing;
            two share a position; the gaps are uneven; or the stack is sheared. The files
            concerned are named.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomNotFound(f"DICOM folder {folder} does not exist or is not a folder")
    series, skipped = _scan(_files_under(folder), folder)
    if skipped:
        shown = ", ".join(f"{s['file']} ({s['reason']})" for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{folder}: skipped {len(skipped)} file(s) that are not DICOM images: {shown}{more}",
                      stacklevel=2)
    if not series:
        raise DicomNotFound(f"{folder}: no DICOM series found ({len(skipped)} file(s) skipped, none DICOM)")
    chosen = _choose_series(series, series_uid, folder)
    headers = series[chosen]

    slices = [_read_full(h) for h in headers]
    for s in slices:
        _check_slice(s)
    slices, geometry = _stack_geometry(slices)
    volume, pixel_info = _decode_volume(slices)

    first = slices[0].ds
    metadata = {
        "series_instance_uid": chosen,
        "study_instance_uid": _str(first, "StudyInstanceUID"),
        "frame_of_reference_uid": _str(first, "FrameOfReferenceUID"),
        "sop_class_uid": _str(first, "SOPClassUID"),
        "patient_id": _str(first, "PatientID"),
        "patient_name": _str(first, "PatientName"),
        "study_id": _str(first, "StudyID"),
        "accession_number": _str(first, "AccessionNumber"),
        "series_number": _int(first, "SeriesNumber"),
        "modality": _str(first, "Modality"),
        "series_description": _str(first, "SeriesDescription"),
        "study_description": _str(first, "StudyDescription"),
        "rows": int(first.Rows),
        "columns": int(first.Columns),
        "number_of_slices": len(slices),
        **pixel_info,
        "dtype": str(volume.dtype),
        "folder": str(folder),
        "files": [s.name for s in slices],
        "other_series": [
            {"series_instance_uid": uid, "number_of_files": len(files), "modality": _str(files[0].ds, "Modality"),
             "series_description": _str(files[0].ds, "SeriesDescription")}
            for uid, files in sorted(series.items(), key=lambda kv: (-len(kv[1]), kv[0])) if uid != chosen
        ],
        "skipped": skipped,
    }
    log.info("read series %s: %d slices %dx%d from %s", chosen, len(slices), first.Columns, first.Rows, folder)
    return DicomSeries(volume, geometry, metadata)


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _scan(paths: Iterable[Path], root: Path | None) -> tuple[dict[str, list[_Slice]], list[dict[str, str]]]:
    """Headers (no pixel data) of the DICOM files among ``paths``, grouped by series."""
    import pydicom

    series: dict[str, list[_Slice]] = {}
    skipped: list[dict[str, str]] = []
    for path in paths:
        name = path.relative_to(root).as_posix() if root is not None else path.name
        if any(part.startswith(".") for part in Path(name).parts):
            skipped.append({"file": name, "reason": "hidden file"})
            continue
        try:
            with path.open("rb") as f:
                head = f.read(132)
        except OSError as e:
            skipped.append({"file": name, "reason": f"unreadable: {_reason(e)}"})
            continue
        if len(head) < 132 or head[128:132] != b"DICM":
            skipped.append({"file": name, "reason": "not DICOM"})
            continue
        try:
            with path.open("rb") as f:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                ended_early = f.tell() >= path.stat().st_size
        except Exception as e:  # pydicom raises many types on malformed input
            raise DicomFileError(f"{name}: cannot parse the DICOM header ({_reason(e)}); "
                                 "the file is corrupt or truncated") from e
        # pydicom parses a cut file silently; an image object whose header runs to the end of
        # the file lost its pixels, and maybe the tail of a UID that would file it elsewhere.
        if ended_early and "Image Storage" in pydicom.uid.UID(str(ds.get("SOPClassUID", ""))).name:
            raise DicomFileError(f"{name}: no pixel data: the image's file ends before them "
                                 "(truncated, or saved without pixels)")
        if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY:
            skipped.append({"file": name, "reason": "DICOMDIR index"})
            continue
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            raise DicomFileError(f"{name}: a DICOM file without SeriesInstanceUID; its header is corrupt or truncated "
                                 "(it may be a slice of the series)")
        series.setdefault(str(uid), []).append(_Slice(path, name, ds))
    return series, skipped


def _choose_series(series: dict[str, list[_Slice]], series_uid: str | None, where: Any) -> str:
    if series_uid is None:  # image files (with Rows) first: a big series of reports or states is no volume
        return min(series, key=lambda uid: (-sum("Rows" in h.ds for h in series[uid]), -len(series[uid]), uid))
    if series_uid not in series:
        found = ", ".join(f"{uid} ({len(files)} files)" for uid, files in sorted(series.items()))
        raise DicomNotFound(f"{where}: no series {series_uid}; found {found}")
    return series_uid


def _read_full(header: _Slice) -> _Slice:
    import pydicom

    try:
        ds = pydicom.dcmread(header.path)
    except Exception as e:
        raise DicomFileError(f"{header.name}: cannot read the file ({_reason(e)}); it is corrupt or truncated") from e
    return header._replace(ds=ds)


def _check_slice(s: _Slice) -> None:
    """One file on its own: an image we support, with all the bytes it announces."""
    from pydicom.uid import UID

    ds, name = s.ds, s.name
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomFileError(f"{name}: float pixel data is not supported")
        raise DicomFileError(f"{name}: no pixel data (not an image, or the file is truncated)")
    for keyword in ("Rows", "Columns", "BitsAllocated", "ImagePositionPatient", "ImageOrientationPatient",
                    "PixelSpacing"):
        if ds.get(keyword) in (None, ""):
            raise DicomFileError(f"{name}: no {keyword}; the slice cannot be placed in a volume")
    samples = _int(ds, "SamplesPerPixel") or 1
    photometric = _str(ds, "PhotometricInterpretation")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomFileError(f"{name}: a {photometric} image with {samples} samples per pixel; "
                             "only greyscale (MONOCHROME1/2) is supported")
    frames = _int(ds, "NumberOfFrames") or 1
    if frames != 1:
        raise DicomFileError(f"{name}: {frames} frames; only single-frame slices are supported")
    if len(ds.ImageOrientationPatient) != 6 or len(ds.ImagePositionPatient) != 3 or len(ds.PixelSpacing) != 2:
        raise DicomFileError(f"{name}: ImageOrientationPatient, ImagePositionPatient or PixelSpacing has the "
                             "wrong number of values")
    row, col = _cosines(ds)
    if (abs(np.linalg.norm(row) - 1) > UNIT_TOLERANCE or abs(np.linalg.norm(col) - 1) > UNIT_TOLERANCE
            or abs(row @ col) > UNIT_TOLERANCE):
        raise DicomFileError(f"{name}: ImageOrientationPatient {list(ds.ImageOrientationPatient)} is not two "
                             "orthogonal unit vectors")
    if min(float(v) for v in ds.PixelSpacing) <= 0:
        raise DicomFileError(f"{name}: PixelSpacing {list(ds.PixelSpacing)} is not positive")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or not UID(syntax).is_encapsulated:
        expected = -(-int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8)
        actual = len(ds.PixelData)
        if actual < expected:
            raise DicomFileError(f"{name}: truncated pixel data ({actual} bytes, {expected} expected for "
                                 f"{ds.Rows}x{ds.Columns} pixels of {ds.BitsAllocated} bits)")


def _stack_geometry(slices: list[_Slice]) -> tuple[list[_Slice], dict[str, Any]]:
    """Sort the slices along their normal and derive spacing, origin and direction."""
    first = slices[0]
    row, col = _cosines(first.ds)
    pixel_spacing = [float(v) for v in first.ds.PixelSpacing]
    for s in slices[1:]:
        if (int(s.ds.Rows), int(s.ds.Columns)) != (int(first.ds.Rows), int(first.ds.Columns)):
            raise InconsistentSeries(f"{s.name} is {s.ds.Rows}x{s.ds.Columns} pixels (rows x columns) but "
                                     f"{first.name} is {first.ds.Rows}x{first.ds.Columns}")
        r, c = _cosines(s.ds)
        if max(np.abs(r - row).max(), np.abs(c - col).max()) > ORIENTATION_TOLERANCE:
            raise InconsistentSeries(f"{s.name} has ImageOrientationPatient {list(s.ds.ImageOrientationPatient)} "
                                     f"but {first.name} has {list(first.ds.ImageOrientationPatient)}")
        spacing = [float(v) for v in s.ds.PixelSpacing]
        if max(abs(a - b) for a, b in zip(spacing, pixel_spacing)) > SPACING_TOLERANCE_MM:
            raise InconsistentSeries(f"{s.name} has PixelSpacing {spacing} but {first.name} has {pixel_spacing}")
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in s.ds.ImagePositionPatient] for s in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]

    if len(slices) == 1:
        thickness = _float(slices[0].ds, "SliceThickness", 0.0)
        spacing_z = thickness if thickness > 0 else DEFAULT_SLICE_SPACING_MM
    else:
        gaps = np.diff(along)
        duplicates = np.flatnonzero(gaps < GAP_TOLERANCE_MM)
        if duplicates.size:
            i = int(duplicates[0])
            raise InconsistentSeries(f"{slices[i].name} and {slices[i + 1].name} lie at the same slice position "
                                     f"({along[i]:.4f} mm along the normal); repeated positions (phases, echoes?) "
                                     "do not stack into one volume")
        spacing_z = float(along[-1] - along[0]) / (len(slices) - 1)
        tolerance = max(GAP_TOLERANCE_MM, GAP_TOLERANCE_REL * spacing_z)
        worst = int(np.argmax(np.abs(gaps - spacing_z)))
        if abs(gaps[worst] - spacing_z) > tolerance:
            raise InconsistentSeries(
                f"uneven slice spacing: a gap of {gaps[worst]:.4f} mm between {slices[worst].name} and "
                f"{slices[worst + 1].name}, {spacing_z:.4f} mm on average (tolerance {tolerance:.4f} mm); "
                "a missing slice?")
        in_plane = positions - positions[0] - np.outer(along - along[0], normal)
        displaced = np.linalg.norm(in_plane, axis=1)
        worst = int(np.argmax(displaced))
        if displaced[worst] > tolerance:
            raise InconsistentSeries(
                f"{slices[worst].name} is displaced {displaced[worst]:.4f} mm in-plane from the stack through "
                f"{slices[0].name} (tolerance {tolerance:.4f} mm): the slices are sheared (gantry tilt?) and no "
                "spacing and direction describe them")
    direction = np.column_stack([row, col, normal])
    geometry = {
        # PixelSpacing is (row spacing = along y, column spacing = along x)
        "spacing": [pixel_spacing[1], pixel_spacing[0], float(spacing_z)],
        "origin": [float(v) for v in positions[0]],
        "direction": [float(v) for v in direction.ravel()],
    }
    return slices, geometry


def _decode_volume(slices: list[_Slice]) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode, invert MONOCHROME1, rescale; pick the dtype from the rescaled range."""
    stored: list[np.ndarray] = []
    slopes: list[float] = []
    intercepts: list[float] = []
    low, high = np.inf, -np.inf
    for s in slices:
        ds = s.ds
        try:
            raw = ds.pixel_array
        except Exception as e:
            syntax = ds.file_meta.get("TransferSyntaxUID")
            name = getattr(syntax, "name", syntax)
            raise DicomFileError(f"{s.name}: cannot decode the pixel data ({name}): {_reason(e)}") from e
        if raw.shape != (int(ds.Rows), int(ds.Columns)):
            raise DicomFileError(f"{s.name}: decoded to shape {raw.shape}, not {ds.Rows}x{ds.Columns}")
        raw = _stored_values(raw, ds)
        del ds.PixelData  # the bytes are decoded; keep the peak memory near one copy
        slope, intercept = _float(ds, "RescaleSlope", 1.0), _float(ds, "RescaleIntercept", 0.0)
        lo, hi = float(raw.min()) * slope + intercept, float(raw.max()) * slope + intercept
        low, high = min(low, lo, hi), max(high, lo, hi)
        stored.append(raw)
        slopes.append(slope)
        intercepts.append(intercept)

    integral = all(float(v).is_integer() for v in slopes + intercepts)
    if integral:
        dtype = next((t for t in _SIGNED_TYPES if np.iinfo(t).min <= low and high <= np.iinfo(t).max), np.float64)
    else:
        dtype = np.float32
    first = slices[0].ds
    volume = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=dtype)
    for k, (raw, slope, intercept) in enumerate(zip(stored, slopes, intercepts)):
        if integral:
            volume[k] = raw.astype(np.int64) * int(slope) + int(intercept)
        else:
            volume[k] = raw.astype(np.float64) * slope + intercept

    photometric = str(first.PhotometricInterpretation)
    center, width = _first_value(first, "WindowCenter"), _first_value(first, "WindowWidth")
    if photometric == "MONOCHROME1" and center is not None:
        # stored' = K - stored makes value' = slope*K + 2*intercept - value; the window follows
        center = slopes[0] * _monochrome1_pivot(first) + 2 * intercepts[0] - center
    info = {
        "rescale": {
            "applied": any(v != 1.0 for v in slopes) or any(v != 0.0 for v in intercepts),
            "slope": slopes[0],
            "intercept": intercepts[0],
            "per_slice": len(set(slopes)) > 1 or len(set(intercepts)) > 1,
            "type": _str(first, "RescaleType"),
        },
        "photometric_interpretation": photometric,
        "inverted": any(str(s.ds.PhotometricInterpretation) == "MONOCHROME1" for s in slices),
        "bits_allocated": int(first.BitsAllocated),
        "bits_stored": _int(first, "BitsStored") or int(first.BitsAllocated),
        "pixel_representation": _int(first, "PixelRepresentation") or 0,
        "transfer_syntax_uid": _str(first.file_meta, "TransferSyntaxUID"),
        "window_center": center,
        "window_width": width,
    }
    return volume, info


def _stored_values(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """The stored values proper: unused high bits cleared, MONOCHROME1 inverted."""
    allocated = int(ds.BitsAllocated)
    bits = _int(ds, "BitsStored") or allocated
    signed = (_int(ds, "PixelRepresentation") or 0) == 1
    if bits < allocated and raw.dtype.kind in "iu":
        if signed:  # sign-extend from bit `bits - 1` (pydicom does too; being explicit costs little)
            shift = raw.dtype.itemsize * 8 - bits
            raw = np.right_shift(np.left_shift(raw, shift), shift)
        else:  # overlay bits may sit above HighBit
            raw = np.bitwise_and(raw, (1 << bits) - 1)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        raw = (_monochrome1_pivot(ds) - raw.astype(np.int64)).astype(raw.dtype)
    return raw


def _monochrome1_pivot(ds: Dataset) -> int:
    """K with ``stored' = K - stored`` mapping the stored range onto itself, reversed."""
    bits = _int(ds, "BitsStored") or int(ds.BitsAllocated)
    return -1 if (_int(ds, "PixelRepresentation") or 0) == 1 else (1 << bits) - 1


def _cosines(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    return iop[:3], iop[3:]


# --------------------------------------------------------------------------- writing


def write_series(
    volume: np.ndarray,
    geometry: dict[str, Any],
    template_folder_or_files: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    series_description: str,
    metadata: dict[str, Any] | None = None,
) -> list[Path]:
    """Write a (z, y, x) volume as a new DICOM series derived from a template series.

    The base dataset is the template series' first slice along its normal, header only:
    patient, study, frame of reference, equipment and SOP class are kept; private tags and
    attributes that describe the template's pixels (padding value, LUTs, overlays' pixel
    statistics, palette, signatures) are dropped. Each output slice gets a new
    SOPInstanceUID, all share a new SeriesInstanceUID; InstanceNumber runs 1..N with z;
    ImagePositionPatient is ``origin + direction @ (0, 0, k * spacing_z)``;
    ImageOrientationPatient the direction's x and y columns; PixelSpacing
    ``(spacing_y, spacing_x)``; SliceThickness and SpacingBetweenSlices ``spacing_z``;
    ImageType ``DERIVED\\SECONDARY``. A direction whose z column is not ``x × y`` is written
    as given; reading back then sorts the slices the other way (the same physical image).

    Pixels are 16-bit, MONOCHROME2, explicit VR little endian:

    * integer-valued volumes (any dtype) spanning at most 65536 values are written exactly:
      int16 when they fit, else uint16 when they fit, else int16 with an integer
      RescaleIntercept;
    * other volumes (non-integer floats, wider ranges) are quantised linearly to int16 over
      their full range, ``value ≈ stored * RescaleSlope + RescaleIntercept``, with no
      clipping and an error of at most half a step (``(max - min) / 65534``).

    WindowCenter/WindowWidth: the first whose centre lies within the volume's value range of
    ``metadata``'s ``window_center``/``window_width`` and the template's (unless the template
    is MONOCHROME1: its window is in inverted units); else the full range.

    Args:
        volume: 3D, (z, y, x), bool, integer or float, finite.
        geometry: ``spacing``, ``origin``, ``direction`` (x, y, z order; see the module).
        template_folder_or_files: a folder (searched as :func:`read_series` does) or the
            template's files.
        out_dir: created if needed; must not be, or lie inside, a template folder. Files
            ``IMG0001.dcm``... are written there, each atomically (a retried task replaces
            its own files); other files are left alone, so give each series its own folder.
        series_description: SeriesDescription, 1 to 64 characters.
        metadata: optional; ``series_instance_uid`` picks the template series in a folder
            holding several (default: the largest), ``window_center``/``window_width`` as
            above. :func:`read_series`'s metadata fits; other keys are ignored.

    Returns:
        The paths written, in z order.

    Raises:
        InvalidParameter: ``volume``, ``geometry`` or ``series_description`` is malformed.
        DicomNotFound, DicomFileError: the template has no usable DICOM series.
        DicomWriteError: ``out_dir`` is (inside) a template folder, or a file cannot be written.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    metadata = metadata or {}
    volume = _check_volume(volume)
    spacing, origin, direction = _check_geometry(geometry)
    if not isinstance(series_description, str) or not 0 < len(series_description) <= 64:
        raise InvalidParameter(f"series_description={series_description!r}: 1 to 64 characters expected")
    template, template_dirs = _template_slice(template_folder_or_files, metadata.get("series_instance_uid"))
    out_dir = Path(out_dir)
    resolved = out_dir.resolve()
    for folder in template_dirs:
        if resolved == folder or folder in resolved.parents:
            raise DicomWriteError(f"out_dir {out_dir} is inside the template folder {folder}; "
                                  "refusing to write into the template series")

    stored, slope, intercept = quantise(volume)
    low, high = float(volume.min()), float(volume.max())
    windows = [(metadata.get("window_center"), metadata.get("window_width"))]
    if str(template.get("PhotometricInterpretation", "")) != "MONOCHROME1":  # its window is in inverted units
        windows.append((_first_value(template, "WindowCenter"), _first_value(template, "WindowWidth")))
    center, width = next(((float(c), float(w)) for c, w in windows
                          if c is not None and w is not None and low <= float(c) <= high),
                         ((low + high) / 2, max(high - low, 1.0)))

    base = copy.deepcopy(template)
    base.remove_private_tags()
    for keyword in _STALE:
        if keyword in base:
            delattr(base, keyword)
    for tag in [e.tag for e in base if e.tag.group & 0xFF00 in (0x5000, 0x6000)]:
        del base[tag]  # curves and overlays belong to the template's pixels
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    if not series_description.isascii() and not base.get("SpecificCharacterSet"):
        base.SpecificCharacterSet = "ISO_IR 192"
    image_type = base.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    base.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    base.SeriesInstanceUID = generate_uid()
    base.SeriesDescription = series_description
    base.SeriesDate = base.ContentDate = base.InstanceCreationDate = date
    base.SeriesTime = base.ContentTime = base.InstanceCreationTime = time
    base.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    base.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    base.SliceThickness = _ds(spacing[2])
    base.SpacingBetweenSlices = _ds(spacing[2])
    base.Rows, base.Columns = int(volume.shape[1]), int(volume.shape[2])
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 16, 15
    base.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    base.RescaleSlope, base.RescaleIntercept = _ds(slope), _ds(intercept)
    base.WindowCenter, base.WindowWidth = _ds(center), _ds(width)
    normal = np.cross(direction[:, 0], direction[:, 1])

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DicomWriteError(f"cannot create out_dir {out_dir}: {e}") from e
    paths = []
    for k in range(volume.shape[0]):
        ds = copy.deepcopy(base)  # a header only: cheap next to the pixels
        position = origin + direction @ np.array([0.0, 0.0, k * spacing[2]])
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.PixelData = stored[k].astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = base.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = out_dir / FILE_NAME.format(k + 1)
        partial = out_dir / f".{path.name}.partial"
        try:
            pydicom.dcmwrite(partial, ds, enforce_file_format=True)
            os.replace(partial, path)
        except Exception as e:
            partial.unlink(missing_ok=True)
            raise DicomWriteError(f"cannot write {path}: {_reason(e)}") from e
        paths.append(path)
    log.info("wrote series %s: %d slices to %s", base.SeriesInstanceUID, len(paths), out_dir)
    return paths


def quantise(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """16-bit stored values with ``volume ≈ stored * slope + intercept``.

    Returns:
        ``(stored, slope, intercept)``: stored is int16 or uint16, same shape; slope and
        intercept are exactly representable as DICOM DS strings (16 characters). Exact for
        integer-valued volumes spanning at most 65536 values; otherwise int16 over the full
        range with an error of at most half a step.
    """
    from pydicom.valuerep import format_number_as_ds

    def representable(value: float) -> float:
        return float(format_number_as_ds(float(value)))

    low, high = float(volume.min()), float(volume.max())
    integral = volume.dtype.kind in "biu" or bool(np.all(np.equal(np.round(volume), volume)))
    if integral and high - low <= 65535:
        if low >= -32768 and high <= 32767:
            return volume.astype(np.int16), 1.0, 0.0
        if low >= 0 and high <= 65535:
            return volume.astype(np.uint16), 1.0, 0.0
        intercept = int(low) + 32768
        return (volume.astype(np.int64) - intercept).astype(np.int16), 1.0, float(intercept)
    if high == low:
        intercept = representable(low)
        return np.zeros(volume.shape, dtype=np.int16), 1.0, intercept
    # 65534 steps, not 65535: a code of slack at each end absorbs the DS rounding of slope/intercept
    slope = representable((high - low) / 65534)
    intercept = representable(low + 32767 * slope)
    stored = np.rint((volume.astype(np.float64) - intercept) / slope)
    return np.clip(stored, -32768, 32767).astype(np.int16), slope, intercept


def _check_volume(volume: Any) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.size == 0:
        raise InvalidParameter(f"volume: a non-empty 3D (z, y, x) array expected, got shape {volume.shape}")
    if volume.dtype.kind not in "biuf":
        raise InvalidParameter(f"volume: dtype {volume.dtype} is not bool, integer or float")
    if volume.shape[1] > 65535 or volume.shape[2] > 65535:
        raise InvalidParameter(f"volume: {volume.shape[1]}x{volume.shape[2]} slices exceed DICOM's 65535 rows/columns")
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise InvalidParameter("volume holds NaN or infinity, which 16-bit DICOM pixels cannot represent")
    return volume


def _check_geometry(geometry: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(geometry, dict):
        raise InvalidParameter(f"geometry: a dict with spacing, origin, direction expected, "
                               f"got {type(geometry).__name__}")
    arrays = []
    for key, size in (("spacing", 3), ("origin", 3), ("direction", 9)):
        try:
            value = np.asarray(geometry[key], dtype=np.float64).ravel()
        except KeyError:
            raise InvalidParameter(f"geometry has no {key!r}") from None
        except (TypeError, ValueError) as e:
            raise InvalidParameter(f"geometry[{key!r}]={geometry[key]!r} is not numeric") from e
        if value.size != size or not np.isfinite(value).all():
            raise InvalidParameter(f"geometry[{key!r}]={geometry[key]!r}: {size} finite numbers expected")
        arrays.append(value)
    spacing, origin, direction = arrays[0], arrays[1], arrays[2].reshape(3, 3)
    if (spacing <= 0).any():
        raise InvalidParameter(f"geometry['spacing']={list(spacing)} must be positive")
    if np.abs(direction.T @ direction - np.eye(3)).max() > UNIT_TOLERANCE:
        raise InvalidParameter(f"geometry['direction']={list(arrays[2])}: its columns are not orthonormal")
    return spacing, origin, direction


def _template_slice(source: str | Path | Iterable[str | Path], series_uid: str | None) -> tuple[Dataset, list[Path]]:
    """The template series' first slice (header only) and the folders the template lives in."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        root: Path | None = Path(source)
        paths = _files_under(root)
        folders = [root.resolve()]
    else:
        root = None
        paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if not paths or missing:
            raise DicomNotFound(f"template {source!s}: no such folder or file(s) {', '.join(missing)}")
        folders = sorted({p.resolve().parent for p in paths})
    series, _ = _scan(paths, root)
    if not series:
        raise DicomNotFound(f"template {source!s}: no DICOM series")
    headers = series[_choose_series(series, series_uid, f"template {source!s}")]
    frames = _int(headers[0].ds, "NumberOfFrames") or 1
    if frames != 1:
        raise DicomFileError(f"template {headers[0].name}: {frames} frames; a single-frame series is expected")
    if not headers[0].ds.get("SOPClassUID"):
        raise DicomFileError(f"template {headers[0].name}: no SOPClassUID")

    def along_normal(h: _Slice) -> float:
        try:
            row, col = _cosines(h.ds)
            return float(np.cross(row, col) @ np.array([float(v) for v in h.ds.ImagePositionPatient]))
        except (AttributeError, TypeError, ValueError):
            return 0.0

    return min(headers, key=along_normal).ds, folders


# --------------------------------------------------------------------------- HDF5 + JSON


def dicom_to_hdf5(dicom_dir: str | Path, hdf5_path: str | Path, json_path: str | Path,
                  series_uid: str | None = None) -> DicomSeries:
    """The seed's pre-processing: a DICOM series to an HDF5 volume and a JSON sidecar.

    Writes ``hdf5_path`` (the module's layout) and ``json_path``
    (``{"geometry": ..., "metadata": ...}``), each atomically, and returns the series read.

    Raises:
        What :func:`read_series` raises; DicomWriteError: an output cannot be written.
    """
    series = read_series(dicom_dir, series_uid)
    write_hdf5(series.volume, series.geometry, hdf5_path,
               series_instance_uid=series.metadata["series_instance_uid"])
    _atomic_write(Path(json_path),
                  lambda tmp: tmp.write_text(json.dumps({"geometry": series.geometry, "metadata": series.metadata},
                                                        indent=2)))
    return series


def hdf5_to_dicom(hdf5_path: str | Path, template_dir: str | Path, out_dir: str | Path,
                  series_description: str = "Carina output", json_path: str | Path | None = None) -> list[Path]:
    """The seed's post-processing: an HDF5 volume back to DICOM, with a template series.

    The geometry comes from the dataset's attributes. ``json_path``, when given, supplies
    :func:`write_series`'s ``metadata`` (its ``"metadata"`` entry); otherwise the
    dataset's ``series_instance_uid`` attribute, if any, picks the template series.

    Raises:
        VolumeReadError: the HDF5 file is missing or not in the layout; what
            :func:`write_series` raises.
    """
    volume, geometry, attrs = read_hdf5(hdf5_path)
    if json_path is not None:
        try:
            metadata = json.loads(Path(json_path).read_text())["metadata"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise VolumeReadError(f"{json_path}: not a JSON sidecar with a 'metadata' entry ({_reason(e)})") from e
    else:
        metadata = {"series_instance_uid": attrs.get("series_instance_uid")}
    return write_series(volume, geometry, template_dir, out_dir, series_description, metadata)


def write_hdf5(volume: np.ndarray, geometry: dict[str, Any], path: str | Path,
               series_instance_uid: str | None = None) -> Path:
    """Write a (z, y, x) volume and its geometry in the module's HDF5 layout, atomically."""
    import h5py

    volume = np.asarray(volume)
    spacing, origin, direction = _check_geometry(geometry)
    if volume.ndim != 3:
        raise InvalidParameter(f"volume: a 3D (z, y, x) array expected, got shape {volume.shape}")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            data = f.create_dataset(HDF5_DATASET, data=volume)
            data.attrs["spacing"] = spacing
            data.attrs["origin"] = origin
            data.attrs["direction"] = direction.ravel()
            data.attrs["axes"] = "zyx"
            if series_instance_uid:
                data.attrs["series_instance_uid"] = str(series_instance_uid)

    path = Path(path)
    _atomic_write(path, write)
    return path


def read_hdf5(path: str | Path) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Read the module's HDF5 layout.

    Returns:
        ``(volume, geometry, attrs)``: a new (z, y, x) array of the stored dtype, the
        geometry, and the dataset's other attributes as plain Python values.

    Raises:
        VolumeReadError: missing, not HDF5, no ``volume`` dataset, not 3D, or no geometry.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise VolumeReadError(f"HDF5 input {path} does not exist or is not a file")
    try:
        with h5py.File(path, "r") as f:
            if HDF5_DATASET not in f:
                raise VolumeReadError(f"{path.name}: no {HDF5_DATASET!r} dataset (found {sorted(f.keys())})")
            data = f[HDF5_DATASET]
            if data.ndim != 3:
                raise VolumeReadError(f"{path.name}: {HDF5_DATASET!r} has shape {data.shape}; (z, y, x) expected")
            volume = data[()]
            attrs = {k: (v.decode() if isinstance(v, bytes) else v.tolist() if hasattr(v, "tolist") else v)
                     for k, v in data.attrs.items()}
    except OSError as e:
        raise VolumeReadError(f"cannot read {path.name} as HDF5: {_reason(e)}") from e
    missing = [k for k in ("spacing", "origin", "direction") if k not in attrs]
    if missing:
        raise VolumeReadError(f"{path.name}: {HDF5_DATASET!r} lacks the geometry attribute(s) {', '.join(missing)}")
    geometry = {k: [float(v) for v in np.ravel(attrs.pop(k))] for k in ("spacing", "origin", "direction")}
    return volume, geometry, attrs


# --------------------------------------------------------------------------- helpers


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file beside ``path`` so a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        os.replace(partial, path)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise DicomWriteError(f"cannot write {path}: {_reason(e)}") from e


def _ds(value: float) -> str:
    """A number as a DICOM DS string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else format_number_as_ds(value)


def _str(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else str(value)


def _int(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else int(value)


def _float(ds: Any, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    return default if value is None or value == "" else float(value)


def _first_value(ds: Any, keyword: str) -> float | None:
    """WindowCenter/WindowWidth may hold several values; the first is the default window."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0]) if len(value) else None


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1].strip() if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """The seed's file interface: ``dicom-to-hdf5`` and ``hdf5-to-dicom`` (``carina`` runs this)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="carina", description="DICOM series ⇄ HDF5 + JSON (the 3dblur seed's scripts)")
    sub = parser.add_subparsers(required=True, dest="command", metavar="COMMAND")
    p = sub.add_parser("dicom-to-hdf5", help="a DICOM series → an HDF5 volume and a JSON sidecar")
    p.add_argument("-i", "--input", required=True, type=Path, help="folder holding the DICOM series")
    p.add_argument("--hdf5", required=True, type=Path, help="HDF5 file to write")
    p.add_argument("-j", "--json", required=True, type=Path, help="JSON sidecar to write")
    p.add_argument("--series-uid", help="SeriesInstanceUID to read (default: the largest series)")
    p = sub.add_parser("hdf5-to-dicom", help="an HDF5 volume → a DICOM series shaped by a template series")
    p.add_argument("--hdf5", required=True, type=Path, help="HDF5 file written by dicom-to-hdf5 (or the same layout)")
    p.add_argument("-d", "--template", required=True, type=Path, help="folder holding the template series")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the new series")
    p.add_argument("-j", "--json", type=Path, help="JSON sidecar from dicom-to-hdf5 (window, template series)")
    p.add_argument("--description", default="Carina output", help="SeriesDescription of the new series")
    args = parser.parse_args(argv)
    try:
        if args.command == "dicom-to-hdf5":
            series = dicom_to_hdf5(args.input, args.hdf5, args.json, args.series_uid)
            print(f"{args.hdf5}: {series.volume.dtype}{list(series.volume.shape)} (z, y, x); {args.json}")
        else:
            files = hdf5_to_dicom(args.hdf5, args.template, args.output, args.description, args.json)
            print(f"{args.output}: {len(files)} slices")
    except (OpsError, ValueError) as e:
        print(f"carina: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
