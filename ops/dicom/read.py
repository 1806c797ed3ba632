"""Reading a DICOM series into one regular volume (:func:`read_series`).

It refuses what it cannot turn into one regular volume rather than guess; the choices,
each with its reason:

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

The volume and geometry follow the conventions in :mod:`ops.dicom`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ops.dicom.common import UNIT_TOLERANCE, _first_value, _float, _int, _reason, _str
from ops.errors import DicomFileError, DicomNotFound, InconsistentSeries

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

GAP_TOLERANCE_MM = 0.01  # absolute slack on a slice gap or an in-plane displacement, mm
GAP_TOLERANCE_REL = 0.01  # relative slack, as a fraction of the mean slice gap
ORIENTATION_TOLERANCE = 1e-4  # direction cosines further apart than this are another orientation
SPACING_TOLERANCE_MM = 1e-4  # PixelSpacing values further apart than this differ
DEFAULT_SLICE_SPACING_MM = 1.0  # a single slice without a positive SliceThickness

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR
_SIGNED_TYPES = (np.int8, np.int16, np.int32, np.int64)


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
