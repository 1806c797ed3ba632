"""``python -m ops.dicom``: the seed's file interface (``carina dicom-to-hdf5`` / ``hdf5-to-dicom`` run this)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ops.dicom.hdf5 import dicom_to_hdf5, hdf5_to_dicom
from ops.errors import OpsError


def main(argv: list[str] | None = None) -> int:
    """Run one script with ``argv`` (default: the command line); 2 on an error, which is printed, not raised."""
    parser = argparse.ArgumentParser(prog="carina", description="DICOM series ⇄ HDF5 + JSON (the 3dblur seed's scripts)")
    sub = parser.add_subparsers(required=True, dest="command", metavar="COMMAND")
    p = sub.add_parser("dicom-to-hdf5", help="a DICOM series → an HDF5 volume and a JSON sidecar")
    p.add_argument("-i", "--input", required=True, type=Path, help="folder holding the DICOM series")
    p.add_argument("--hdf5", required=True, type=Path, help="HDF5 file to write")
    p.add_argument("-j", "--json", required=True, type=Path, help="JSON sidecar to write")
    p.add_argument("--series-uid", help="SeriesInstanceUID to read (default: the largest series)")
    p = sub.add_parser("hdf5-to-dicom", help="an HDF5 volume → a DICOM series shaped by a template series")
    p.add_argument("--hdf5", required=True, type=Path, help="HDF5 file written by dicom-to-hdf5 (or the same layout)")
    p.add_argument("-d", "--template", required=True, type=Path, help="folder holding the template series")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the new series")
    p.add_argument("-j", "--json", type=Path, help="JSON sidecar from dicom-to-hdf5 (window, template series)")
    p.add_argument("--description", default="Carina output", help="SeriesDescription of the new series")
    args = parser.parse_args(argv)
    try:
        if args.command == "dicom-to-hdf5":
            series = dicom_to_hdf5(args.input, args.hdf5, args.json, args.series_uid)
            print(f"{args.hdf5}: {series.volume.dtype}{list(series.volume.shape)} (z, y, x); {args.json}")
        else:
            files = hdf5_to_dicom(args.hdf5, args.template, args.output, args.description, args.json)
            print(f"{args.output}: {len(files)} slices")
    except (OpsError, ValueError) as e:
        print(f"carina: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
