"""Stains of H&E: colour deconvolution, and nuclei told by their haematoxylin without a model.

Colour deconvolution (Ruifrok and Johnston, 2001) unmixes each pixel's optical density into the
concentrations of haematoxylin, eosin and DAB, using the stains' standard absorption vectors.
Nuclei hold the most haematoxylin; thresholding it over the tissue is the classical nucleus
segmentation (HistomicsTK's first step, before watershed splitting of touching nuclei). It is
what the shipped ``nuclei_unet`` is held to on real H&E, and what its training tiles of real
tissue are labelled by.

Images are (y, x, 3) uint8 RGB; masks (y, x) bool; concentrations (y, x) float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ops.errors import InvalidParameter
from ops.tissue import otsu_threshold, remove_small_objects

# Unit optical-density vectors of haematoxylin, eosin and DAB, one per row, in (R, G, B):
# Ruifrok and Johnston's, as scikit-image's rgb2hed uses them.
STAIN_OD_RGB = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]])
RGB_TO_HED = np.linalg.inv(STAIN_OD_RGB)
DARKEST_TRANSMISSION = 1e-6  # black's transmission, so that its optical density is finite
TISSUE_MEAN_LEVEL = 215  # a pixel whose channels' mean is this bright or brighter is glass
# Otsu's histogram spans these percentiles of the tissue's haematoxylin: a few pixels of ink,
# pen or folds far above the rest would otherwise stretch it until nuclei and stroma share a bin.
HAEMATOXYLIN_PERCENTILES = (0.5, 99.5)
DEFAULT_MIN_NUCLEUS_PIXELS = 20  # smaller specks of haematoxylin are debris or noise


class StainNuclei(NamedTuple):
    """The classical segmentation of one image: nuclei and tissue, (h, w) bool each, and the
    haematoxylin threshold that split them."""

    nuclei: np.ndarray
    tissue: np.ndarray
    threshold: float


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidParameter(f"expected a (y, x, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``-ln(max(I / 255, 1e-6))`` of each channel of a (y, x, 3) uint8 image: a new (h, w, 3)
    float64 array, 0 for white, about 13.8 for black.

    Raises:
        InvalidParameter: not a (y, x, 3) uint8 image.
    """
    _check_rgb(rgb)
    return -np.log(np.maximum(rgb / 255.0, DARKEST_TRANSMISSION))


def stain_concentrations(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB of each pixel: a new (h, w, 3) float64 array, at least 0.

    The optical density unmixed by RGB_TO_HED (the inverse of STAIN_OD_RGB), negative
    concentrations set to 0. This is scikit-image's ``rgb2hed`` times ``-ln(1e-6)`` (by which
    it divides the density).

    Raises:
        InvalidParameter: not a (y, x, 3) uint8 image.
    """
    return np.maximum(optical_density(rgb) @ RGB_TO_HED, 0.0)


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin concentration of each pixel of a (y, x, 3) uint8 image: a new (h, w)
    float64 array (channel 0 of stain_concentrations)."""
    return stain_concentrations(rgb)[..., 0]


def rgb_from_concentrations(concentrations: np.ndarray) -> np.ndarray:
    """The (h, w, 3) uint8 image of (h, w, 3) haematoxylin, eosin and DAB concentrations, rounded
    and clipped to 0..255 (a new array). It inverts ``optical_density(rgb) @ RGB_TO_HED`` to
    within rounding; stain_concentrations loses what it sets to 0."""
    density = np.asarray(concentrations, dtype=np.float64) @ STAIN_OD_RGB
    return np.clip(np.rint(255.0 * np.exp(-density)), 0, 255).astype(np.uint8)


def tissue_by_brightness(rgb: np.ndarray) -> np.ndarray:
    """A new (h, w) bool mask of the pixels darker than glass (channel mean < TISSUE_MEAN_LEVEL)."""
    _check_rgb(rgb)
    return rgb.mean(axis=2) < TISSUE_MEAN_LEVEL


def nuclei_by_stain(rgb: np.ndarray, min_nucleus_pixels: int = DEFAULT_MIN_NUCLEUS_PIXELS) -> StainNuclei:
    """Nuclei as the tissue pixels whose haematoxylin is at or above Otsu's threshold.

    The threshold is Otsu's over the tissue's haematoxylin, its histogram spanning
    HAEMATOXYLIN_PERCENTILES of it; 8-connected objects of fewer than ``min_nucleus_pixels``
    pixels are dropped. Touching nuclei stay one object: this is a pixel mask, not instances.
    An image with no tissue has no nuclei (threshold +inf).

    Raises:
        InvalidParameter: not a (y, x, 3) uint8 image, or min_nucleus_pixels below 1.
    """
    if min_nucleus_pixels < 1:
        raise InvalidParameter(f"min_nucleus_pixels {min_nucleus_pixels} must be >= 1")
    tissue = tissue_by_brightness(rgb)
    if not tissue.any():
        return StainNuclei(np.zeros(tissue.shape, bool), tissue, float("inf"))
    stain = haematoxylin(rgb)
    values = stain[tissue]
    low, high = np.percentile(values, HAEMATOXYLIN_PERCENTILES)
    threshold = otsu_threshold(values, value_range=(float(low), float(high)))
    nuclei = remove_small_objects((stain >= threshold) & tissue, min_nucleus_pixels)
    return StainNuclei(nuclei, tissue, threshold)
