"""The seed's HDF5 + JSON file interface over DICOM series.

HDF5 layout written by :func:`dicom_to_hdf5` and :func:`write_hdf5`, read by
:func:`hdf5_to_dicom` and :func:`read_hdf5`::

    /volume              dataset, shape (z, y, x), the volume's dtype, contiguous, uncompressed
        @spacing         float64[3], mm, (x, y, z)
        @origin          float64[3], mm, (x, y, z), LPS
        @direction       float64[9], row-major 3×3, columns = the x, y, z axes' directions
        @axes            "zyx": the dataset's index order
        @series_instance_uid   the source series (optional; picks the template series)

The JSON beside it is ``{"geometry": {...}, "metadata": {...}}`` with
:func:`~ops.dicom.read.read_series`'s geometry and metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ops.dicom.common import _atomic_write, _check_geometry, _reason
from ops.dicom.read import DicomSeries, read_series
from ops.dicom.write import write_series
from ops.errors import InvalidParameter, VolumeReadError, VolumeWriteError

HDF5_DATASET = "volume"


def dicom_to_hdf5(dicom_dir: str | Path, hdf5_path: str | Path, json_path: str | Path,
                  series_uid: str | None = None) -> DicomSeries:
    """The seed's pre-processing: a DICOM series to an HDF5 volume and a JSON sidecar.

    Writes ``hdf5_path`` (the module's layout) and ``json_path``
    (``{"geometry": ..., "metadata": ...}``), each atomically, and returns the series read.

    Raises:
        What :func:`read_series` raises; VolumeWriteError: an output cannot be written.
    """
    series = read_series(dicom_dir, series_uid)
    write_hdf5(series.volume, series.geometry, hdf5_path,
               series_instance_uid=series.metadata["series_instance_uid"])
    _atomic_write(Path(json_path),
                  lambda tmp: tmp.write_text(json.dumps({"geometry": series.geometry, "metadata": series.metadata},
                                                        indent=2)),
                  VolumeWriteError)
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
    """Write a (z, y, x) volume and its geometry in the module's HDF5 layout, atomically.

    Raises:
        InvalidParameter: ``geometry`` is malformed or ``volume`` is not 3D.
        VolumeWriteError: the file cannot be written (no partial file is left).
    """
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
    _atomic_write(path, write, VolumeWriteError)
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
