"""The seed's crop: ITK's ExtractImageFilter over a region given by start and size (the region
itself is resolved and checked by :mod:`queues.crop`, at submit and in the worker)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ops.errors import InvalidCrop
from ops.volume import geometry_of, image_view

def crop_volume(array: np.ndarray, geometry: dict[str, Any], start_xyz: Sequence[int],
                size_xyz: Sequence[int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Extract the region of ``size_xyz`` voxels from ``start_xyz`` (ITK order, inside the
    volume) from a (z, y, x) volume with ITK's ExtractImageFilter.

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
        cropped, out_geometry = crop_volume(array.astype(carrier), geometry, start_xyz, size_xyz)
        return cropped.astype(array.dtype), out_geometry
    image = image_view(array, geometry)
    extract = itk.ExtractImageFilter.New(image)
    extract.SetExtractionRegion(itk.ImageRegion[3](list(start_xyz), list(size_xyz)))
    extract.SetDirectionCollapseToSubmatrix()
    extract.Update()
    output = extract.GetOutput()
    cropped = itk.array_from_image(output)
    out_geometry = geometry_of(output)
    out_geometry["origin"] = [float(v) for v in image.TransformIndexToPhysicalPoint(list(start_xyz))]
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
