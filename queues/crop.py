"""The crop of a fastio-itk job: the seed's CROP_START_X/Y/Z and CROP_SIZE_X/Y/Z resolved
against a volume's size. The front door checks it against the input's header at submit; the
worker resolves it again against the array it read."""

from __future__ import annotations

from numbers import Integral
from typing import NamedTuple, Sequence

from queues.errors import InvalidJobRequest

DEFAULT = -1  # the seed's "not set": start 0, size to the end of the axis


class CropRegion(NamedTuple):
    """A region in ITK index order (x, y, z): first voxel and extent per axis."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]


def resolve_crop(dims_xyz: Sequence[int], start_xyz: Sequence[int], size_xyz: Sequence[int]) -> CropRegion:
    """Apply the seed's -1 defaults and check the region lies inside the image.

    Args:
        dims_xyz: the image's size in voxels, (x, y, z): an array's shape reversed.
        start_xyz: CROP_START_X/Y/Z; -1 means 0.
        size_xyz: CROP_SIZE_X/Y/Z; -1 means to the end of the axis.

    Raises:
        InvalidJobRequest: the image is not 3D, a value is not an integer or is below -1,
            the start is outside the image, the size is 0, or the region runs past the edge.
    """
    if len(dims_xyz) != 3 or len(start_xyz) != 3 or len(size_xyz) != 3:
        raise InvalidJobRequest("crop start and size need three values (x, y, z) for a 3D image")
    start: list[int] = []
    size: list[int] = []
    for axis, dim, s0, n0 in zip("XYZ", (int(d) for d in dims_xyz), start_xyz, size_xyz, strict=True):
        for label, value in ((f"CROP_START_{axis}", s0), (f"CROP_SIZE_{axis}", n0)):
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise InvalidJobRequest(f"{label}={value!r} is not an integer")
            if value < DEFAULT:
                raise InvalidJobRequest(f"{label}={value} is negative (use -1 for the default)")
        s = 0 if s0 == DEFAULT else int(s0)
        if s >= dim:
            raise InvalidJobRequest(f"CROP_START_{axis}={s} is outside the image (size {dim} along {axis})")
        n = dim - s if n0 == DEFAULT else int(n0)
        if n == 0:
            raise InvalidJobRequest(f"CROP_SIZE_{axis}=0: the crop would be empty")
        if s + n > dim:
            raise InvalidJobRequest(f"crop along {axis} runs to {s + n}, past the image's edge at {dim}")
        start.append(s)
        size.append(n)
    return CropRegion(tuple(start), tuple(size))  # type: ignore[arg-type]
