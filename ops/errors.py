"""The exceptions of the operators.

::

    OpsError
     ├── VolumeReadError      missing, unreadable, truncated or unsupported input image
     ├── VolumeWriteError     the output cannot be written
     ├── InvalidCrop (also ValueError)   a volume that cannot be cropped exactly (64-bit values past 2**53)
     ├── InvalidParameter (also ValueError)   an operator's argument out of range or malformed
     │    └── WorkTooLarge     a job asks for more work (windows, tiles) than its limit allows
     ├── DicomError           a DICOM series cannot be read or written (ops.dicom)
     │    ├── DicomNotFound       the folder is missing, holds no DICOM, or lacks the requested series
     │    ├── DicomFileError      one file is unusable: no pixel data, truncated, corrupt, undecodable,
     │    │                       or unsupported (colour, multi-frame, no position/orientation)
     │    ├── InconsistentSeries  the slices do not stack into one regular volume: sizes or orientations
     │    │                       differ, duplicate positions, uneven gaps, slices sheared (gantry tilt)
     │    └── DicomWriteError     the output series cannot be written (out_dir inside the template, disk)
     ├── SlideError           a whole-slide image cannot be opened, read or written (ops.wsi, ops.pyramid)
     │    ├── SlideOpenError      not a slide, a format no reader opens, or a file too damaged to open
     │    ├── SlideReadError      a level, region or tile cannot be read or decoded
     │    └── SlideWriteError     the output TIFF cannot be written
     └── InferenceError       an inference request to Triton failed (ops.triton); the message
          │                   names the server and the model
          ├── InferenceServerUnavailable  the server cannot be reached (refused, reset) or answers
          │                       502/503/504, still after the retries
          ├── ModelNotFound       the server has no such model or version, or it is not ready
          ├── ModelShapeMismatch (also ValueError)  the model's inputs or outputs do not match what
          │                       is sent or returned: name, datatype, rank, shape, batch size
          └── InferenceTimeout    no answer within the predictor's timeout_s (not retried)
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


class WorkTooLarge(InvalidParameter):
    pass


def check_work(count: int, limit: int, what: str, limit_name: str) -> int:
    """``count`` if it is at most ``limit``; else WorkTooLarge naming both (``what``: "windows
    of 96³ over …", ``limit_name``: what sets the limit)."""
    if count > limit:
        raise WorkTooLarge(f"the job asks for {count:,} {what}, more than {limit_name}={limit:,}")
    return count


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


class SlideError(OpsError):
    """Base of the whole-slide errors; the message names the file and the problem."""


class SlideOpenError(SlideError):
    pass


class SlideReadError(SlideError):
    pass


class SlideWriteError(SlideError):
    pass


class InferenceError(OpsError):
    """Base of the inference errors; the message names the server, the model and the problem."""


class InferenceServerUnavailable(InferenceError):
    pass


class ModelNotFound(InferenceError):
    pass


class ModelShapeMismatch(InferenceError, ValueError):
    pass


class InferenceTimeout(InferenceError):
    pass
