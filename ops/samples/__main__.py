"""``python -m ops.samples``: sample data for the demo and for trying Carina out.

``python -m ops.samples --output phantom.mhd`` writes a CT phantom;
``python -m ops.samples --dicom --output folder`` writes it as a DICOM series;
``python -m ops.samples --slide 30000 40000 --output slide.tif`` writes a whole-slide image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ops.samples.ct import CT_GEOMETRY, ct_phantom, ct_series, spleen_phantom
from ops.samples.he import he_slide


def main(argv: list[str] | None = None) -> None:
    from ops.volume import write_volume

    parser = argparse.ArgumentParser(prog="python -m ops.samples", description=__doc__)
    parser.add_argument("--output", required=True, type=Path,
                        help="file to write (.mhd, .nii.gz), or a folder with --dicom")
    parser.add_argument("--shape", nargs=3, type=int, default=(64, 160, 160), metavar=("Z", "Y", "X"))
    parser.add_argument("--dicom", action="store_true", help="write a DICOM series (one file a slice)")
    parser.add_argument("--spleen", action="store_true", help="the randomised abdomen of spleen_phantom")
    parser.add_argument("--slide", nargs=2, type=int, metavar=("HEIGHT", "WIDTH"),
                        help="write an H&E whole-slide image (pyramidal TIFF) of this size instead")
    parser.add_argument("--seed", type=int, default=0, help="the slide's seed (--slide)")
    args = parser.parse_args(argv)
    if args.slide:
        print(he_slide(args.output, tuple(args.slide), seed=args.seed))
        return
    if args.spleen:
        volume, _ = spleen_phantom(tuple(args.shape), tuple(CT_GEOMETRY["spacing"]), seed=2026)
    else:
        volume = ct_phantom(tuple(args.shape))
    if args.dicom:
        ct_series(args.output, volume, CT_GEOMETRY)
    else:
        write_volume(volume, CT_GEOMETRY, args.output)
    print(args.output)


if __name__ == "__main__":
    main()
