"""napari-pgsr-train: train a restoration model on alternating-exposure movies (a config field per flag)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

from .common import EXIT_BAD_INPUT, BadInput, add_phase_flags, first_ctrl_c_stops, warnings_said_plainly


def _field_type(annotation) -> type:
    """int / float / str / bool from a dataclass annotation such as 'int | None'."""
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if name in text:
            return kind
    return str


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default None: only flags given override the config file)."""
    from ..training.config import TrainConfig

    group = parser.add_argument_group("training settings (defaults: the config file, then these)")
    for spec in fields(TrainConfig):
        if spec.name in ("low_first", "recipe"):
            continue  # --low-first / --high-first below; --recipe NAME fills in a recipe's settings
        flag = "--" + spec.name.replace("_", "-")
        kind = _field_type(spec.type)
        described = spec.metadata.get("help", "")
        # (a default that depends on other settings is told in the help itself)
        shown = "none" if spec.default in (None, "") else spec.default
        help_text = described if "default" in described else f"{described} [default: {shown}]"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, type=kind, default=None, help=help_text, metavar=spec.name.upper())
    add_phase_flags(group)


def train_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-train."""
    from ..training.recipes import RECIPES

    parser = argparse.ArgumentParser(
        prog="napari-pgsr-train", description="Train a restoration model on low/high exposure pairs. Under "
        "`torchrun --nproc_per_node N -m napari_pgsr.cli train ...` it trains with DistributedDataParallel.")
    parser.add_argument("movies", nargs="*", type=Path, help="alternating-exposure movies (TIFF or OME-Zarr)")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary (errors and "
                        "warnings are still printed)")
    _add_config_flags(parser)
    return parser


def build_config(args: argparse.Namespace):
    """The checkpoint's config when resuming, else the recipe's, then the config file's, overridden by the
    flags given. Minutes without steps (or steps without minutes) set the length of training alone."""
    from ..modelfile import load_model
    from ..training.config import TrainConfig, as_trained
    from ..training.recipes import RECIPES, recipe_values

    values, from_recipe, file_values = {}, set(), {}
    if args.config:
        file_values = TrainConfig.read_values(args.config)  # only what the file sets
    recipe = args.recipe or file_values.get("recipe") or None  # a file's `recipe:` is a base as --recipe is
    source = f"--recipe {recipe}" if args.recipe else f"the recipe {recipe} of {args.config}"
    if recipe and recipe not in RECIPES:
        raise BadInput(f"{args.config}: recipe {recipe!r} is none of the recipes ({', '.join(RECIPES)})")
    if args.resume is not None:
        if args.recipe:
            raise BadInput(f"--recipe starts a new run; --resume {args.resume} continues with the settings "
                           "stored in the checkpoint")
        values = as_trained(load_model(args.resume).metadata.get("config", {}))
    elif recipe:
        values = recipe_values(recipe)
        from_recipe = set(values) - {"recipe"}
    chosen = set()  # what the config file and the flags set
    if args.config:
        values.update(file_values)
        from_recipe -= set(file_values)
        chosen |= set(file_values)
    flags = set()
    for spec in fields(TrainConfig):
        given = getattr(args, spec.name, None)
        if given is not None:
            values[spec.name] = given
            from_recipe.discard(spec.name)
            chosen.add(spec.name)
            flags.add(spec.name)
    _refuse_the_other_models_settings(values.get("model", "unet"), flags, file_values, args.config)
    _refuse_another_models_sizes(values, flags, file_values, args.config)
    if recipe and args.resume is None and values.get("model") != recipe_values(recipe)["model"]:
        raise BadInput(f"{source} trains a {recipe_values(recipe)['model']}, but "
                       f"{'--model' if 'model' in flags else args.config} sets model {values.get('model')}; "
                       "leave out the recipe or the model")
    # a length of training given alone is the only one: the default steps, or those of the run resumed, go;
    # one given by a flag wins over the file's (a saved config holds steps: --minutes 30 trained 2000 steps)
    lengths = ({"steps", "minutes"} & flags) or ({"steps", "minutes"} & chosen)
    if "minutes" in lengths and "steps" not in lengths:
        values["steps"] = None
    if "steps" in lengths and "minutes" not in lengths:
        values["minutes"] = None
    try:
        return TrainConfig.from_dict(values)
    except ValueError as error:
        # e.g. --model unet beside a ProGAN recipe: name the recipe's settings that the error is about
        clashing = sorted(name for name in from_recipe if re.search(rf"\b{name}\b", str(error)))
        if clashing:
            raise BadInput(f"{error}. {', '.join(clashing)} came from {source}: set them too, or leave out "
                           "the recipe") from error
        raise


def _refuse_another_models_sizes(values: dict, flags: set, file_values: dict, config_file) -> None:
    """A config file written for one model, trained as the other: a U-Net's width 32 (channels) read as a
    ProGAN's multiplier of Karras's channels asked for a generator of 45 billion parameters."""
    if "model" not in file_values:  # (a file of a few settings, for whichever model: the flags' or recipe's)
        return
    written_for = file_values["model"]
    if values.get("model", "unet") == written_for:
        return
    carried = [name for name in ("width", "patch") if name in file_values and name not in flags]
    if carried:
        raise BadInput(f"{config_file} was written for a {written_for}; its {' and '.join(carried)} "
                       f"({', '.join(f'{file_values[name]:g}' for name in carried)}) mean other things for a "
                       f"{values.get('model')}: give {' and '.join('--' + name for name in carried)} too, or "
                       "a config of that model")


def _refuse_the_other_models_settings(model: str, flags: set, file_values: dict, config_file=None) -> None:
    """--lr for a ProGAN, --gan-lr for a U-Net...: nothing reads them, and a run that ignored them silently
    would not be what was asked for. (A config file holds every field: there, only values off the default.)"""
    from ..training.config import MODELS, ONLY_FOR, TrainConfig

    if model not in MODELS:
        return  # (the config names the problem)
    defaults = TrainConfig(model=model).to_dict()
    other = next(name for name in MODELS if name != model)
    unused = [name for name in ONLY_FOR[other]
              if name in flags or (name in file_values and file_values[name] != defaults[name])]
    if unused:
        names = {"unet": "U-Net", "progan": "ProGAN"}
        hint = (" (a ProGAN's learning rates are --warmup-lr and --gan-lr; its depth follows --patch)"
                if model == "progan" else "")
        named = [f"--{name.replace('_', '-')}" if name in flags else f"{name} (in {Path(config_file).name})"
                 for name in unused]
        raise BadInput(f"{', '.join(named)}: "
                       f"{'a setting' if len(unused) == 1 else 'settings'} of the {names[other]}, which a "
                       f"{names[model]} does not read{hint}")


def check_writable(path: Path) -> None:
    """Refuse an output whose folder cannot be made or written to."""
    if path.is_dir():
        raise BadInput(f"cannot write {path}: it is a folder; give a file name")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise BadInput(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK):
        raise BadInput(f"cannot write {path}: no permission to write in {folder}")


def load_training_pairs(args: argparse.Namespace, low_first):
    """Pairs from alternating movies, or from --low/--high stacks; validation pairs from --val."""
    from ..io import read_movie
    from ..pairs import pair_stacks, split_alternating

    # (--val, --low and --high take every name after them: movies named last were taken as theirs)
    hint = "; name the movies before --val, --low or --high" if args.val or args.low or args.high else ""
    if not args.movies and not args.low:
        raise BadInput(f"give alternating-exposure movies, or --low and --high stacks{hint}")
    if len(args.low) != len(args.high):
        raise BadInput(f"--low has {len(args.low)} files but --high has {len(args.high)}; give them in pairs{hint}")
    pairs = [split_alternating(read_movie(p), low_first=low_first) for p in args.movies]
    for low, high in zip(args.low, args.high):
        pairs.append(pair_stacks(read_movie(low).data, read_movie(high).data, name=f"{low.name}+{high.name}"))
    validation = [split_alternating(read_movie(p), low_first=low_first) for p in args.val]
    return pairs, validation, [str(p) for p in [*args.movies, *args.low, *args.high, *args.val]]


def _progress_bar(quiet: bool):
    """A tqdm bar fed by training events (rank 0 only)."""
    from tqdm import tqdm

    from ..training.events import EventKind

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


@warnings_said_plainly("napari-pgsr-train")
def train_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-train."""
    args = train_parser().parse_args(argv)
    try:
        config = build_config(args)
        if config.recipe and args.resume is None and int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
            from ..training.recipes import RECIPE_SCOPES

            print(f"recipe {config.recipe}: {RECIPE_SCOPES[config.recipe]}", file=sys.stderr)
        resuming_in_place = args.resume is not None and args.resume.resolve() == args.out.resolve()
        check_outputs(args)
        for output in filter(None, (args.out, args.write_config)):  # found now, not after the training
            check_writable(output)
        if args.out.exists() and not args.overwrite and not resuming_in_place:
            raise BadInput(f"{args.out} exists; pass --overwrite to replace it, or --resume {args.out}")
        if args.write_config and args.write_config.exists() and not args.overwrite:
            raise BadInput(f"{args.write_config} exists; pass --overwrite to replace it")
        if args.resume is not None and config.model == "unet" and config.minutes is None and config.steps:
            from ..modelfile import load_model

            done = (load_model(args.resume).training_state or {}).get("step", 0)
            if done >= config.steps and int(os.environ.get("RANK", "0")) == 0:
                print(f"napari-pgsr-train: note: {args.resume} is already at step {done}, and --steps is "
                      f"{config.steps}: nothing is left to train; give a larger --steps to continue",
                      file=sys.stderr)
        pairs, validation, files = load_training_pairs(args, config.low_first)
        from ..training.events import EventKind
        from ..training.loop import train

        show, close = _progress_bar(args.quiet)

        def update(event) -> None:
            if event.kind is EventKind.STARTED and args.write_config:  # the data passed their checks
                config.save(args.write_config)
            show(event)

        try:
            with first_ctrl_c_stops(lambda message: print(f"\n{message}", file=sys.stderr),
                                    terminate_too=True) as stopping:
                result = train(config, pairs, args.out, validation=validation, resume=args.resume, progress=update,
                               should_stop=stopping, files=files)
            if result.note and int(os.environ.get("RANK", "0")) == 0:  # (also with --quiet)
                print(f"napari-pgsr-train: warning: {result.note}", file=sys.stderr)
        finally:
            close()
            import torch.distributed as dist

            if dist.is_initialized():  # launched by torchrun
                dist.destroy_process_group()
    except (BadInput, ValueError, OSError) as err:  # OSError: e.g. a folder given for a file, a full disk
        print(f"napari-pgsr-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, RuntimeError) as err:  # (torch.OutOfMemoryError is a RuntimeError)
        if not isinstance(err, MemoryError) and not re.search(r"out of memory|can't allocate memory", str(err)):
            raise
        said = (str(err).splitlines() or ["no memory left"])[0][:200]
        print(f"napari-pgsr-train: error: out of memory ({said}): choose a smaller "
              "--batch, --patch or --width", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """Neither output may be an input: --write-config over the training movie replaced it with 600 bytes
    of YAML, and --out over it (with --overwrite) with the model."""
    inputs = {path.resolve(): path for path in [*args.movies, *args.low, *args.high, *args.val,
                                                *filter(None, (args.config,))]}
    if args.resume is not None and args.write_config is not None:
        inputs.setdefault(args.resume.resolve(), args.resume)  # (--out may be the checkpoint resumed)
    for flag, output in (("--out", args.out), ("--write-config", args.write_config)):
        if output is not None and output.resolve() in inputs:
            raise BadInput(f"{flag} {output} is one of the inputs; choose another file name")
    if args.write_config is not None and args.write_config.resolve() == args.out.resolve():
        raise BadInput(f"--write-config and --out are both {args.out}; give the config another name")
