"""napari-pgsr-export: a trained model as a BioImage Model Zoo (bioimage.io) package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_BAD_INPUT, BadInput, add_phase_flags, warnings_said_plainly


def export_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-export."""
    parser = argparse.ArgumentParser(prog="napari-pgsr-export",
                                     description="Write a trained model as a BioImage Model Zoo (bioimage.io) package "
                                     "that bioimage.io tools run without napari-pgsr; napari-pgsr-predict and the "
                                     "Restore widget read it back. Needs: pip install 'napari-pgsr[bioimageio]'.")
    parser.add_argument("model", type=Path, help="trained model file (.pgsr)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the package (.zip)")
    parser.add_argument("--sample", type=Path, help="movie whose first low-exposure frames give the package's "
                        "test input: an alternating-exposure movie (its low frames) or a movie of low-exposure "
                        "frames [default: a simulated AP2 movie scaled to the model's training range]")
    add_phase_flags(parser)
    parser.add_argument("--name", help="the model's name in the zoo [default: napari-pgsr <network> restoration]")
    parser.add_argument("--author", action="append", help="an author (repeat for several)")
    parser.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights [default: CC-BY-4.0]")
    parser.add_argument("--no-check", action="store_true",
                        help="skip bioimageio.core's test of the package (runs it on its test input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


@warnings_said_plainly("napari-pgsr-export")
def export_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-export."""
    args = export_parser().parse_args(argv)
    try:
        from ..bmz import check_package, export_bioimageio, movie_low_frames
        from ..io import read_movie_or_frame
        from ..modelfile import load_model

        if args.output.suffix.lower() != ".zip":
            raise BadInput(f"the package is a zip: name it *.zip, got {args.output}")
        if args.output.exists() and not args.overwrite:
            raise BadInput(f"{args.output} exists; pass --overwrite to replace it")
        if args.output.resolve() in {args.model.resolve(), *([args.sample.resolve()] if args.sample else [])}:
            raise BadInput(f"refusing to write the package over its input {args.output}")
        model = load_model(args.model)
        frames = None
        if args.sample:
            frames = movie_low_frames(read_movie_or_frame(args.sample), 2 * model.context + 1,  # (a snapshot too)
                                      alternating=True if args.low_first is not None else None,
                                      name=args.sample.name, low_first=args.low_first)
        path = export_bioimageio(model, args.output, name=args.name, authors=args.author, license=args.license,
                                 test_frames=frames, overwrite=args.overwrite)
    except (BadInput, ValueError, FileNotFoundError, FileExistsError, ImportError) as err:  # (the extra missing)
        print(f"napari-pgsr-export: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {model.describe()}")
    if args.no_check:
        return 0
    try:
        passed, summary = check_package(path)
    except Exception as err:  # the validator's own failure (e.g. a version it does not know): the package stays
        print(f"napari-pgsr-export: bioimageio.core could not test {path.name} ({type(err).__name__}: {err}); "
              "the package was written, --no-check skips the test", file=sys.stderr)
        return 1
    print(f"bioimageio.core test of {path.name}: {'passed' if passed else 'FAILED'}")
    if not passed:
        print(summary, file=sys.stderr)
        return 1
    return 0
