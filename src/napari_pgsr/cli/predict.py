"""napari-pgsr-predict: restore a movie with a trained model, streamed to a TIFF or an OME-Zarr store."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .common import EXIT_BAD_INPUT, BadInput, ProgressBar, add_phase_flags, warnings_said_plainly


def predict_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-predict."""
    parser = argparse.ArgumentParser(prog="napari-pgsr-predict",
                                     description="Restore a movie with a trained model into a TIFF or an OME-Zarr "
                                     "store (.zarr: resumable, and shared by the processes of `torchrun ... -m "
                                     "napari_pgsr.cli predict`).")
    parser.add_argument("model", type=Path, help="trained model file (.pgsr, or a bioimage.io .zip that "
                        "napari-pgsr-export wrote)")
    parser.add_argument("movie", type=Path, help="movie to restore (TIFF or OME-Zarr)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="restored movie (.tif, .ome.tif, or .zarr for OME-Zarr)")
    parser.add_argument("--frames", choices=("all", "low"), default="all",
                        help="every frame, or the low-exposure frame of each exposure pair of an alternating "
                        "movie (as Exposure pairs splits it: restored frame i pairs with high frame i; a low frame "
                        "without its high one, at the end or where the alternation breaks, is left out) [all]")
    add_phase_flags(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps [auto]")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile size in pixels [default: whole frames when they fit in memory, else 512]")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 on GPUs, fp32 on CPUs; bf16 on a CPU with AMX is several times faster")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap [default: from receptive field]")
    parser.add_argument("--batch", type=int, default=None,
                        help="tiles (or small whole frames) per forward pass [default: 1 on CPUs, 4 on GPUs]")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model: 1.1-1.6x faster after some seconds of compiling (needs a "
                             "C++ compiler on CPUs; falls back with a warning)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--resume", action="store_true", help="continue a partial .zarr output where it stopped")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary (errors and "
                        "warnings are still printed)")
    return parser


def _process_group() -> tuple[int, int, object]:
    """(rank, world size, barrier) under torchrun (gloo: only barriers cross processes), else (0, 1, no-op)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), dist.barrier


@warnings_said_plainly("napari-pgsr-predict")
def predict_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-predict."""
    args = predict_parser().parse_args(argv)
    interrupted: list[int] = []

    def on_interrupt(signum, frame) -> None:  # first Ctrl-C: stop after the current frames, output kept valid
        interrupted.append(signum)
        signal.signal(signum, previous[signum])  # a second one stops at once

    # SIGTERM too (a batch system's time limit, `kill`): it left a half-written hidden temporary file
    previous = {signum: signal.signal(signum, on_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        from ..inference import Restorer, restore_to_file
        from ..io import is_tiff_path, read_movie_or_frame
        from ..modelfile import load_model
        from ..zarr_movie import is_zarr_path

        for flag in ("batch", "tile", "overlap"):
            value = getattr(args, flag)
            if value is not None and value < (0 if flag == "overlap" else 1):
                raise BadInput(f"--{flag} {value}: expected at least {0 if flag == 'overlap' else 1}")
        if args.low_first is not None and args.frames == "all":  # (ignored before: every frame was restored)
            raise BadInput("--low-first / --high-first say how the low frames pair: give them with --frames low")
        if not (is_tiff_path(args.output) or is_zarr_path(args.output)):
            raise BadInput(f"{args.output}: expected a name ending in .tif, .tiff, .ome.tif or .zarr (OME-Zarr)")
        if args.output.is_dir() and not is_zarr_path(args.output):  # found now, not after hours of restoring
            raise BadInput(f"{args.output} is a folder; give a file name for the restored movie")
        if args.resume and not is_zarr_path(args.output):
            raise BadInput("--resume continues OME-Zarr outputs (names ending .zarr); TIFFs are written whole")
        if args.output.exists() and not (args.overwrite or args.resume):
            raise BadInput(f"{args.output} exists; pass --overwrite to replace it"
                           + (" or --resume to continue it" if is_zarr_path(args.output) else ""))
        rank, world, barrier = _process_group()
        model = load_model(args.model)
        movie = read_movie_or_frame(args.movie)  # (a single low-exposure snapshot too)
        restorer = Restorer(model, args.tile, args.overlap, args.batch, args.device, args.precision,
                            compile=args.compile)
        progress = [0, 1]  # frames done, of
        with ProgressBar("frame", disable=args.quiet or rank > 0) as bar:
            def show(done: int, total: int) -> None:
                progress[:] = done, total
                bar.show(done, total)

            restored = restore_to_file(restorer, movie, args.output, frames=args.frames, low_first=args.low_first,
                                       overwrite=args.overwrite, protected=(args.model,), progress=show,
                                       should_stop=lambda: bool(interrupted), resume=args.resume, rank=rank,
                                       world=world, barrier=barrier)
    except InterruptedError as err:
        print(f"napari-pgsr-predict: {err}", file=sys.stderr)
        return 128 + (interrupted[0] if interrupted else signal.SIGINT)
    except KeyboardInterrupt:  # a second Ctrl-C: at once (it printed a traceback)
        kept = ("the frames written so far are kept; --resume continues it" if args.output.suffix.lower() == ".zarr"
                else "it was not written")
        print(f"napari-pgsr-predict: stopped at once; {args.output}: {kept}", file=sys.stderr)
        return 128 + signal.SIGINT
    except (BadInput, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"napari-pgsr-predict: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a full disk, a lost network share: the input is never touched
        from ..streaming import MovieReadError

        if isinstance(err, MovieReadError):  # the input's fault, not the output's
            print(f"napari-pgsr-predict: error: {err}", file=sys.stderr)
        else:
            print(f"napari-pgsr-predict: error: could not write {args.output}: {err.strerror or err}",
                  file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if interrupted and progress[0] < progress[1]:  # (a Ctrl-C during the last frames: the output is whole)
        print(f"stopped after {restored} frames; {args.output} is valid, --resume continues it", file=sys.stderr)
        return 128 + interrupted[0]
    if not args.quiet and rank == 0:
        # under torchrun, `restored` counts this process's share only
        count = f"{restored} frames" if world == 1 else f"the frames ({restored} in this process of {world})"
        if args.resume:  # (the earlier runs' frames are in the store too)
            count = f"{restored} more frames" if world == 1 else f"the remaining {count.removeprefix('the ')}"
        print(f"restored {count} of {args.movie} with {args.model.name} -> {args.output}")
    return 0
