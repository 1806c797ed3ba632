"""The nuclei model on real H&E that its training never saw, against the classical stain reference.

For each ``held-out`` image of ``tests.real_he`` (``make he-samples`` fetches them): the model's
nucleus mask over the whole image (onnxruntime, probability ≥ 0.5) and the reference
(:func:`ops.stain.nuclei_by_stain`: haematoxylin by colour deconvolution, Otsu over the tissue,
specks removed), compared over the tissue. Prints one line per image and, last, one JSON line;
with ``--overlay`` writes a PNG of a crop of the first image: the model's nuclei tinted and
outlined as the pipeline draws them, beside the reference's.

    python bench/he_real.py [--model models/nuclei_unet/1/model.onnx] [--overlay docs/nuclei-real-he.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ops.overlay import overlay_nuclei  # noqa: E402
from ops.stain import nuclei_by_stain  # noqa: E402
from tests import real_he  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "nuclei_unet" / "1" / "model.onnx"
OVERLAY_CROP = (slice(1300, 1812), slice(700, 1212))  # of the CMU region: epidermis over dermis


def probabilities(model: Path, rgb: np.ndarray, threads: int = 2) -> np.ndarray:
    """The model's (h, w) nucleus probability over a whole (h, w, 3) uint8 image (edge-padded to
    a multiple of 8, the model's stride)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -height % 8), (0, -width % 8), (0, 0)), mode="edge")
    batch = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])
    return session.run(None, {"INPUT__0": batch})[0][0, 0, :height, :width]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--overlay", type=Path, help="write a PNG of the first image's overlay here")
    args = parser.parse_args(argv)

    figures = {}
    for name, image in real_he.IMAGES.items():
        if image.role != "held-out":
            continue
        rgb = real_he.load(name)
        probability = probabilities(args.model, rgb)
        reference = nuclei_by_stain(rgb)
        result = real_he.agreement(probability >= 0.5, reference.nuclei, reference.tissue)
        figures[name] = {"nucleus_fraction": round(result.fraction, 4),
                         "reference_fraction": round(result.reference_fraction, 4),
                         "fraction_ratio": round(result.fraction_ratio, 3), "dice": round(result.dice, 3),
                         "precision": round(result.precision, 3), "recall": round(result.recall, 3)}
        print(f"{name:18s} nuclei {result.fraction:6.1%} of tissue, reference {result.reference_fraction:6.1%} "
              f"(×{result.fraction_ratio:.2f}); Dice {result.dice:.3f}, precision {result.precision:.3f}, "
              f"recall {result.recall:.3f}")
        if args.overlay and len(figures) == 1:
            crop = rgb[OVERLAY_CROP]
            model_view = overlay_nuclei(crop, probability[OVERLAY_CROP])
            reference_view = overlay_nuclei(crop, reference.nuclei[OVERLAY_CROP].astype(np.float32))
            import imagecodecs

            args.overlay.parent.mkdir(parents=True, exist_ok=True)
            gap = np.full((crop.shape[0], 8, 3), 255, np.uint8)
            args.overlay.write_bytes(imagecodecs.png_encode(np.concatenate([crop, gap, model_view, gap, reference_view], 1)))
            print(f"overlay of {name} (image | model | reference): {args.overlay}")
    print(json.dumps({"model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
                      "held_out": figures}))


if __name__ == "__main__":
    main()
