"""Reading and writing 3D volumes through ITK (MetaImage .mhd/.mha, NIfTI .nii/.nii.gz).

Conventions of every function here:

* arrays are C-ordered numpy arrays indexed **(z, y, x)**, ITK's buffer order;
* geometry is a JSON-able dict in ITK's **(x, y, z)** physical order:
  ``spacing`` (mm, 3 floats), ``origin`` (mm, the physical point of index 0, 3 floats),
  ``direction`` (the 3×3 direction cosine matrix, row-major, 9 floats).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ops.errors import VolumeReadError, VolumeWriteError

READABLE_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr")

# The format each suffix names, and ITK's readers by the format they read (others go by
# their class name).
FORMAT_OF_SUFFIX = {".mhd": "MetaImage", ".mha": "MetaImage", ".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD",
                    ".nhdr": "NRRD"}
FORMAT_OF_READER = {"MetaImageIO": "MetaImage", "NiftiImageIO": "NIfTI", "NrrdImageIO": "NRRD", "GDCMImageIO": "DICOM",
                    "PNGImageIO": "PNG", "JPEGImageIO": "JPEG", "TIFFImageIO": "TIFF", "BMPImageIO": "BMP"}
# File pixel types ITK's Python wheels cannot read into an image of their own type, each read
# as the smallest wrapped type that holds every value exactly (64-bit integers up to 2**53).
READ_AS = {"char": "SS", "long": "D", "unsigned_long": "D", "long_long": "D", "unsigned_long_long": "D"}

_MET_TYPES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def geometry_of(image: Any) -> dict[str, list[float]]:
    """Spacing, origin and direction of an ITK image as plain lists (x, y, z order)."""
    return {
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in np.asarray(image.GetDirection()).ravel()],
    }


def image_view(array: np.ndarray, geometry: dict[str, Any]) -> Any:
    """An ITK image sharing ``array``'s memory (no copy), with ``geometry`` applied.

    The caller keeps ``array`` alive as long as the image is used.
    """
    import itk

    image = itk.image_view_from_array(np.ascontiguousarray(array))
    image.SetSpacing([float(v) for v in geometry["spacing"]])
    image.SetOrigin([float(v) for v in geometry["origin"]])
    image.SetDirection(np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3))
    return image


def read_volume(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a scalar 3D volume.

    Returns:
        ``(array, geometry)``: the array is a read-only-by-convention view of ITK's buffer
        (it keeps the ITK image alive), shape (z, y, x), the file's pixel type; int8 comes
        back as int16 and 64-bit integers as float64 (:data:`READ_AS`), which ITK's wheels
        read and filter.

    Raises:
        VolumeReadError: the file is missing, not an image, its content not the format its
            name says, truncated, not 3D, or not scalar (the components found named).
    """
    import itk

    path = Path(path)
    if not path.is_file():
        raise VolumeReadError(f"input {path} does not exist or is not a file")
    if not path.name.lower().endswith(READABLE_SUFFIXES):
        raise VolumeReadError(f"input {path.name}: not a volume format ({', '.join(READABLE_SUFFIXES)})")
    if path.suffix.lower() == ".mhd":
        _check_metaimage_data(path)
    component = _check_header(path)
    try:
        read_as = READ_AS.get(component)
        image = itk.imread(str(path), getattr(itk, read_as)) if read_as else itk.imread(str(path))
    except (RuntimeError, OSError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise VolumeReadError(f"cannot read {path.name} as an image: {reason}") from e
    except itk.TemplateTypeError as e:  # a pixel type ITK's wheels lack that READ_AS does not name
        raise VolumeReadError(f"cannot read {path.name}: its pixel type ({component}) is not one ITK's Python "
                              "wheels read") from e
    return itk.array_view_from_image(image), geometry_of(image)


def _check_header(path: Path) -> str:
    """The component type (ITK's name: ``short``, ``char``, ``double``…) of a volume file whose
    content is the format its name says, with one component and three dimensions.

    Raises:
        VolumeReadError: no reader knows the file, or it is another format, or it is not a 3D scalar image.
    """
    import itk

    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise VolumeReadError(f"cannot read {path.name} as an image: no reader knows its content")
    found = FORMAT_OF_READER.get(io.GetNameOfClass(), io.GetNameOfClass())
    expected = next(form for suffix, form in FORMAT_OF_SUFFIX.items() if path.name.lower().endswith(suffix))
    if found != expected:
        raise VolumeReadError(f"{path.name}: its content is {found}, not the {expected} its name says")
    io.SetFileName(str(path))
    try:
        io.ReadImageInformation()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise VolumeReadError(f"cannot read {path.name} as an image: {reason}") from e
    components, dimensions = io.GetNumberOfComponents(), io.GetNumberOfDimensions()
    if components != 1:
        raise VolumeReadError(f"{path.name}: {components} components per pixel "
                              f"({io.GetPixelTypeAsString(io.GetPixelType())}); a scalar volume is expected")
    if dimensions != 3:
        raise VolumeReadError(f"{path.name}: a {dimensions}D image; a 3D volume is expected")
    return io.GetComponentTypeAsString(io.GetComponentType())


def write_volume(array: np.ndarray, geometry: dict[str, Any], path: str | Path) -> Path:
    """Write a (z, y, x) array with its geometry; ``.mhd`` writes a ``.raw`` beside it.

    The parent folder is created if missing.

    Raises:
        VolumeWriteError: ITK cannot write the file (bad folder, disk full, pixel type).
    """
    import itk

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        itk.imwrite(image_view(array, geometry), str(path))
    except (RuntimeError, OSError) as e:
        raise VolumeWriteError(f"cannot write {path}: {e}") from e
    return path


def _check_metaimage_data(header: Path) -> None:
    """Name a truncated or missing .raw plainly (ITK reports it as 'No such file')."""
    try:
        text = header.read_text(errors="strict")[:65536]
    except (UnicodeDecodeError, OSError) as e:
        raise VolumeReadError(f"{header.name}: not a MetaImage header") from e
    fields = dict(re.findall(r"^\s*(\w+)\s*=\s*(.*?)\s*$", text, flags=re.M))
    if "DimSize" not in fields or "ElementDataFile" not in fields:
        raise VolumeReadError(f"{header.name}: not a MetaImage header (no DimSize/ElementDataFile)")
    data_file = fields["ElementDataFile"]
    if data_file == "LOCAL" or fields.get("CompressedData", "False").lower() == "true":
        return
    if " " in data_file or data_file.upper().startswith("LIST"):
        return  # a slice list: ITK checks each file
    itemsize = _MET_TYPES.get(fields.get("ElementType", ""))
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError as e:
        raise VolumeReadError(f"{header.name}: malformed DimSize") from e
    data = header.parent / data_file
    if not data.is_file():
        raise VolumeReadError(f"{header.name}: its data file {data_file} is missing")
    if itemsize is None:
        return
    expected = itemsize * channels * int(np.prod(dims))
    actual = data.stat().st_size
    if actual < expected:
        raise VolumeReadError(f"{header.name}: data file {data_file} is truncated "
                              f"({actual} bytes, {expected} expected for {fields['DimSize']})")


def find_volume(path: str | Path) -> Path:
    """The input volume: the file itself, or the one volume file inside a folder (the seed's /input).

    Raises:
        VolumeReadError: the folder holds no volume file, or several.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = sorted(f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(READABLE_SUFFIXES))
    if not found:
        raise VolumeReadError(f"input folder {path} holds no volume ({', '.join(READABLE_SUFFIXES)})")
    if len(found) > 1:
        raise VolumeReadError(f"input folder {path} holds {len(found)} volumes; give one file")
    return found[0]


class Study(NamedTuple):
    """A study read by :func:`read_input`: the volume, its geometry, its name for output files
    (the file name without its suffixes, or the DICOM folder's name), and for a DICOM series
    its files in z order (absolute paths), which a DICOM SEG references; () otherwise."""

    array: np.ndarray
    geometry: dict[str, Any]
    name: str
    dicom_files: tuple[str, ...] = ()


def read_input(path: str | Path) -> Study:
    """A CT/MR study given as a volume file, a folder holding one, or a DICOM series folder.

    Raises:
        VolumeReadError: as :func:`read_volume`; DicomError: as :func:`ops.dicom.read_series`.
    """
    path = Path(path)
    if path.is_dir() and not any(f.name.lower().endswith(READABLE_SUFFIXES) for f in path.iterdir()):
        from ops.dicom import read_series

        series = read_series(path)
        files = tuple(str((path / name).absolute()) for name in series.metadata["files"])
        return Study(series.volume, series.geometry, path.name, files)
    volume_file = find_volume(path)
    array, geometry = read_volume(volume_file)
    name = volume_file.name
    for suffix in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Study(array, geometry, name)
