"""DICOM series in and out, and the seed's HDF5 + JSON file interface over them.

Conventions (those of :mod:`ops.volume`):

* volumes are C-ordered numpy arrays indexed **(z, y, x)**: one z index per slice, y down
  the rows, x along the columns;
* geometry is a JSON-able dict in ITK's **(x, y, z)** physical order: ``spacing`` (mm),
  ``origin`` (mm, the LPS patient-coordinate point of voxel (0, 0, 0), i.e. the
  ImagePositionPatient of the first slice), ``direction`` (3×3, row-major, its columns
  the directions of the x, y and z index axes). This is what ``itk.imread`` on the same
  series gives.

The modules:

* :mod:`ops.dicom.read`: :func:`read_series`, which refuses what it cannot turn into one
  regular volume rather than guess (uneven gaps, duplicate positions, sheared stacks,
  colour or multi-frame images); slices sorted along the normal, rescaled, MONOCHROME1
  inverted. Its docstring gives each rule and its reason.
* :mod:`ops.dicom.write`: :func:`write_series`, a derived series from a template series:
  same patient, study and frame of reference, new series and instance UIDs, geometry from
  the volume's, 16-bit pixels, uncompressed; :func:`quantise`, its 16-bit quantisation.
* :mod:`ops.dicom.hdf5`: :func:`dicom_to_hdf5`, :func:`hdf5_to_dicom`, :func:`write_hdf5`,
  :func:`read_hdf5`: the seed's HDF5 + JSON files (its docstring gives the layout).
* ``python -m ops.dicom dicom-to-hdf5 | hdf5-to-dicom``: the seed's scripts (``carina`` runs them).
"""

from ops.dicom.common import UNIT_TOLERANCE
from ops.dicom.hdf5 import HDF5_DATASET, dicom_to_hdf5, hdf5_to_dicom, read_hdf5, write_hdf5
from ops.dicom.read import (
    DEFAULT_SLICE_SPACING_MM,
    GAP_TOLERANCE_MM,
    GAP_TOLERANCE_REL,
    ORIENTATION_TOLERANCE,
    SPACING_TOLERANCE_MM,
    DicomSeries,
    read_series,
)
from ops.dicom.write import FILE_NAME, quantise, write_series

__all__ = [
    "DEFAULT_SLICE_SPACING_MM", "FILE_NAME", "GAP_TOLERANCE_MM", "GAP_TOLERANCE_REL", "HDF5_DATASET",
    "ORIENTATION_TOLERANCE", "SPACING_TOLERANCE_MM", "UNIT_TOLERANCE", "DicomSeries", "dicom_to_hdf5", "hdf5_to_dicom",
    "quantise", "read_hdf5", "read_series", "write_hdf5", "write_series",
]
