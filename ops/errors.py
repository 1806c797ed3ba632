"""The exceptions of the operators.

::

    OpsError
     ├── VolumeReadError      missing, unreadable, truncated or unsupported input image
     ├── VolumeWriteError     the output cannot be written
     └── InvalidCrop (also ValueError)   a crop region outside the image, empty or malformed
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
