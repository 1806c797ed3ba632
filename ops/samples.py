"""Synthetic sample data (nothing is downloaded): a CT-like abdominal phantom.

``python -m ops.samples --output phantom.mhd`` writes one for the demo;
``python -m ops.samples --dicom --output folder`` writes it as a DICOM series.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

CT_GEOMETRY: dict[str, Any] = {
    "spacing": [0.8, 0.8, 2.5],
    "origin": [-64.0, -64.0, -100.0],
    "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
}


def ct_phantom(shape_zyx: tuple[int, int, int] = (64, 160, 160), seed: int = 0) -> np.ndarray:
    """An int16 (z, y, x) volume in Hounsfield units: air, a soft-tissue body, a bright
    spine and a spleen-like ellipsoid (≈ 50 HU) on the patient's left, with noise."""
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape_zyx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    volume = np.full(shape_zyx, -1000.0, dtype=np.float32)
    volume[(xx / 0.85) ** 2 + (yy / 0.65) ** 2 <= 1] = 20.0
    volume[((xx) / 0.12) ** 2 + ((yy - 0.45) / 0.12) ** 2 <= 1] = 700.0
    spleen = ((xx - 0.45) / 0.2) ** 2 + ((yy + 0.1) / 0.28) ** 2 + (zz / 0.5) ** 2 <= 1
    volume[spleen] = 50.0
    volume += np.random.default_rng(seed).normal(0, 8, shape_zyx).astype(np.float32)
    return np.clip(volume, -1024, 3071).astype(np.int16)


def ct_series(
    out_dir: str | Path,
    volume: np.ndarray | None = None,
    geometry: dict[str, Any] | None = None,
    *,
    rescale: tuple[float, float] = (1.0, -1024.0),
    unsigned: bool = False,
    bits_stored: int = 16,
    monochrome1: bool = False,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    shuffle_seed: int | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_description: str = "Carina CT phantom",
) -> list[Path]:
    """Write a (z, y, x) volume of Hounsfield units as a synthetic CT DICOM series, one file a slice.

    Slice k lies at ``origin + direction @ (0, 0, k * spacing_z)``; ImageOrientationPatient is
    the direction's x and y columns (give a right-handed direction for the normal to be its z
    column). Pixels are 16-bit with ``stored = (value - intercept) / slope``, which must be an
    integer in the stored range; MONOCHROME1 stores ``(2**bits_stored - 1) - stored`` (unsigned)
    or ``-1 - stored`` (signed), and moves the 40/400 window to match.

    Args:
        out_dir: created if needed.
        volume: integer HU values; default ``ct_phantom((8, 32, 32))``.
        geometry: default :data:`CT_GEOMETRY`.
        rescale: ``(RescaleSlope, RescaleIntercept)``.
        unsigned: PixelRepresentation 0 (uint16) instead of 1 (int16).
        bits_stored: BitsStored (HighBit one less); BitsAllocated is 16.
        monochrome1: write MONOCHROME1 (inverted) pixels.
        transfer_syntax: any syntax pydicom can encode here: explicit or implicit VR little
            endian, RLE Lossless, JPEG 2000 Lossless (pylibjpeg-openjpeg).
        shuffle_seed: when given, file names and InstanceNumbers are a random permutation of
            the slice order, so neither can be used to sort.
        series_uid, study_uid: default fresh UIDs.

    Returns:
        The files written, in z order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, generate_uid
    from pydicom.valuerep import format_number_as_ds

    def ds_text(value: float) -> str:
        value = float(value)
        return str(int(value)) if value.is_integer() else format_number_as_ds(value)

    volume = ct_phantom((8, 32, 32)) if volume is None else np.asarray(volume)
    geometry = CT_GEOMETRY if geometry is None else geometry
    slope, intercept = (float(v) for v in rescale)
    stored = (volume.astype(np.float64) - intercept) / slope
    if not np.array_equal(stored, np.round(stored)):
        raise ValueError(f"values are not integers under the rescale {rescale}")
    low, high = (0, (1 << bits_stored) - 1) if unsigned else (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1)
    if stored.min() < low or stored.max() > high:
        raise ValueError(f"stored values {stored.min()}..{stored.max()} do not fit {bits_stored} bits "
                         f"({'unsigned' if unsigned else 'signed'})")
    pivot = high if unsigned else -1
    if monochrome1:
        stored = pivot - stored
    stored = stored.astype("<u2" if unsigned else "<i2")
    center = slope * pivot + 2 * intercept - 40.0 if monochrome1 else 40.0

    spacing = np.asarray(geometry["spacing"], dtype=np.float64)
    origin = np.asarray(geometry["origin"], dtype=np.float64)
    direction = np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3)
    order = (np.random.default_rng(shuffle_seed).permutation(volume.shape[0]) if shuffle_seed is not None
             else np.arange(volume.shape[0]))
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    syntax = UID(transfer_syntax)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.shape[0]):
        position = origin + direction @ np.array([0.0, 0.0, k * spacing[2]])
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.TransferSyntaxUID = syntax if not syntax.is_compressed else pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.StudyID = "Carina^Phantom", "CARINA-PHANTOM", "1"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 1, series_description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [ds_text(v) for v in position]
        ds.ImageOrientationPatient = [ds_text(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [ds_text(spacing[1]), ds_text(spacing[0])]
        ds.SliceThickness = ds_text(spacing[2])
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = ds_text(slope), ds_text(intercept), "HU"
        ds.WindowCenter, ds.WindowWidth = ds_text(center), "400"
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        if syntax.is_compressed:
            ds.compress(syntax, generate_instance_uid=False)
        path = out_dir / f"CT{int(order[k]) + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    from ops.volume import write_volume

    parser = argparse.ArgumentParser(prog="python -m ops.samples", description=__doc__)
    parser.add_argument("--output", required=True, type=Path,
                        help="file to write (.mhd, .nii.gz), or a folder with --dicom")
    parser.add_argument("--shape", nargs=3, type=int, default=(64, 160, 160), metavar=("Z", "Y", "X"))
    parser.add_argument("--dicom", action="store_true", help="write a DICOM series (one file a slice)")
    args = parser.parse_args(argv)
    volume = ct_phantom(tuple(args.shape))
    if args.dicom:
        ct_series(args.output, volume, CT_GEOMETRY)
    else:
        write_volume(volume, CT_GEOMETRY, args.output)
    print(args.output)


if __name__ == "__main__":
    main()
