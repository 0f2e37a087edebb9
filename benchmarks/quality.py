"""Restoration quality against the simulator's truth: pixels (PSNR, SSIM) and what a biologist measures
(spots found, localisation error, PSF width).

    .venv/bin/python benchmarks/quality.py [--minutes 10] [--frames 100] [--size 256] [--out quality.md]
    .venv/bin/python benchmarks/quality.py --load a.pgsr b.pgsr   # score models trained elsewhere

Trains U-Nets and ProGANs on 3 simulated AP2 movies (--train-kind for another kind), evaluates on held-out
movies of all three kinds against the simulator's noise-free image and true spot positions at the instant
each input was taken (the low frame for everything restored from it, the high frame for raw high), and
prints a Markdown table for raw low, Gaussian-smoothed low, raw high and each model.

- PSNR / SSIM: CARE's convention: ground truth normalised to its 0.1-99.9 percentiles, each result mapped
  onto it by the least-squares affine fit, data range 1.
- Spots: LoG suggestions (sigma 1 px) at the threshold (in local robust SDs, from THRESHOLDS) that gives
  the method its best F1 on other movies of the kind (seeds 5000-5002; shown in brackets), refined by an integrated-Gaussian fit and matched within 2 px to the true spots
  brighter than 300 photons in the high exposure (dimmer true spots may be found but are not required).
  F1, precision (found spots that are real: restoration must not invent spots), localisation RMSE (nm) of
  matched spots, the same on only those true spots that the raw low frame's fit also found (it finds only
  the brightest, which localise best, so this is the fair comparison with it), median fitted PSF sigma (nm),
  and the lattice lock of the matched spots' fitted positions on a 2 px lattice (0-1; the true positions
  of the raw test frames score 0.10-0.13): a restoration that snaps spots to its coarse pixels scores high.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_pgsr.analysis import compare_to_labels, fit_spots, suggest_spots
from napari_pgsr.devices import cpu_has_native_bf16
from napari_pgsr.inference import restore
from napari_pgsr.modelfile import load_model
from napari_pgsr.pairs import split_alternating
from napari_pgsr.physics import Microscope
from napari_pgsr.simulate import KINDS, SCENES, simulate_movie
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.events import EventKind
from napari_pgsr.training.loop import train
from napari_pgsr.training.recipes import recipe_values

MIN_PHOTONS = 300.0
# sqrt(2) steps up to 160: restorations with a flat background reach their best F1 far above the raw frames
# (single molecules: 57-113 local SDs), and a grid that stopped at 20 scored them with faint bumps counted
THRESHOLDS = (5.0, 7.0, 10.0, 14.0, 20.0, 28.0, 40.0, 57.0, 80.0, 113.0, 160.0)
PIXEL_NM = 160.0


def care_normalised(truth: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Truth to its 0.1-99.9 percentiles; the image affinely fitted to it (CARE's normalize_minmse)."""
    lo, hi = np.percentile(truth, (0.1, 99.9))
    gt = (truth - lo) / (hi - lo)
    x = image.astype(np.float64).ravel()
    design = np.column_stack([x, np.ones_like(x)])
    coef, *_ = np.linalg.lstsq(design, gt.ravel(), rcond=None)
    return gt, (design @ coef).reshape(image.shape)


def best_threshold(frames: list[np.ndarray], truth_spots: list) -> float:
    """The detection threshold with the best F1 of unrefined LoG peaks over all frames."""
    scores = []
    for threshold in THRESHOLDS:
        tp = fp = fn = 0
        for image, (yx, photons) in zip(frames, truth_spots):
            match = compare_to_labels(suggest_spots(image, 1.0, threshold, exclude_border=4), yx, 2.0,
                                      ignore=photons < MIN_PHOTONS)
            tp, fp, fn = tp + match.true_positives, fp + match.false_positives, fn + match.false_negatives
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    best = int(np.argmax(scores))
    if best == len(THRESHOLDS) - 1 and scores[best] < 1:  # at F1 1 no higher threshold could do better
        warnings.warn(f"the best spot threshold is the top of the grid ({THRESHOLDS[-1]:g}): F1 and precision "
                      "may be too low", stacklevel=2)
    return THRESHOLDS[best]


def spot_scores(image: np.ndarray, truth_yx: np.ndarray, photons: np.ndarray, threshold: float) -> dict:
    """F1 counts, matched localisation errors and fitted sigmas of one frame."""
    found = suggest_spots(image, sigma=1.0, threshold=threshold, exclude_border=4)
    # every detection counts: a fit that did not converge stays at its detected pixel (dropping such fits left
    # 18% of raw low AP2's detections out of the false positives: precision 0.205 where it is 0.170)
    fits = fit_spots(image, found, radius=3, sigma_guess=1.0)
    refined = [f.flag in ("", "width at limit", "centre at limit") for f in fits]
    fitted = np.array([[f.y, f.x] if ok else spot for f, ok, spot in zip(fits, refined, found)]).reshape(-1, 2)
    match = compare_to_labels(fitted, truth_yx, tolerance_px=2.0, ignore=photons < MIN_PHOTONS)
    sigmas = np.array([fits[i].sigma_px for i in match.pairs[:, 0] if refined[i]]) if len(match.pairs) else np.empty(0)
    return {"tp": match.true_positives, "fp": match.false_positives, "fn": match.false_negatives,
            "errors": match.distances, "sigmas": sigmas, "positions": fitted[match.pairs[:, 0]],
            "by_spot": dict(zip(match.pairs[:, 1].tolist(), match.distances.tolist()))}


def lattice_lock(positions: np.ndarray, period: float) -> float:
    """How strongly positions sit on a lattice of `period` px: the larger over y and x of the mean resultant
    length of the positions' phases modulo the period (0: spread evenly, 1: all on one phase). A generator
    with nearest-neighbour up-sampling can draw spots where its coarse pixels fall, not where they are."""
    if not len(positions):
        return float("nan")
    return float(np.abs(np.exp(2j * np.pi * np.asarray(positions) / period).mean(axis=0)).max())


ISOLATED_PX = 4.0  # a true spot with no other within 4 px: a fit cannot land between two of them


def isolated_spots(yx: np.ndarray) -> set[int]:
    """Indices of the true spots with no other true spot (of any brightness) within `ISOLATED_PX`."""
    if len(yx) < 2:
        return set(range(len(yx)))
    distances = np.hypot(*(yx[:, None, :] - yx[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distances, np.inf)
    return set(np.flatnonzero(distances.min(axis=1) > ISOLATED_PX).tolist())


def evaluate(name: str, frames: list[np.ndarray], truth_images: list[np.ndarray], truth_spots: list,
             threshold: float | None = None) -> dict:
    """Scores of one method; `threshold`: the detection threshold, chosen elsewhere (on validation frames),
    else the one with the best F1 on these frames (an upper bound no user could reach)."""
    psnr, ssim, tp, fp, fn, errors, sigmas, by_spot, positions = [], [], 0, 0, 0, [], [], {}, []
    threshold = best_threshold(frames, truth_spots) if threshold is None else threshold
    isolated = []
    for index, (image, truth, (yx, photons)) in enumerate(zip(frames, truth_images, truth_spots)):
        gt, fitted = care_normalised(truth, image)
        psnr.append(peak_signal_noise_ratio(gt, fitted, data_range=1.0))
        ssim.append(structural_similarity(gt, fitted, data_range=1.0))
        scores = spot_scores(image, yx, photons, threshold)
        tp, fp, fn = tp + scores["tp"], fp + scores["fp"], fn + scores["fn"]
        errors.append(scores["errors"])
        sigmas.append(scores["sigmas"])
        positions.append(scores["positions"])
        by_spot.update({(index, spot): error for spot, error in scores["by_spot"].items()})
        alone = isolated_spots(yx)
        isolated += [error for spot, error in scores["by_spot"].items() if spot in alone]
    errors, sigmas = np.concatenate(errors), np.concatenate(sigmas)
    return {"method": name, "psnr": np.mean(psnr), "ssim": np.mean(ssim),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1), "precision": tp / max(tp + fp, 1),
            "rmse_nm": PIXEL_NM * np.sqrt(np.mean(errors**2)),
            "rmse_isolated_nm": PIXEL_NM * float(np.sqrt(np.mean(np.square(isolated)))) if isolated else float("nan"),
            "sigma_nm": PIXEL_NM * np.median(sigmas) if sigmas.size else float("nan"), "threshold": threshold,
            "errors_by_spot": by_spot, "lock_2px": lattice_lock(np.concatenate(positions), 2.0)}


def rmse_on_common_spots(row: dict, reference: dict) -> float:
    """Localisation RMSE (nm) on the true spots that both `row`'s method and the reference found: a fair
    comparison with a method that finds only the brightest spots (the raw low frame)."""
    common = row["errors_by_spot"].keys() & reference["errors_by_spot"].keys()
    errors = np.array([row["errors_by_spot"][key] for key in common])
    return PIXEL_NM * float(np.sqrt(np.mean(errors**2))) if errors.size else float("nan")


def _nm(value: float) -> str:
    return f"{value:.1f}" if np.isfinite(value) else "-"


def scene_with(kind: str, spot_rate: float | None = None, diffusion: float | None = None,
               blinking: tuple[float, float] | None = None):
    """The simulated scene of `kind` with its spot brightness (photons/s), diffusion (um^2/s) or blinking
    rates (on, off; per s) replaced where given; None when nothing is replaced (the simulator's default)."""
    on, off = blinking if blinking is not None else (None, None)
    changes = {name: value for name, value in (("spot_rate", spot_rate), ("diffusion_um2_s", diffusion),
                                               ("on_rate_hz", on), ("off_rate_hz", off)) if value is not None}
    return dataclasses.replace(SCENES[kind], **changes) if changes else None


def test_sets(frames: int, size: int, spot_rate: float | None = None, diffusion: float | None = None,
              blinking: tuple[float, float] | None = None, first_seed: int = 1000) -> dict:
    """Held-out movies per kind with their truth (seeds never used for training); `spot_rate` (photons/s)
    replaces every kind's spot brightness, `diffusion` (um^2/s) every kind's diffusion, `blinking` the
    single molecules' on and off rates (per s)."""
    sets = {}
    for number, kind in enumerate(KINDS):
        scene = scene_with(kind, spot_rate, diffusion, blinking)
        sim = simulate_movie(kind, frames, (size, size), seed=first_seed + number, scene=scene)
        pairs = split_alternating(sim.movie, name=kind)
        # photons as a 100 ms exposure of that instant would collect them (the 300-photon cut applies to that)
        to_high = sim.exposures_s.max() / sim.exposures_s

        def truth(indices):
            spots = []
            for index in indices:
                rows = sim.spots["frame"] == index
                spots.append((np.column_stack([sim.spots["y"][rows], sim.spots["x"][rows]]),
                              sim.spots["photons"][rows] * to_high[index]))
            return [sim.expected[i] for i in indices], spots

        sets[kind] = {"low": sim.movie[pairs.low_index].astype(np.float32),
                      "high": sim.movie[pairs.high_index].astype(np.float32),
                      "low_truth": truth(pairs.low_index), "high_truth": truth(pairs.high_index),
                      "simulation": sim, "pairs": pairs}
    return sets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per model")
    parser.add_argument("--steps", type=int, help="train each model this many steps instead of --minutes "
                        "(comparisons that do not depend on how busy the machine is)")
    parser.add_argument("--frames", type=int, default=100, help="frames per training movie (3 seeds)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--train-kind", choices=KINDS, default="ap2",
                        help="the sample kind of the training movies (the test movies are always all kinds)")
    parser.add_argument("--test-frames", type=int, default=20)
    parser.add_argument("--test-spot-rate", type=float,
                        help="simulate every test kind's spots this bright (photons/s; AP2's own: 8000)")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    parser.add_argument("--models", nargs="*", help="train only these (names as in the table)")
    parser.add_argument("--keep", type=Path, help="also save the trained models in this folder, named after "
                        "the table's rows and the training kind and seed (e.g. U_Net_MAE_K_0_ap2_seed_0.pgsr)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (initial weights, patches)")
    parser.add_argument("--no-score", action="store_true",
                        help="train and keep the models only (with --keep): score them later with --load")
    parser.add_argument("--load", type=Path, nargs="+", metavar="MODEL",
                        help="score these model files (rows named after the files) instead of training")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="U-Nets train in bf16 autocast on CPUs that compute it in hardware (AMX)")
    parser.add_argument("--gan-width", type=float, default=0.125, help="ProGAN width multiplier")
    parser.add_argument("--gan-warmup", type=int, default=1500, help="ProGAN MAE warm-up steps")
    parser.add_argument("--gan-start", type=int, default=64, help="ProGAN start resolution (final: 64)")
    parser.add_argument("--lambda-gan", type=float, default=1e-3, help="ProGAN joint loss weight")
    args = parser.parse_args()
    if args.no_score and not args.keep:
        parser.error("--no-score needs --keep DIR (where the unscored models are kept)")
    if args.load:
        training_options = {"--models": args.models, "--keep": args.keep, "--no-score": args.no_score,
                            "--steps": args.steps, "--seed": args.seed, "--cpu-bf16": args.cpu_bf16,
                            "--train-kind": args.train_kind != "ap2"}
        given = [option for option, value in training_options.items() if value]
        if given:
            parser.error(f"--load scores models trained before; {', '.join(given)} would train")
        stems = [path.stem for path in args.load]
        if len(set(stems)) < len(stems):
            parser.error(f"--load: the rows are named after the files, and these names repeat: {stems}")
    if args.test_spot_rate is not None and args.test_spot_rate <= 0:
        parser.error(f"--test-spot-rate must be > 0 photons/s, got {args.test_spot_rate:g}")
    print(f"PSF sigma of the simulation: {Microscope().sigma_nm:.0f} nm")
    training = [] if args.load else [
        split_alternating(simulate_movie(args.train_kind, args.frames, (args.size, args.size), seed=s).movie,
                          name=f"{args.train_kind} seed {s}") for s in range(3)]
    sets = None if args.no_score else test_sets(args.test_frames, args.size, args.test_spot_rate)
    # each method's spot threshold: the best F1 on other movies of the kind (on the scored frames' own truth
    # it was a best case no user could reach), as report.py chooses it
    checks = None if args.no_score else test_sets(args.test_frames, args.size, args.test_spot_rate, first_seed=5000)
    # ProGAN at a CPU width, on the seed's fast path: start at the final 64 px (no growing; tests and
    # bench_gan.py cover the growing) from a U-Net-style MAE warm-up of the generator, then WGAN-GP
    gan = {"model": "progan", "width": args.gan_width, "patch": 64, "start_resolution": args.gan_start,
           "warmup_steps": args.gan_warmup, "lambda_gan": args.lambda_gan}
    models = {"U-Net MAE (K=0)": {}, "U-Net MAE, no offset (K=0)": {"offset": False},
              "U-Net MAE (K=2)": {"context": 2}, "U-Net BCE (K=0)": {"loss": "bce"},
              "U-Net MSE (K=0)": {"loss": "mse"},
              "ProGAN joint (K=0)": gan, "ProGAN gan (K=0)": {**gan, "gan_mode": "gan"},
              # the recipe's settings, its length from --steps / --minutes like every row (recipe: 7200 steps)
              "ProGAN joint, progan-spots recipe (K=0)": {key: value for key, value in recipe_values(
                  "progan-spots").items() if key != "steps"}}
    if args.models:
        models = {name: changes for name, changes in models.items() if name in args.models}
    if args.load:  # models trained elsewhere (e.g. on a GPU with --no-score)
        models = {}
    trained = {path.stem.replace("_", " "): load_model(path) for path in args.load or ()}
    with tempfile.TemporaryDirectory() as folder:
        for name, changes in models.items():
            bf16 = {"cpu_bf16": True} if args.cpu_bf16 and changes.get("model", "unet") == "unet" else {}
            config = TrainConfig(steps=args.steps, minutes=None if args.steps else args.minutes, seed=args.seed,
                                 validation_every=500, checkpoint_every=10**9, **bf16, **changes)
            start = time.perf_counter()
            def report(event, start=start):  # progress in the log, also of a run cut short
                if event.kind is EventKind.VALIDATION:
                    print(f"  step {event.step}: {time.perf_counter() - start:.0f} s", flush=True)
            result = train(config, training, Path(folder) / "m.pgsr", progress=report)
            trained[name] = load_model(result.path)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                stem = re.sub(r"[^A-Za-z0-9]+", "_", f"{name} {args.train_kind} seed {args.seed}").strip("_")
                shutil.copy(result.path, args.keep / f"{stem}.pgsr")
            ran = result.history["divergences"][-1]["step"] if result.reason == "diverged" else result.step
            print(f"trained {name}: {result.step} steps, {ran * config.batch / (time.perf_counter() - start):.0f}"
                  f" patches/s, {time.perf_counter() - start:.0f} s", flush=True)
            if result.note:
                print(f"  {result.note}", flush=True)
    if args.no_score:
        return 0
    rows = []

    def methods_on(data: dict) -> dict[str, list[np.ndarray]]:
        methods = {"raw low": list(data["low"]),
                   "Gaussian-smoothed low (1 px)": [ndimage.gaussian_filter(f, 1.0) for f in data["low"]],
                   "raw high": list(data["high"])}
        for name, model in trained.items():
            methods[name] = list(restore(model, data["low"]))
        return methods

    for kind, data in sets.items():
        methods, chosen_on = methods_on(data), methods_on(checks[kind])
        kind_rows = []
        for name, frames in methods.items():
            # each result is judged against the scene at the instant its input was taken
            truth = "high_truth" if name == "raw high" else "low_truth"
            images, spots = data[truth]
            threshold = best_threshold(chosen_on[name], checks[kind][truth][1])
            kind_rows.append({"kind": kind, **evaluate(name, frames, images, spots, threshold)})
        raw_low = next(row for row in kind_rows if row["method"] == "raw low")
        for row in kind_rows:
            row["rmse_low_spots_nm"] = (float("nan") if row["method"] == "raw high"  # (another instant's spots)
                                        else rmse_on_common_spots(row, raw_low))
        rows += kind_rows
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    native = args.cpu_bf16 and not args.load and not torch.cuda.is_available() and cpu_has_native_bf16()
    where += " (U-Nets in bf16 autocast)" if native else ""
    trained_how = (f"models from {', '.join(path.name for path in args.load)}, scored on {where}" if args.load
                   else f"Training: {budget} per model on {where}, 3 {args.train_kind} movies of {args.frames} frames "
                   f"({args.size}x{args.size})")
    brightness = f" (spots at {args.test_spot_rate:g} photons/s)" if args.test_spot_rate is not None else ""
    lines = [f"{trained_how}; test: {args.test_frames} frames per kind{brightness}, held out. True PSF sigma "
             f"{Microscope().sigma_nm:.0f} nm.", "",
             "| sample | method | PSNR (dB) | SSIM | spot F1 (threshold) | spot precision | localisation RMSE (nm) "
             "| RMSE on the spots raw low finds (nm) | median PSF sigma (nm) | lattice lock (2 px) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['kind']} | {row['method']} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['f1']:.3f} "
                     f"({row['threshold']:g}) | {row['precision']:.3f} | {row['rmse_nm']:.1f} "
                     f"| {_nm(row['rmse_low_spots_nm'])} | {row['sigma_nm']:.1f} | {row['lock_2px']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
