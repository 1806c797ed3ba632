"""A picture as a DICOM Secondary Capture (highdicom) in the study it was made from, for the
viewers that show no SEG: the segmentation's preview (:func:`ops.preview.segmentation_preview`)
sent to the PACS as an image of its own series.

The capture takes the patient and study of a reference instance (the CT series' first file),
gets a series and instance UIDs of its own, and holds the picture as uncompressed 8-bit RGB.
It has no geometry: a Secondary Capture is not on the CT's grid, it is only looked at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ops.dicom.common import _atomic_write
from ops.errors import DicomWriteError, InvalidParameter

PREVIEW_SERIES_OFFSET = 2000  # the capture's series number: the CT's plus this (the SEG's is +1000)


def write_secondary_capture(picture: np.ndarray, reference_file: str | Path, path: str | Path,
                            series_description: str = "Carina preview") -> Path:
    """Write ``picture`` as a Secondary Capture in the study of ``reference_file``.

    Args:
        picture: (rows, columns, 3) uint8 RGB (not copied when already contiguous).
        reference_file: an instance of the source series (its patient and study are taken).
        path: the file to write (its folder is created), written atomically.
        series_description: the capture series' description (64 characters kept).

    Returns: ``path``.

    Raises:
        InvalidParameter: ``picture`` is not (rows, columns, 3) uint8.
        DicomWriteError: the reference cannot be read, or the capture cannot be made or written.
    """
    import highdicom as hd
    import pydicom

    picture = np.asarray(picture)
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise InvalidParameter(f"picture {picture.dtype}{picture.shape}: (rows, columns, 3) uint8 RGB")
    try:
        reference = pydicom.dcmread(str(reference_file), stop_before_pixels=True)
    except Exception as e:  # pydicom raises many kinds on a damaged file
        raise DicomWriteError(f"{reference_file}: cannot be read as the capture's reference: {e}") from e
    try:
        capture = hd.sc.SCImage.from_ref_dataset(
            reference, np.ascontiguousarray(picture), photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=hd.UID(),
            series_number=int(getattr(reference, "SeriesNumber", 0) or 0) + PREVIEW_SERIES_OFFSET,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Carina",
            patient_orientation=("L", "P"), series_description=series_description[:64])
    except (ValueError, TypeError, AttributeError) as e:  # highdicom's refusals of the reference
        raise DicomWriteError(f"cannot make a Secondary Capture in the study of {reference_file}: {e}") from e
    path = Path(path)
    _atomic_write(path, lambda partial: capture.save_as(partial), DicomWriteError)
    return path
