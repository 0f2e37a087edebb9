"""napari-pgsr-recover: the complete frames of a damaged movie file, copied to a new one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_BAD_INPUT, BadInput, ProgressBar, terminate_cleans_up, warnings_said_plainly


def recover_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-recover."""
    parser = argparse.ArgumentParser(
        prog="napari-pgsr-recover",
        description="Copy the complete frames of a TIFF movie that was cut short (an acquisition that stopped "
        "before its file was closed, or a copy or download that stopped part way) to a new movie file. The "
        "damaged file is only read.")
    parser.add_argument("movie", type=Path, help="the damaged TIFF movie")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="the new movie (.tif: ImageJ TIFF, .ome.tif: OME-TIFF)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary (errors are still "
                        "printed)")
    return parser


@warnings_said_plainly("napari-pgsr-recover")
def recover_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-recover."""
    args = recover_parser().parse_args(argv)
    try:
        from ..recover import recover_movie

        if args.output.exists() and args.output.resolve() == args.movie.resolve():
            raise BadInput(f"refusing to write over the damaged file {args.movie}; choose another output name")
        if args.output.exists() and not args.overwrite:
            raise BadInput(f"{args.output} exists; pass --overwrite to replace it")
        with terminate_cleans_up("napari-pgsr-recover"), ProgressBar("frame", disable=args.quiet) as bar:
            # (a movie of thousands of frames takes minutes)
            found = recover_movie(args.movie, args.output, overwrite=args.overwrite, progress=bar.show)
    except FileNotFoundError as err:
        if Path(err.filename or "").name.endswith(args.output.name) and err.filename != str(args.movie):
            # (the output's temporary file, in a place no file can be made: /proc, say)
            print(f"napari-pgsr-recover: error: could not write {args.output}: {err.strerror}", file=sys.stderr)
            return 1
        print(f"napari-pgsr-recover: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (BadInput, ValueError, FileExistsError) as err:
        print(f"napari-pgsr-recover: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a full disk, no permission: the damaged file is only read (a traceback before)
        print(f"napari-pgsr-recover: error: could not write {args.output}: {err.strerror or err}", file=sys.stderr)
        return 1
    if args.quiet:
        return 0
    frames, height, width = found.shape
    size = "pixel size unknown" if found.pixel_size_um is None else f"{found.pixel_size_um * 1e3:g} nm pixels"
    print(f"wrote {args.output}: {frames} complete frames of {height} x {width} {found.frames.dtype} "
          f"({size}) from {args.movie}, read as {found.how}")
    return 0
