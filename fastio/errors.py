"""The exceptions of the FastIO data plane.

::

    FastIOError
     ├── AllocationNotFound (also KeyError)   a name not published in a job
     ├── NotLocal                             memory held by another host
     ├── AlreadyPublished                     a name is write-once
     ├── AllocationStateError                 misuse: no type set, freed, released, too small
     ├── SegmentError                         the shared-memory segment itself is gone or broken
     └── InvalidArgument (also ValueError)    a malformed configuration, name or size
"""

from __future__ import annotations


class FastIOError(Exception):
    """Base of every error raised by :mod:`fastio`."""


class AllocationNotFound(KeyError, FastIOError):
    """``get`` asked for a name that the job never published (or has freed)."""

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(f"job {job_id!r} has no FastIO publication named {name!r}")
        self.job_id = job_id
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class NotLocal(FastIOError):
    """The memory behind a publication lives on another host; run the stage there."""

    def __init__(self, job_id: str, name: str, holder: str, here: str) -> None:
        super().__init__(
            f"job {job_id!r}: publication {name!r} is held by host {holder!r}, not {here!r}; "
            "route the stage to the holder's queue"
        )
        self.job_id = job_id
        self.name = name
        self.holder = holder
        self.here = here


class AlreadyPublished(FastIOError):
    """A name was published twice in one job; readers must never see it change."""


class AllocationStateError(FastIOError):
    """An allocation was used in a state that does not allow it."""


class SegmentError(FastIOError):
    """A shared-memory segment is missing, truncated or not ours."""


class InvalidArgument(FastIOError, ValueError):
    """A configuration value, a publication name or a size that FastIO cannot take."""
