"""The quality report: every method on held-out simulated movies of all three kinds, scored by what a cell
biologist measures, as one Markdown table and the PNG figures the README shows.

    .venv/bin/python benchmarks/report.py                      # CPU: 20 training minutes, about 30 in all
    .venv/bin/python benchmarks/report.py --budget 120 --full-size   # a GPU: full-width ProGAN
    .venv/bin/python benchmarks/report.py --load unet.pgsr gan.pgsr  # models trained elsewhere
    .venv/bin/python benchmarks/report.py --steps 1500 --gan-steps 200   # by steps, not by the clock

Methods: raw low, Gaussian-smoothed low, raw high, U-Net (MAE and BCE) and ProGAN (joint and gan), the
models trained here on simulated AP2 movies (`--train-kind`) with the training minutes of `--budget` shared
out (ProGANs get twice a U-Net's share; they warm up with MAE first). Scores, against the simulator's truth
at the instant each input was taken (`quality.py` says how): PSNR and SSIM, spot F1 and precision of
detected spots, localisation RMSE; and, with the Spots widget's measurement (`analysis.measure_spots`) at
the true positions of the spots brighter than 300 photons, as a user who labelled them would get: median
FWHM (nm) and median SNR. Figures: crops of one test frame per kind with the same contrast (each image
mapped onto the truth's intensity scale), FWHM histograms, F1 per method.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from quality import (ISOLATED_PX, MIN_PHOTONS, PIXEL_NM, _nm, best_threshold, care_normalised, evaluate,
                     rmse_on_common_spots, test_sets)
from scipy import ndimage

from napari_pgsr.analysis import measure_spots
from napari_pgsr.analysis.measure import FWHM_PER_SIGMA
from napari_pgsr.devices import cpu_has_native_bf16
from napari_pgsr.inference import restore
from napari_pgsr.modelfile import load_model
from napari_pgsr.pairs import split_alternating
from napari_pgsr.physics import Microscope
from napari_pgsr.simulate import KINDS, simulate_movie
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.loop import train
from napari_pgsr.training.recipes import recipe_values

SHARES = {"U-Net MAE": 1.0, "U-Net BCE": 1.0, "ProGAN joint": 2.0, "ProGAN gan": 2.0}
CROP = 48  # px of the example crops
VALIDATION_SEED = 5000  # movies that choose each method's spot threshold (the test movies are 1000-1002)


def model_configs(full_size: bool, gan_warmup: int | None) -> dict[str, dict]:
    """Training settings per row: U-Nets as the CLI trains them; ProGANs with the progan-spots recipe's
    settings (joint) and adversarial only (gan), at width 1.0 with `full_size`, the recipe's 0.125 else."""
    recipe = {key: value for key, value in recipe_values("progan-spots").items() if key not in ("steps", "recipe")}
    # on 2 CPU cores a ProGAN step takes ~1.2 s in its warm-up (several in its GAN phase): 200 steps leave the
    # CPU budget's ProGANs a GAN phase at all
    recipe["warmup_steps"] = gan_warmup if gan_warmup is not None else (recipe["warmup_steps"] if full_size else 200)
    if full_size:
        recipe.update(width=1.0, patch=256, start_resolution=256, batch=16)
    return {"U-Net MAE": {}, "U-Net BCE": {"loss": "bce"}, "ProGAN joint": recipe,
            "ProGAN gan": {**recipe, "gan_mode": "gan"}}


def training_configs(configs: dict[str, dict], budget: float, seed: int, cpu_bf16: bool,
                     steps: tuple[int, int] | None = None) -> dict[str, TrainConfig]:
    """Each row's TrainConfig: `budget` minutes shared out by SHARES, and nothing else ending a run; or, with
    `steps` (U-Net steps, ProGAN adversarial steps after its warm-up), a fixed number of steps and no clock:
    a busy or slow machine trains the same steps (and the same seed, machine and torch the same weights)."""
    total_share = sum(SHARES[name] for name in configs)
    built = {}
    for name, changes in configs.items():
        bf16 = {"cpu_bf16": True} if cpu_bf16 and changes.get("model", "unet") == "unet" else {}
        if steps is None:
            # steps=None: the time alone ends a run (and the U-Nets get the CLI's plateau schedule for it)
            ends = {"steps": None, "minutes": budget * SHARES[name] / total_share}
        else:
            is_gan = changes.get("model", "unet") == "progan"
            ends = {"steps": changes["warmup_steps"] + steps[1] if is_gan else steps[0], "minutes": None}
        built[name] = TrainConfig(**ends, seed=seed, validation_every=500, checkpoint_every=10**9, **bf16, **changes)
    return built


def train_all(args, configs: dict[str, dict], folder: Path) -> dict:
    training = [split_alternating(simulate_movie(args.train_kind, args.frames, (args.size, args.size), seed=s).movie,
                                  name=f"{args.train_kind} seed {s}") for s in range(3)]
    trained = {}
    steps = (args.steps, args.gan_steps) if args.steps is not None else None
    for name, config in training_configs(configs, args.budget, args.seed, args.cpu_bf16, steps).items():
        start = time.perf_counter()
        result = train(config, training, folder / f"{name.replace(' ', '_')}.pgsr")
        if args.keep:  # `--load` scores them again (the file names give the rows' names)
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(result.path, args.keep / result.path.name)
        trained[name] = load_model(result.path)
        gan_steps = max(0, result.step - config.warmup_steps) if config.model == "progan" else None
        adversarial = "" if gan_steps is None else f" ({gan_steps} adversarial)"
        ended = f"; ended: {result.reason} ({result.note})" if result.note else ""  # a diverged GAN is said
        trained[name].metadata["report"] = (f"{result.step} steps{adversarial} in {time.perf_counter() - start:.0f} s"
                                            f"{ended}")
        print(f"trained {name}: {trained[name].metadata['report']}", flush=True)
    return trained


BASELINES = ("raw low", "Gaussian-smoothed low", "raw high")  # the rows that are not models
TEST_SEED = 1000  # test movies: seeds 1000-1002 (one per kind), then 1003-1005, ...


def held_out_movies(frames: int, size: int, movies: int) -> dict:
    """`movies` held-out movies per kind (seeds TEST_SEED + 3k + kind number), their frames and truth joined
    into one list per kind: one movie of 10 pairs left differences of a few nm or hundredths of F1 to chance."""
    sets = [test_sets(frames, size, first_seed=TEST_SEED + 3 * k) for k in range(movies)]
    joined = {}
    for kind in sets[0]:
        parts = [one[kind] for one in sets]
        joined[kind] = {"low": np.concatenate([part["low"] for part in parts]),
                        "high": np.concatenate([part["high"] for part in parts])}
        for truth in ("low_truth", "high_truth"):
            joined[kind][truth] = ([image for part in parts for image in part[truth][0]],
                                   [spots for part in parts for spots in part[truth][1]])
    return joined


def row_name(path: Path) -> str:
    """The report's row for a model loaded from `path`."""
    return path.stem.replace("_", " ")


def labelled_spots(image: np.ndarray, truth_yx: np.ndarray,
                   photons: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """FWHM (nm) and SNR of the usable fits at the true spots a user would label (>= MIN_PHOTONS), the number
    labelled, and how many of them fitted a width at the fit's bound (a spike narrower than the lens draws,
    or no spot): those are no width measurement, so they leave the median but are counted."""
    labelled = truth_yx[photons >= MIN_PHOTONS]
    if not len(labelled):  # (a small frame of single molecules may hold none)
        return np.empty(0), np.empty(0), 0, 0
    table = measure_spots(image, labelled, pixel_size_nm=PIXEL_NM)
    good = table[table["flag"] == ""]
    at_limit = int(table["flag"].str.contains("width at limit").sum())
    return good["fwhm_nm"].to_numpy(), good["snr"].to_numpy(), len(table), at_limit


def methods_on(data: dict, trained: dict) -> dict[str, list[np.ndarray]]:
    """The frames every method gives for one kind's movie: baselines, then each model's restoration."""
    methods = {"raw low": list(data["low"]),
               "Gaussian-smoothed low": [ndimage.gaussian_filter(f, 1.0) for f in data["low"]],
               "raw high": list(data["high"])}
    assert list(methods) == list(BASELINES) and not set(trained) & set(methods), "a model named as a baseline"
    methods.update({name: list(restore(model, data["low"])) for name, model in trained.items()})
    return methods


def score(sets: dict, trained: dict, validation: dict | None = None) -> tuple[list[dict], dict]:
    """Rows of the table and the example crops. Each method's detection threshold is the one with the best F1
    on the `validation` movies (other seeds): chosen on the scored frames' own truth, F1 and precision were
    a best case no user could reach (single molecules' U-Net MAE: precision 1.000 there, 0.981 so)."""
    rows, crops = [], {}
    for kind, data in sets.items():
        methods = methods_on(data, trained)
        checks = methods_on(validation[kind], trained) if validation is not None else {}
        kind_rows = []
        for name, frames in methods.items():
            truth = "high_truth" if name == "raw high" else "low_truth"
            images, spots = data[truth]
            threshold = best_threshold(checks[name], validation[kind][truth][1]) if checks else None
            row = {"kind": kind, **evaluate(name, frames, images, spots, threshold)}
            measured = [labelled_spots(frame, yx, photons) for frame, (yx, photons) in zip(frames, spots)]
            row["fwhm_values"] = np.concatenate([fwhm for fwhm, *_ in measured])
            row["fwhm_nm"] = float(np.median(row["fwhm_values"])) if row["fwhm_values"].size else float("nan")
            labelled = sum(m[2] for m in measured)
            row["usable_percent"] = 100 * row["fwhm_values"].size / max(labelled, 1)
            row["at_limit_percent"] = 100 * sum(m[3] for m in measured) / max(labelled, 1)
            snr = np.concatenate([snr for _, snr, *_ in measured])
            row["snr"] = float(np.median(snr)) if snr.size else float("nan")
            kind_rows.append(row)
        raw_low = kind_rows[0]
        for row in kind_rows:
            row["rmse_low_spots_nm"] = (float("nan") if row["method"] == "raw high"  # another instant's spots
                                        else rmse_on_common_spots(row, raw_low))
        rows += kind_rows
        truth = data["low_truth"][0][0]
        crops[kind] = {"truth": care_normalised(truth, truth)[0],
                       **{name: care_normalised(truth, frames[0])[1] for name, frames in methods.items()}}
    return rows, crops


def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| sample | method | PSNR (dB) | SSIM | threshold | spot F1 | precision | localisation RMSE (nm) | RMSE "
             "on isolated spots (nm) | RMSE on raw low's spots (nm) | median FWHM (nm) | widths measured (%) | "
             "width at the fit's bound (%) | median SNR |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['threshold']:g} "
              f"| {r['f1']:.3f} | {r['precision']:.3f} | {_nm(r['rmse_nm'])} | {_nm(r['rmse_isolated_nm'])} "
              f"| {_nm(r['rmse_low_spots_nm'])} | {_nm(r['fwhm_nm'])} "
              f"| {r['usable_percent']:.0f} | {r['at_limit_percent']:.1f} | {_nm(r['snr'])} |"
              for r in rows]
    return "\n".join(lines)


def crop_figure(crops: dict) -> Figure:
    kinds, methods = list(crops), list(next(iter(crops.values())))
    figure = Figure(figsize=(1.6 * len(methods), 1.75 * len(kinds)), layout="constrained")
    axes = figure.subplots(len(kinds), len(methods), squeeze=False)
    crop = min(CROP, *next(iter(crops.values()))["truth"].shape)  # (test frames may be smaller)
    for row, kind in enumerate(kinds):
        image = crops[kind]["truth"]
        # the crop around the brightest part of the truth, so it holds spots
        y, x = np.unravel_index(np.argmax(ndimage.uniform_filter(image, crop)), image.shape)
        y, x = np.clip([y - crop // 2, x - crop // 2], 0, np.array(image.shape) - crop)
        for column, method in enumerate(methods):
            ax = axes[row, column]
            ax.imshow(crops[kind][method][y:y + crop, x:x + crop], cmap="magma", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(method, fontsize=8)
            if column == 0:
                ax.set_ylabel(kind.replace("_", " "), fontsize=9)
    figure.suptitle(f"First test frame, {crop} x {crop} px ({crop * PIXEL_NM / 1000:.1f} um); one contrast: "
                    f"every image mapped onto the truth's 0.1-99.9 percentiles; raw high is its pair's "
                    f"high-exposure frame, taken next (moving spots have moved)", fontsize=9)
    return figure


def colours(rows: list[dict]) -> dict[str, str]:
    """One colour per method, the same in every figure."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return {method: f"C{i}" for i, method in enumerate(methods)}


def fwhm_figure(rows: list[dict], true_fwhm: float) -> Figure:
    figure = Figure(figsize=(12, 3.2), layout="constrained")
    axes = figure.subplots(1, len(KINDS))
    bins = np.linspace(0.4 * true_fwhm, 2.5 * true_fwhm, 36)
    colour = colours(rows)
    for ax, kind in zip(axes, KINDS):
        for row in (r for r in rows if r["kind"] == kind and r["method"] != "Gaussian-smoothed low"
                    and r["fwhm_values"].size):
            ax.hist(np.clip(row["fwhm_values"], bins[0], bins[-1]), bins=bins, histtype="step", linewidth=1.4,
                    density=True, label=row["method"], color=colour[row["method"]])
        ax.axvline(true_fwhm, color="black", linestyle=":", label=f"truth ({true_fwhm:.0f} nm)")
        ax.set(title=kind.replace("_", " "), xlabel="FWHM at the labelled spots (nm; the last bins hold all beyond)",
               yticks=[])
    axes[-1].legend(fontsize=7, loc="upper right")
    return figure


def f1_figure(rows: list[dict]) -> Figure:
    colour = colours(rows)
    methods = list(colour)
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [next(r["f1"] for r in rows if r["kind"] == kind and r["method"] == method) for kind in KINDS]
        ax.bar(np.arange(len(KINDS)) + (i - (len(methods) - 1) / 2) * width, values, width, label=method,
               color=colour[method])
    ax.set_xticks(range(len(KINDS)), [k.replace("_", " ") for k in KINDS])
    ax.set(ylabel="spot F1 (true spots found,\nnone invented)", ylim=(0, 1.0))
    figure.legend(*ax.get_legend_handles_labels(), fontsize=7, ncols=len(methods), loc="outside upper center")
    return figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0, help="training minutes for all models together")
    parser.add_argument("--steps", type=int, metavar="N", help="train each U-Net N steps instead of by the clock "
                        "(with --gan-steps): equal training on any machine, however busy")
    parser.add_argument("--gan-steps", type=int, metavar="N", help="each ProGAN's adversarial steps after its "
                        "warm-up (with --steps)")
    parser.add_argument("--full-size", action="store_true", help="full-width ProGAN at 256 px (for a GPU)")
    parser.add_argument("--gan-warmup", type=int, help="ProGAN MAE warm-up steps (default: 200, the recipe's "
                        "5000 with --full-size)")
    parser.add_argument("--train-kind", choices=KINDS, default="ap2")
    parser.add_argument("--frames", type=int, default=100, help="frames per training movie (3 seeds)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--test-frames", type=int, default=20, help="frames per test movie")
    parser.add_argument("--test-movies", type=int, default=1, help="test movies per kind (about 4 min each on a "
                        "2-core CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-bf16", action="store_true", help="U-Nets in bf16 autocast on CPUs with native bf16")
    parser.add_argument("--load", type=Path, nargs="+", metavar="MODEL",
                        help="score these model files (rows named after the files) instead of training")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="also save the trained models here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "report",
                        help="folder for report.md and the figures")
    args = parser.parse_args()
    if (args.steps is None) != (args.gan_steps is None):
        parser.error("--steps and --gan-steps go together (U-Net steps, ProGAN adversarial steps)")
    if args.steps is not None:
        if args.steps < 1 or args.gan_steps < 0:
            parser.error(f"--steps must be >= 1 and --gan-steps >= 0, got {args.steps} and {args.gan_steps}")
        if args.budget != parser.get_default("budget"):
            parser.error("--budget trains by the clock, --steps by steps; give one of them")
    if args.load:
        trained_here = [f"--{name.replace('_', '-')}" for name in ("budget", "steps", "gan_steps", "full_size",
                                                                      "gan_warmup", "train_kind", "frames",
                                                                      "cpu_bf16", "keep", "seed")
                        if getattr(args, name) != parser.get_default(name)]
        if trained_here:
            parser.error(f"{', '.join(trained_here)} set how models are trained here; --load scores given ones")
        missing = [str(path) for path in args.load if not path.is_file()]
        if missing:
            parser.error(f"--load: no model file at {', '.join(missing)}")
        names = [row_name(path) for path in args.load]
        if len(set(names)) < len(names):
            parser.error(f"--load: two models give the same row name ({', '.join(names)}); rename a file")
        taken = sorted(set(names) & set(BASELINES))
        if taken:
            parser.error(f"--load: {', '.join(taken)} is the name of a row of raw or smoothed frames; rename the file")
    start = time.perf_counter()
    true_fwhm = FWHM_PER_SIGMA * Microscope().sigma_nm
    with tempfile.TemporaryDirectory() as folder:
        if args.load:
            trained = {row_name(path): load_model(path) for path in args.load}
            how = f"from {', '.join(path.name for path in args.load)}"
        else:
            trained = train_all(args, model_configs(args.full_size, args.gan_warmup), Path(folder))
            where = (torch.cuda.get_device_name() if torch.cuda.is_available()
                     else f"{torch.get_num_threads()} CPU threads")
            native = args.cpu_bf16 and not torch.cuda.is_available() and cpu_has_native_bf16()
            length = (f"for {args.budget:g} min in all" if args.steps is None else
                      f"for {args.steps} steps (U-Nets) and {args.gan_steps} adversarial steps after the warm-up "
                      f"(ProGANs)")
            how = (f"trained {length} on {where}{' (U-Nets in bf16)' if native else ''}, "
                   f"3 {args.train_kind} movies of {args.frames} frames, seed {args.seed}"
                   f"{', full-size ProGANs' if args.full_size else ''}")
        descriptions = {name: model.describe() + (f"; {model.metadata['report']}" if "report" in model.metadata
                                                  else "") for name, model in trained.items()}
        # thresholds chosen on other movies of each kind (seeds 5000-5002), scores on the test movies
        rows, crops = score(held_out_movies(args.test_frames, args.size, args.test_movies), trained,
                            test_sets(args.test_frames, args.size, first_seed=VALIDATION_SEED))
    movies = (f"a held-out movie of {args.test_frames} frames ({args.test_frames // 2} exposure pairs)"
              if args.test_movies == 1 else f"{args.test_movies} held-out movies of {args.test_frames} frames "
              f"({args.test_movies * args.test_frames // 2} exposure pairs)")
    header = (f"Models {how}; test: {movies} per kind (seeds {TEST_SEED}-{TEST_SEED + 3 * args.test_movies - 1}), "
              f"each method's spot threshold chosen for the best F1 on another movie of "
              f"the kind (seeds {VALIDATION_SEED}-{VALIDATION_SEED + 2}); isolated spots: no other true spot "
              f"within {ISOLATED_PX:g} px; true PSF FWHM {true_fwhm:.0f} nm "
              f"(sigma {Microscope().sigma_nm:.1f} nm); {time.perf_counter() - start:.0f} s in all.\n\n"
              + "\n".join(f"- {name}: {text}" for name, text in descriptions.items()))
    text = table(rows, header)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text + "\n\n![crops](crops.png)\n\n![FWHM](fwhm.png)\n\n![F1](f1.png)\n")
    crop_figure(crops).savefig(args.out / "crops.png", dpi=110)
    fwhm_figure(rows, true_fwhm).savefig(args.out / "fwhm.png", dpi=100)
    f1_figure(rows).savefig(args.out / "f1.png", dpi=100)
    print(f"written: {', '.join(str(args.out / name) for name in ('report.md', 'crops.png', 'fwhm.png', 'f1.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
