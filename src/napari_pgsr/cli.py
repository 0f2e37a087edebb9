"""Console scripts: napari-pgsr-train, napari-pgsr-predict and napari-pgsr-measure (also
`python -m napari_pgsr.cli train|predict|measure`, which is what torchrun launches for several GPUs or nodes)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from dataclasses import fields
from pathlib import Path


EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Raised for user errors: reported as one line, exit code 2."""


def _field_type(annotation) -> type:
    """int / float / str / bool from a dataclass annotation such as 'int | None'."""
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if name in text:
            return kind
    return str


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default None: only flags given override the config file)."""
    from .training.config import TrainConfig

    group = parser.add_argument_group("training settings (defaults: the config file, then these)")
    for spec in fields(TrainConfig):
        if spec.name in ("low_first", "recipe"):
            continue  # --low-first / --high-first below; --recipe NAME fills in a recipe's settings
        flag = "--" + spec.name.replace("_", "-")
        kind = _field_type(spec.type)
        help_text = f"{spec.metadata.get('help', '')} [default: {spec.default}]"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, type=kind, default=None, help=help_text, metavar=spec.name.upper())
    phase = group.add_mutually_exclusive_group()
    phase.add_argument("--low-first", dest="low_first", action="store_const", const=True, default=None,
                       help="alternating movies start with the low exposure [default: detect]")
    phase.add_argument("--high-first", dest="low_first", action="store_const", const=False,
                       help="alternating movies start with the high exposure")


def train_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-train."""
    from .training.recipes import RECIPES

    parser = argparse.ArgumentParser(
        prog="napari-pgsr-train", description="Train a restoration model on low/high exposure pairs. Under "
        "`torchrun --nproc_per_node N -m napari_pgsr.cli train ...` it trains with DistributedDataParallel.")
    parser.add_argument("movies", nargs="*", type=Path, help="alternating-exposure movies (TIFF)")
    parser.add_argument("--low", type=Path, nargs="+", default=[], help="low-exposure stacks (with --high)")
    parser.add_argument("--high", type=Path, nargs="+", default=[], help="matching high-exposure stacks")
    parser.add_argument("--val", type=Path, nargs="+", default=[], help="alternating movies kept for validation")
    parser.add_argument("--out", type=Path, required=True, help="model file to write (.pgsr)")
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="start from settings measured to work (README: recipes); the config file and "
                             "the flags given override them")
    parser.add_argument("--config", type=Path, help="YAML or JSON training config")
    parser.add_argument("--write-config", type=Path, help="also save the effective config here")
    parser.add_argument("--resume", type=Path, help="continue exactly from this checkpoint (.pgsr)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(parser)
    return parser


def build_config(args: argparse.Namespace):
    """The checkpoint's config when resuming, else the recipe's, then the config file's, overridden by the
    flags given. `--minutes` without `--steps` trains for that time alone."""
    from .modelfile import load_model
    from .training.config import TrainConfig, as_trained
    from .training.recipes import recipe_values

    values, from_recipe = {}, set()
    if args.resume is not None:
        if args.recipe:
            raise BadInput(f"--recipe starts a new run; --resume {args.resume} continues with the settings "
                           "stored in the checkpoint")
        values = as_trained(load_model(args.resume).metadata.get("config", {}))
    elif args.recipe:
        values = recipe_values(args.recipe)
        from_recipe = set(values)
    if args.config:
        file_values = TrainConfig.read_values(args.config)  # only what the file sets
        values.update(file_values)
        from_recipe -= set(file_values)
    for spec in fields(TrainConfig):
        given = getattr(args, spec.name, None)
        if given is not None:
            values[spec.name] = given
            from_recipe.discard(spec.name)
    if args.minutes is not None and args.steps is None:
        values["steps"] = None
    try:
        return TrainConfig.from_dict(values)
    except ValueError as error:
        # e.g. --model unet beside a ProGAN recipe: name the recipe's settings that the error is about
        clashing = sorted(name for name in from_recipe if re.search(rf"\b{name}\b", str(error)))
        if clashing:
            raise BadInput(f"{error}. {', '.join(clashing)} came from --recipe {args.recipe}: set them too, or "
                           "leave out --recipe") from error
        raise


def load_training_pairs(args: argparse.Namespace, low_first):
    """Pairs from alternating movies, or from --low/--high stacks; validation pairs from --val."""
    from .io import read_movie
    from .pairs import pair_stacks, split_alternating

    if not args.movies and not args.low:
        raise BadInput("give alternating-exposure movies, or --low and --high stacks")
    if len(args.low) != len(args.high):
        raise BadInput(f"--low has {len(args.low)} files but --high has {len(args.high)}; give them in pairs")
    pairs = [split_alternating(read_movie(p), low_first=low_first) for p in args.movies]
    for low, high in zip(args.low, args.high):
        pairs.append(pair_stacks(read_movie(low).data, read_movie(high).data, name=f"{low.name}+{high.name}"))
    validation = [split_alternating(read_movie(p), low_first=low_first) for p in args.val]
    return pairs, validation, [str(p) for p in [*args.movies, *args.low, *args.high, *args.val]]


def _progress_bar(quiet: bool):
    """A tqdm bar fed by training events (rank 0 only)."""
    from tqdm import tqdm

    from .training.events import EventKind

    if quiet or int(os.environ.get("RANK", "0")) != 0:
        return lambda event: None, lambda: None
    bars = []

    def update(event) -> None:
        if event.kind is EventKind.STARTED:  # the bar appears once the data have been checked
            bars.append(tqdm(total=event.total_steps, initial=event.step, unit="step", dynamic_ncols=True))
        bar = bars[0]
        if event.kind is EventKind.STARTED:
            bar.write(f"training on {event.values['device']} (x{event.values['world_size']}): "
                      f"{event.values['train_pairs']} training pairs, {event.values['validation_pairs']} "
                      "validation pairs" + (f", resumed from {event.values['resumed_from']}"
                                            if event.values["resumed_from"] else ""))
        elif event.kind is EventKind.STEP:
            bar.update(event.step - bar.n)
            bar.set_postfix(loss=f"{event.values['loss']:.4f}", patches_s=f"{event.values['patches_per_s']:.0f}")
        elif event.kind is EventKind.VALIDATION:
            bar.write(f"step {event.step}: validation loss {event.values['loss']:.4f}, PSNR "
                      f"{event.values['psnr']:.2f} dB, SSIM {event.values['ssim']:.3f}")
        elif event.kind is EventKind.FINISHED:
            bar.write(f"{event.values['reason']} at step {event.step}: model written to {event.values['path']}")

    return update, lambda: [bar.close() for bar in bars]


def train_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-train."""
    args = train_parser().parse_args(argv)
    try:
        config = build_config(args)
        if args.recipe and int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
            from .training.recipes import RECIPE_SCOPES

            print(f"recipe {args.recipe}: {RECIPE_SCOPES[args.recipe]}", file=sys.stderr)
        resuming_in_place = args.resume is not None and args.resume.resolve() == args.out.resolve()
        if args.out.exists() and not args.overwrite and not resuming_in_place:
            raise BadInput(f"{args.out} exists; pass --overwrite to replace it, or --resume {args.out}")
        pairs, validation, files = load_training_pairs(args, config.low_first)
        from .training.events import EventKind
        from .training.loop import train

        show, close = _progress_bar(args.quiet)

        def update(event) -> None:
            if event.kind is EventKind.STARTED and args.write_config:  # the data passed their checks
                config.save(args.write_config)
            show(event)

        interrupted = []

        def on_interrupt(signum, frame) -> None:  # first Ctrl-C: stop after this step and save
            interrupted.append(signum)
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops at once
            print("\nstopping after this step; the model will be saved (Ctrl-C again to abort)", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            result = train(config, pairs, args.out, validation=validation, resume=args.resume, progress=update,
                           should_stop=lambda: bool(interrupted), files=files)
            if result.note and int(os.environ.get("RANK", "0")) == 0:  # (also with --quiet)
                print(f"napari-pgsr-train: warning: {result.note}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, previous)
            close()
            import torch.distributed as dist

            if dist.is_initialized():  # launched by torchrun
                dist.destroy_process_group()
    except (BadInput, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"napari-pgsr-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def predict_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-predict."""
    parser = argparse.ArgumentParser(prog="napari-pgsr-predict",
                                     description="Restore a movie with a trained model into a TIFF or an OME-Zarr "
                                     "store (.zarr: resumable, and shared by the processes of `torchrun ... -m "
                                     "napari_pgsr.cli predict`).")
    parser.add_argument("model", type=Path, help="trained model file (.pgsr, or a bioimage.io .zip that "
                        "napari-pgsr-export wrote)")
    parser.add_argument("movie", type=Path, help="movie to restore (TIFF)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="restored movie (.tif, .ome.tif, or .zarr for OME-Zarr)")
    parser.add_argument("--frames", choices=("all", "low"), default="all",
                        help="every frame, or only the low-exposure frames of an alternating movie")
    phase = parser.add_mutually_exclusive_group()
    phase.add_argument("--low-first", dest="low_first", action="store_const", const=True, default=None)
    phase.add_argument("--high-first", dest="low_first", action="store_const", const=False)
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _process_group() -> tuple[int, int, object]:
    """(rank, world size, barrier) under torchrun (gloo: only barriers cross processes), else (0, 1, no-op)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), dist.barrier


def predict_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-predict."""
    args = predict_parser().parse_args(argv)
    interrupted: list[int] = []

    def on_interrupt(signum, frame) -> None:  # first Ctrl-C: stop after the current frames, output kept valid
        interrupted.append(signum)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        from tqdm import tqdm

        from .inference import Restorer, restore_to_file
        from .io import read_movie
        from .modelfile import load_model
        from .zarr_movie import is_zarr_path

        if args.resume and not is_zarr_path(args.output):
            raise BadInput("--resume continues OME-Zarr outputs (names ending .zarr); TIFFs are written whole")
        if args.output.exists() and not (args.overwrite or args.resume):
            raise BadInput(f"{args.output} exists; pass --overwrite to replace it"
                           + (" or --resume to continue it" if is_zarr_path(args.output) else ""))
        rank, world, barrier = _process_group()
        model = load_model(args.model)
        movie = read_movie(args.movie)
        restorer = Restorer(model, args.tile, args.overlap, args.batch, args.device, args.precision,
                            compile=args.compile)
        with tqdm(unit="frame", disable=args.quiet or rank > 0) as bar:
            def show(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            restored = restore_to_file(restorer, movie, args.output, frames=args.frames, low_first=args.low_first,
                                       overwrite=args.overwrite, protected=(args.model,), progress=show,
                                       should_stop=lambda: bool(interrupted), resume=args.resume, rank=rank,
                                       world=world, barrier=barrier)
    except InterruptedError as err:
        print(f"napari-pgsr-predict: {err}", file=sys.stderr)
        return 130
    except (BadInput, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"napari-pgsr-predict: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a full disk, a lost network share: the input is never touched
        print(f"napari-pgsr-predict: error: could not write {args.output}: {err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print(f"stopped after {restored} frames; {args.output} is valid, --resume continues it", file=sys.stderr)
        return 130
    if not args.quiet and rank == 0:
        print(f"restored {restored} frames of {args.movie} with {args.model.name} -> {args.output}")
    return 0


def measure_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-measure."""
    parser = argparse.ArgumentParser(
        prog="napari-pgsr-measure",
        description="Fit hand-labelled spots on one or more images (raw low, raw high, restored) and write one "
                    "table: position, sigma, FWHM, amplitude, background, SNR, SBR, localisation precision, flags.")
    parser.add_argument("images", type=Path, nargs="+", help="images or movies of one shape (TIFF, OME-TIFF, "
                                                             "ImageJ TIFF or OME-Zarr)")
    parser.add_argument("--points", type=Path, required=True,
                        help="labels CSV: napari points (axis-0, axis-1, ...), 'y,x' or 'frame,y,x' columns")
    parser.add_argument("-o", "--output", type=Path, required=True, help="table CSV; the summary goes beside it")
    parser.add_argument("--pixel-size-nm", type=float, default=None, help="[default: from the first image's file]")
    parser.add_argument("--frame", type=int, default=None, help="movie frame for 2-D points (or the points' frame "
                                                                "for 2-D images)")
    parser.add_argument("--radius", type=int, default=3, help="fit window half-width in pixels [3]")
    parser.add_argument("--baseline-adu", type=float, default=0.0, help="camera offset in grey levels [0]")
    parser.add_argument("--electrons-per-adu", type=float, default=1.0,
                        help="photoelectrons per grey level after EM gain [1: image in photons]")
    parser.add_argument("--excess-noise", type=float, default=2.0, help="2 for an EMCCD, 1 for sCMOS/CCD [2]")
    parser.add_argument("--plots", action="store_true", help="also write FWHM / SNR histograms and average spot "
                                                             "profiles as <output>_plots.png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def measure_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-measure."""
    args = measure_parser().parse_args(argv)
    try:
        from tqdm import tqdm

        from .analysis import CameraCalibration, iter_measure_across, read_points_csv
        from .generators import run_to_end
        from .analysis.points_csv import write_table_atomically
        from .io import read_image

        summary_path = args.output.with_name(f"{args.output.stem}_summary.csv")
        plots_path = args.output.with_name(f"{args.output.stem}_plots.png")
        inputs = {p.resolve() for p in [*args.images, args.points]}
        for path in (args.output, summary_path) + ((plots_path,) if args.plots else ()):
            if path.resolve() in inputs:
                raise BadInput(f"{path} is one of the inputs; choose another output name")
            if path.exists() and not args.overwrite:
                raise BadInput(f"{path} exists; pass --overwrite to replace it")
        images, pixel_sizes_um = {}, []
        for path in args.images:
            name = path.name if path.stem in {p.stem for p in args.images if p != path} else path.stem
            images[name], pixel_size_um = read_image(path)
            pixel_sizes_um.append(pixel_size_um)
        pixel_size = args.pixel_size_nm or (pixel_sizes_um[0] or 0) * 1000 or None
        camera = CameraCalibration(args.baseline_adu, args.electrons_per_adu, args.excess_noise)
        measuring = iter_measure_across(images, read_points_csv(args.points), pixel_size_nm=pixel_size,
                                        radius=args.radius, camera=camera, frame=args.frame)
        with tqdm(unit="fit", disable=args.quiet) as bar:  # thousands of labels take minutes
            def show(step: tuple[int, int, str]) -> None:
                done, total, name = step
                bar.total = total
                bar.set_description(name, refresh=False)
                bar.update(done - bar.n)

            report = run_to_end(measuring, show)
        write_table_atomically(report.table, args.output)
        write_table_atomically(report.summary, summary_path)
        if args.plots:
            from .analysis.plots import plot_report
            from .io import atomic_path

            with atomic_path(plots_path) as tmp:
                plot_report(report).savefig(tmp, dpi=120, format="png")
    except (BadInput, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"napari-pgsr-measure: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if report.note:
        print(f"note: {report.note}")
    if pixel_size is None:
        print("note: no pixel size in the file or on the command line: nm columns are empty (--pixel-size-nm)")
    columns = ["image", "spots", "fitted", "median_fwhm_nm", "median_snr", "median_sbr", "suggested_f1"]
    print(report.summary.reindex(columns=columns).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {args.output} ({len(report.table)} rows), {summary_path}" + (f", {plots_path}" if args.plots else ""))
    return 0


def export_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-export."""
    parser = argparse.ArgumentParser(prog="napari-pgsr-export",
                                     description="Write a trained model as a BioImage Model Zoo (bioimage.io) package "
                                     "that bioimage.io tools run without napari-pgsr; napari-pgsr-predict and the "
                                     "Restore widget read it back. Needs: pip install 'napari-pgsr[bioimageio]'.")
    parser.add_argument("model", type=Path, help="trained model file (.pgsr)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the package (.zip)")
    parser.add_argument("--sample", type=Path, help="alternating-exposure movie whose first low-exposure frames "
                        "give the package's test input [default: a simulated AP2 movie]")
    phase = parser.add_mutually_exclusive_group()
    phase.add_argument("--low-first", dest="low_first", action="store_const", const=True, default=None)
    phase.add_argument("--high-first", dest="low_first", action="store_const", const=False)
    parser.add_argument("--name", help="the model's name in the zoo [default: napari-pgsr <network> restoration]")
    parser.add_argument("--author", action="append", help="an author (repeat for several)")
    parser.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights [default: CC-BY-4.0]")
    parser.add_argument("--no-check", action="store_true",
                        help="skip bioimageio.core's test of the package (runs it on its test input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-export."""
    args = export_parser().parse_args(argv)
    try:
        from .bmz import check_package, export_bioimageio, movie_low_frames
        from .io import read_movie
        from .modelfile import load_model

        if args.output.suffix.lower() != ".zip":
            raise BadInput(f"the package is a zip: name it *.zip, got {args.output}")
        if args.output.exists() and not args.overwrite:
            raise BadInput(f"{args.output} exists; pass --overwrite to replace it")
        if args.output.resolve() in {args.model.resolve(), *([args.sample.resolve()] if args.sample else [])}:
            raise BadInput(f"refusing to write the package over its input {args.output}")
        model = load_model(args.model)
        frames = None
        if args.sample:
            frames = movie_low_frames(read_movie(args.sample), 2 * model.context + 1, alternating=True,
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


def main(argv: list[str] | None = None) -> int:
    """`python -m napari_pgsr.cli train|predict|measure|export ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "predict": predict_main, "measure": measure_main, "export": export_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m napari_pgsr.cli {train,predict,measure,export} ... (see --help of each)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
