"""Labels as a DICOM Segmentation (SEG, highdicom) over the CT series they were made from, so
that a PACS viewer overlays them on the CT.

One segment per label value 1..N (0 is background): its label the definition's name for it,
its coded type SNOMED CT's concept of that name where pydicom's dictionary has one (Spleen,
Liver, Kidney, …; ``Tissue`` otherwise), its category Anatomical Structure, its algorithm
the pipeline (an automatic, artificial-intelligence one). The SEG references the source
series (study, series, each instance) and takes its Frame of Reference, and each frame's
position and orientation from the source slice it lies on: the labels must be on the
series' own grid, frame ``k`` the ``k``-th file of ``source_files`` (the z order
:func:`ops.dicom.read_series` gives). Binary segments, frames without a label omitted;
uncompressed; written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ops.dicom.common import _atomic_write
from ops.errors import DicomWriteError, InvalidParameter

# The patient and study attributes of type 2 (present, possibly empty) that the SEG copies.
TYPE_2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "ReferringPhysicianName", "StudyID", "AccessionNumber")


def segment_type(name: str):
    """The SNOMED CT code of a structure's name (``"spleen"``, ``"left kidney"``…), Tissue if unknown."""
    from pydicom.sr.codedict import codes

    keyword = "".join(part.capitalize() for part in name.replace("_", " ").replace("-", " ").split())
    try:
        return getattr(codes.SCT, keyword)
    except AttributeError:
        return codes.SCT.Tissue


def write_segmentation(labels: np.ndarray, source_files: Sequence[str | Path], path: str | Path,
                       label_names: dict[str, str] | None = None, segments: int | None = None,
                       algorithm: str = "Carina", version: str = "0.1.0",
                       series_description: str = "Carina segmentation") -> Path:
    """Write ``labels`` as a DICOM SEG referencing the series of ``source_files``.

    Args:
        labels: (z, y, x) unsigned integers on the series' grid, 0 background; one frame per
            source file, in their order.
        source_files: the CT series' files in z order.
        path: the SEG file to write (its folder is created).
        label_names: label value as a string → name (the definition's ``label_names``).
        segments: how many segments to describe (values 1..segments); by default the
            largest value present.
        algorithm, version: the algorithm named in each segment and as the SEG's model.
        series_description: the SEG series' description.

    Returns: ``path``.

    Raises:
        InvalidParameter: ``labels`` is not (len(source_files), rows, columns) of unsigned
            integers, or holds a value above ``segments``.
        DicomWriteError: a source file cannot be read, or the SEG cannot be made or written.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "ub" or labels.shape[0] != len(source_files):
        raise InvalidParameter(f"labels {labels.dtype}{labels.shape}: unsigned (z, y, x) with one slice per "
                               f"source file ({len(source_files)})")
    highest = int(labels.max()) if labels.size else 0
    segments = highest if segments is None else segments
    if highest > segments or segments < 1:
        raise InvalidParameter(f"labels reach {highest}; {segments} segments are described")
    try:
        sources = [pydicom.dcmread(str(f)) for f in source_files]
    except Exception as e:  # pydicom raises many kinds on a damaged file
        raise DicomWriteError(f"cannot read the source series for the SEG: {e}") from e
    for source in sources:  # attributes DICOM requires present, maybe empty, which some writers leave out
        for keyword in TYPE_2_ATTRIBUTES:
            if keyword not in source:
                setattr(source, keyword, "")
    names = {**{str(v): f"label {v}" for v in range(1, segments + 1)}, **(label_names or {})}
    algorithm_id = hd.AlgorithmIdentificationSequence(name=algorithm, version=version,
                                                      family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(segment_number=v, segment_label=names[str(v)][:64],
                                              segmented_property_category=codes.SCT.AnatomicalStructure,
                                              segmented_property_type=segment_type(names[str(v)]),
                                              algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                              algorithm_identification=algorithm_id)
                    for v in range(1, segments + 1)]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=labels.astype(np.uint8 if segments < 256 else np.uint16),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Carina", manufacturer_model_name=algorithm,
            software_versions=version, device_serial_number="0", series_description=series_description[:64])
    except (ValueError, TypeError, AttributeError) as e:  # highdicom's refusals of the sources or the array
        raise DicomWriteError(f"cannot make a DICOM SEG over {Path(source_files[0]).parent}: {e}") from e
    path = Path(path)
    _atomic_write(path, lambda partial: seg.save_as(partial), DicomWriteError)
    return path
