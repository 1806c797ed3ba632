"""The seed's crop: ITK's ExtractImageFilter over a region given by start and size."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ops.errors import InvalidCrop
from ops.volume import geometry_of, image_view

DEFAULT = -1  # the seed's "not set": start 0, size to the end of the axis


class CropRegion(NamedTuple):
    """A region in ITK index order (x, y, z): first voxel and extent per axis."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]


def resolve_crop(shape_zyx: Sequence[int], start_xyz: Sequence[int], size_xyz: Sequence[int]) -> CropRegion:
    """Apply the seed's -1 defaults and check the region lies inside the image.

    Args:
        shape_zyx: the array's shape, (z, y, x).
        start_xyz: CROP_START_X/Y/Z; -1 means 0.
        size_xyz: CROP_SIZE_X/Y/Z; -1 means to the end of the axis.

    Raises:
        InvalidCrop: a value is not an integer, is below -1, the start is outside the image,
            the size is 0, or the region runs past the image's edge.
    """
    if len(shape_zyx) != 3 or len(start_xyz) != 3 or len(size_xyz) != 3:
        raise InvalidCrop("crop start and size need three values (x, y, z) for a 3D image")
    dims = tuple(int(d) for d in reversed(shape_zyx))
    start: list[int] = []
    size: list[int] = []
    for axis, dim, s0, n0 in zip("XYZ", dims, start_xyz, size_xyz, strict=True):
        for label, value in ((f"CROP_START_{axis}", s0), (f"CROP_SIZE_{axis}", n0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidCrop(f"{label}={value!r} is not an integer")
            if value < DEFAULT:
                raise InvalidCrop(f"{label}={value} is negative (use -1 for the default)")
        s = 0 if s0 == DEFAULT else int(s0)
        if s >= dim:
            raise InvalidCrop(f"CROP_START_{axis}={s} is outside the image (size {dim} along {axis})")
        n = dim - s if n0 == DEFAULT else int(n0)
        if n == 0:
            raise InvalidCrop(f"CROP_SIZE_{axis}=0: the crop would be empty")
        if s + n > dim:
            raise InvalidCrop(f"crop along {axis} runs to {s + n}, past the image's edge at {dim}")
        start.append(s)
        size.append(n)
    return CropRegion(tuple(start), tuple(size))  # type: ignore[arg-type]


def crop_volume(array: np.ndarray, geometry: dict[str, Any], region: CropRegion) -> tuple[np.ndarray, dict[str, Any]]:
    """Extract ``region`` from a (z, y, x) volume with ITK's ExtractImageFilter.

    Returns:
        ``(cropped, geometry)``: a new C-contiguous array (z, y, x) of the input dtype, and
        the input's spacing and direction with the origin moved to the physical point of
        the region's start index, as ITK computes it.

    ITK's Python wheels wrap the filter for uint8, int16, uint16, float32 and float64 only;
    other integer volumes go through the smallest of those that holds every value exactly
    and come back in their own dtype.

    Raises:
        InvalidCrop: a 64-bit integer volume with values that float64 cannot hold exactly.
    """
    import itk

    carrier = _itk_carrier(array)
    if carrier != array.dtype:
        cropped, out_geometry = crop_volume(array.astype(carrier), geometry, region)
        return cropped.astype(array.dtype), out_geometry
    image = image_view(array, geometry)
    extract = itk.ExtractImageFilter.New(image)
    extract.SetExtractionRegion(itk.ImageRegion[3](list(region.start), list(region.size)))
    extract.SetDirectionCollapseToSubmatrix()
    extract.Update()
    output = extract.GetOutput()
    cropped = itk.array_from_image(output)
    out_geometry = geometry_of(output)
    out_geometry["origin"] = [float(v) for v in image.TransformIndexToPhysicalPoint(list(region.start))]
    return cropped, out_geometry


ITK_WRAPPED = (np.uint8, np.int16, np.uint16, np.float32, np.float64)


def _itk_carrier(array: np.ndarray) -> np.dtype:
    """The dtype ITK's filter can take that holds every value of ``array`` exactly."""
    if array.dtype in ITK_WRAPPED:
        return array.dtype
    if array.dtype == np.int8:
        return np.dtype(np.int16)
    if array.dtype.kind in "iu" and array.dtype.itemsize <= 4:
        return np.dtype(np.float64)  # every 32-bit integer is a float64
    if array.dtype.kind in "iu" and (array.size == 0 or np.abs(array).max() <= 2**53):
        return np.dtype(np.float64)
    if array.dtype == np.float16:
        return np.dtype(np.float32)
    raise InvalidCrop(f"a {array.dtype} volume with values beyond 2**53 cannot be cropped exactly")
