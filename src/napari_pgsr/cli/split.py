"""napari-pgsr-split: an alternating-exposure movie written as its low and high exposure stacks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_BAD_INPUT, BadInput, ProgressBar, add_phase_flags, terminate_cleans_up, warnings_said_plainly


def split_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-split."""
    parser = argparse.ArgumentParser(
        prog="napari-pgsr-split",
        description="Split an alternating-exposure movie into pairs, as the Exposure pairs widget does, and write "
        "the low and the high exposure frames as two movies (<name>_low.tif, <name>_high.tif; frame i of one "
        "is paired with frame i of the other), e.g. to measure spots on them beside a restoration.")
    parser.add_argument("movie", type=Path, help="alternating-exposure movie (TIFF or OME-Zarr)")
    parser.add_argument("-o", "--output", type=Path, default=Path("."), help="folder for the two movies [.]")
    add_phase_flags(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary (errors are still "
                        "printed)")
    return parser


@warnings_said_plainly("napari-pgsr-split")
def split_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-split."""
    args = split_parser().parse_args(argv)
    try:
        from ..atomic import atomic_paths
        from ..io import is_tiff_path, movie_stem, read_movie, write_movie
        from ..pairs import frame_runs, split_alternating

        if is_tiff_path(args.output) or args.output.is_file():
            raise BadInput(f"-o is the folder for the two movies, got {args.output}; they are named "
                           f"<movie>_low.tif and <movie>_high.tif")
        stem = movie_stem(args.movie)
        outputs = {kind: args.output / f"{stem}_{kind}.tif" for kind in ("low", "high")}
        taken = [str(path) for path in outputs.values() if path.exists()]
        if taken and not args.overwrite:
            raise BadInput(f"{', '.join(taken)} exist{'s' * (len(taken) == 1)}; pass --overwrite to replace")
        movie = read_movie(args.movie)
        with ProgressBar("frame", disable=args.quiet) as bar:  # every frame is read, then written: minutes

            def show(stage: str):
                return lambda done, total: bar.show(done, total, stage)

            pairs = split_alternating(movie, low_first=args.low_first, progress=show("exposures"))
            phase = f"{'low' if pairs.low_first else 'high'} exposure first, ratio {pairs.ratio:.2f}x"
            # both movies or neither: a split cut short must not leave a new low beside an old high
            with terminate_cleans_up("napari-pgsr-split"), atomic_paths(list(outputs.values())) as temps:
                for (kind, path), tmp in zip(outputs.items(), temps):
                    bar.reset()
                    # which movie frame each frame is: after a left-out frame, frame i is no longer 2i
                    frames = frame_runs(getattr(pairs, f"{kind}_index"))
                    # the movie's own description (exposures, interval...) kept after this one, as recover does
                    original = movie.metadata.get("description")
                    write_movie(tmp, getattr(pairs, kind), pixel_size_um=movie.pixel_size_um,
                                description=f"{kind}-exposure frames of {args.movie.name} ({phase}); movie frames "
                                f"(from 0): {frames}" + (f"; its description: {original}" if original else ""),
                                progress=show(path.name))
    except (BadInput, ValueError, OSError) as err:
        print(f"napari-pgsr-split: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.quiet:
        return 0
    dropped = pairs.summary()["dropped_frames"]
    print(f"{args.movie.name}: {phase}, {len(pairs)} pairs, frames left out: {dropped or 'none'}; wrote "
          f"{outputs['low']} and {outputs['high']}")
    return 0

