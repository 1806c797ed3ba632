"""The exceptions of the operators.

::

    OpsError
     ├── VolumeReadError      missing, unreadable, truncated or unsupported input image
     ├── VolumeWriteError     the output cannot be written
     ├── InvalidCrop (also ValueError)   a crop region outside the image, empty or malformed
     ├── InvalidParameter (also ValueError)   an operator's argument out of range or malformed
     └── DicomError           a DICOM series cannot be read or written (ops.dicom)
          ├── DicomNotFound       the folder is missing, holds no DICOM, or lacks the requested series
          ├── DicomFileError      one file is unusable: no pixel data, truncated, corrupt, undecodable,
          │                       or unsupported (colour, multi-frame, no position/orientation)
          ├── InconsistentSeries  the slices do not stack into one regular volume: sizes or orientations
          │                       differ, duplicate positions, uneven gaps, slices sheared (gantry tilt)
          └── DicomWriteError     the output series cannot be written (out_dir inside the template, disk)
"""

from __future__ import annotations


class OpsError(Exception):
    """Base of every error raised by :mod:`ops`."""


class VolumeReadError(OpsError):
    pass


class VolumeWriteError(OpsError):
    pass


class InvalidCrop(OpsError, ValueError):
    pass


class InvalidParameter(OpsError, ValueError):
    pass


class DicomError(OpsError):
    """Base of the DICOM series errors; the message names the folder or file and the problem."""


class DicomNotFound(DicomError):
    pass


class DicomFileError(DicomError):
    pass


class InconsistentSeries(DicomError):
    pass


class DicomWriteError(DicomError):
    pass
