"""Writing a volume as a DICOM series derived from a template series (:func:`write_series`).

The new series keeps the template's patient, study and frame of reference, has new series
and instance UIDs, takes its geometry from the volume's (the conventions in
:mod:`ops.dicom`), and has 16-bit pixels, uncompressed (explicit VR little endian).
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ops.dicom.common import _atomic_write, _check_geometry, _first_value, _int
from ops.dicom.read import _choose_series, _cosines, _files_under, _scan, _Slice
from ops.errors import DicomFileError, DicomNotFound, DicomWriteError, InvalidParameter

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

FILE_NAME = "IMG{:04d}.dcm"

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
        geometry: ``spacing``, ``origin``, ``direction`` (x, y, z order; see :mod:`ops.dicom`).
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
    metadata = metadata or {}
    volume = _check_volume(volume)
    spacing, origin, direction = _check_geometry(geometry)
    if not isinstance(series_description, str) or not 0 < len(series_description) <= 64:
        raise InvalidParameter(f"series_description={series_description!r}: 1 to 64 characters expected")
    template, template_dirs = _template_slice(template_folder_or_files, metadata.get("series_instance_uid"))
    out_dir = Path(out_dir)
    _refuse_template_folder(out_dir, template_dirs)

    stored, slope, intercept = quantise(volume)
    window = _window(volume, template, metadata)
    base = _derived_header(template, series_description)
    _set_plane(base, spacing, direction)
    _set_pixels(base, stored, slope, intercept, window)
    paths = _write_slices(base, stored, origin, spacing, direction, out_dir)
    log.info("wrote series %s: %d slices to %s", base.SeriesInstanceUID, len(paths), out_dir)
    return paths


def _refuse_template_folder(out_dir: Path, template_dirs: list[Path]) -> None:
    resolved = out_dir.resolve()
    for folder in template_dirs:
        if resolved == folder or folder in resolved.parents:
            raise DicomWriteError(f"out_dir {out_dir} is inside the template folder {folder}; "
                                  "refusing to write into the template series")


def _window(volume: np.ndarray, template: Dataset, metadata: dict[str, Any]) -> tuple[float, float]:
    """WindowCenter/WindowWidth as :func:`write_series` describes."""
    low, high = float(volume.min()), float(volume.max())
    windows = [(metadata.get("window_center"), metadata.get("window_width"))]
    if str(template.get("PhotometricInterpretation", "")) != "MONOCHROME1":  # its window is in inverted units
        windows.append((_first_value(template, "WindowCenter"), _first_value(template, "WindowWidth")))
    return next(((float(c), float(w)) for c, w in windows
                 if c is not None and w is not None and low <= float(c) <= high),
                ((low + high) / 2, max(high - low, 1.0)))


def _derived_header(template: Dataset, series_description: str) -> Dataset:
    """A copy of the template's header without what describes its pixels, as a new derived series."""
    from pydicom.uid import generate_uid

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
    return base


def _set_plane(base: Dataset, spacing: np.ndarray, direction: np.ndarray) -> None:
    """What every slice shares of the geometry: orientation, pixel spacing, slice spacing."""
    base.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    base.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    base.SliceThickness = _ds(spacing[2])
    base.SpacingBetweenSlices = _ds(spacing[2])


def _set_pixels(base: Dataset, stored: np.ndarray, slope: float, intercept: float,
                window: tuple[float, float]) -> None:
    """The pixel format of ``stored``'s (z, y, x) int16 or uint16 slices, its rescale and window."""
    base.Rows, base.Columns = int(stored.shape[1]), int(stored.shape[2])
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 16, 15
    base.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    base.RescaleSlope, base.RescaleIntercept = _ds(slope), _ds(intercept)
    base.WindowCenter, base.WindowWidth = _ds(window[0]), _ds(window[1])


def _slice_dataset(base: Dataset, k: int, pixels: np.ndarray, position: np.ndarray, normal: np.ndarray) -> Dataset:
    """Slice ``k`` (from 0) of the series: ``base`` with its own UID, position and pixels."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(base)  # a header only: cheap next to the pixels
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position @ normal))
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = base.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def _write_slices(base: Dataset, stored: np.ndarray, origin: np.ndarray, spacing: np.ndarray,
                  direction: np.ndarray, out_dir: Path) -> list[Path]:
    """One file a z index, each written atomically; the paths in z order."""
    import pydicom

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DicomWriteError(f"cannot create out_dir {out_dir}: {e}") from e
    normal = np.cross(direction[:, 0], direction[:, 1])
    paths = []
    for k in range(stored.shape[0]):
        ds = _slice_dataset(base, k, stored[k], origin + direction @ np.array([0.0, 0.0, k * spacing[2]]), normal)
        path = out_dir / FILE_NAME.format(k + 1)
        _atomic_write(path, lambda partial: pydicom.dcmwrite(partial, ds, enforce_file_format=True), DicomWriteError)
        paths.append(path)
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



def _ds(value: float) -> str:
    """A number as a DICOM DS string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else format_number_as_ds(value)
