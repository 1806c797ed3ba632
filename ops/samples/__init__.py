"""Synthetic sample data, generated (nothing is downloaded): CT phantoms and DICOM series
(:mod:`ops.samples.ct`), H&E tissue and whole slides (:mod:`ops.samples.he`). ``python -m
ops.samples`` writes them to files."""

from ops.samples.ct import CT_GEOMETRY, ORGAN_LABELS, abdomen_phantom, ct_phantom, ct_series, spleen_phantom
from ops.samples.he import SLIDE_MPP, he_slide, render_he

__all__ = ["CT_GEOMETRY", "ORGAN_LABELS", "SLIDE_MPP", "abdomen_phantom", "ct_phantom", "ct_series", "he_slide",
           "render_he", "spleen_phantom"]
