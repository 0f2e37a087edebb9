"""The ProGAN's GAN phase, scored as it trains: a U-Net and the generator's MAE warm-up as references, then
WGAN-GP with the joint loss from that warm-up, with and without the rot180-averaged generator, scored on
held-out movies of the training kind (AP2 unless `--train-kind`; `mixed` trains on one movie of each kind
and scores each kind) every `--every` steps (PSNR, SSIM, spot F1, precision, localisation RMSE, PSF sigma,
lattice lock, and the fine-grained background residual: noise kept or invented) and on beads for the mean
signed offset of the found spots (a whole-image shift by the network).

    python benchmarks/gan_phase.py --device cuda --warmup 2000 --gan-steps 600 --every 200 --lambdas 0.1 0.01
    python benchmarks/gan_phase.py --device cpu --warmup 20 --gan-steps 4 --every 2 --frames 20  # smoke run

`--warmup-from DIR/warm_rot180.pgsr ...` continues the warm-ups of an earlier run (the folder it prints);
`--score-raw` also scores the generator being trained, not only its EMA copy that the model file restores with.
`--continue RUN.pgsr` trains a GAN run of an earlier call (its gan_<variant>_<lambda>.pgsr, with the same
`--train-kind`, `--frames`, `--diffusion` and `--blinking`) on to `--gan-steps` GAN steps in all with its stored
settings (except `--device` and `--cpu-bf16`, given again),
scored every `--every` steps, and nothing else. A continued run, like a `--warmup-from` warm-up, keeps the
critic-noise line its file recorded (a file written before commit 1c472d8 holds the old single-frame fit).
`--low-pass W` (an experiment, not a package setting) adds W * MAE of the Gaussian-blurred output and target
to the GAN phase's joint loss (`gan_low_pass_sm_cpu.md`); it is not recorded in the model file.

Training as in quality.py's ProGAN rows: width 0.125 (--width), 64 px patches from the start (no growing),
3 simulated movies of `--train-kind`; the run ends after `--minutes` even if variants are left. Each
variant's warm-up is trained once and every lambda_gan continues a copy of it: this script lets resume
accept a changed lambda_gan (it replaces `loop.check_resumable` for its own process).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from quality import (MIN_PHOTONS, PIXEL_NM, best_threshold, care_normalised, evaluate, scene_with,  # noqa: E402
                     test_sets)

from napari_pgsr.analysis import compare_to_labels, fit_spots, suggest_spots  # noqa: E402
from napari_pgsr.inference import restore  # noqa: E402
from napari_pgsr.modelfile import load_model  # noqa: E402
from napari_pgsr.pairs import split_alternating  # noqa: E402
from napari_pgsr.simulate import KINDS, simulate_movie  # noqa: E402
from napari_pgsr.training.config import TrainConfig  # noqa: E402
from napari_pgsr.training.events import EventKind  # noqa: E402
from napari_pgsr.training import loop  # noqa: E402
from napari_pgsr.training.loop import iter_training, train  # noqa: E402

_check_resumable = loop.check_resumable


def _any_lambda_from_the_warm_up(stored: dict, config: TrainConfig, path) -> None:
    """The warm-up is MAE alone, the same for every lambda_gan: each GAN run may continue it with its own."""
    _check_resumable({**stored, "lambda_gan": config.lambda_gan}, config, path)


loop.check_resumable = _any_lambda_from_the_warm_up


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, reflected at the borders."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).repeat(images.shape[1], 1, 1, 1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(-1, 1, 1, 2 * radius + 1), groups=images.shape[1])
    return F.conv2d(rows, kernel.view(-1, 1, 2 * radius + 1, 1), groups=images.shape[1])


def add_low_pass_term(weight: float, sigma: float) -> None:
    """An experiment, not in the package: the joint loss gets weight * MAE(blur(G(low)), blur(high)), a pull
    on what a spot's position and brightness are made of (a blur wider than the PSF hides its width, not
    where it is) that the target's noise, averaged by the blur, hardly weakens."""
    from napari_pgsr.training import progan_loop

    plain = progan_loop.generator_loss

    def generator_loss(critic, low, fake, real, mode="joint", lambda_gan=1e-3, seen=None):
        loss, values = plain(critic, low, fake, real, mode, lambda_gan, seen=seen)
        low_pass = F.l1_loss(gaussian_blur(fake, sigma), gaussian_blur(real, sigma))
        values["low_pass"] = float(low_pass.detach())
        return loss + weight * low_pass, values

    progan_loop.generator_loss = generator_loss


def mean_offset_nm(frames: list[np.ndarray], truth_spots: list) -> tuple[float, float, int]:
    """Mean signed (y, x) offset of matched spots from their true positions, and how many matched."""
    threshold = best_threshold(frames, truth_spots)
    offsets = []
    for image, (yx, photons) in zip(frames, truth_spots):
        found = suggest_spots(image, sigma=1.0, threshold=threshold, exclude_border=4)
        fits = [f for f in fit_spots(image, found, radius=3, sigma_guess=1.0)
                if f.flag in ("", "width at limit", "centre at limit")]
        fitted = np.array([[f.y, f.x] for f in fits]).reshape(-1, 2)
        match = compare_to_labels(fitted, yx, tolerance_px=2.0, ignore=photons < MIN_PHOTONS)
        if len(match.pairs):
            offsets.append(fitted[match.pairs[:, 0]] - yx[match.pairs[:, 1]])
    offsets = np.concatenate(offsets) * PIXEL_NM if offsets else np.zeros((0, 2))
    return float(offsets[:, 0].mean()), float(offsets[:, 1].mean()), len(offsets)


_SETS: dict = {}


def _load_test_sets(frames: int, diffusion: float | None = None, blinking: tuple | None = None) -> None:
    torch.set_num_threads(2)  # several scorers share the CPU while the trainer keeps the GPU busy
    _SETS.update(test_sets(frames, 256, diffusion=diffusion, blinking=blinking))


def background_texture(frames: list[np.ndarray], truth_images: list[np.ndarray]) -> float:
    """Fine-grained residual against the truth away from spots, in thousandths of the truth's range (CARE's
    normalisation): noise a restoration keeps or invents. Raw frames show their own noise here."""
    values = []
    for image, truth in zip(frames, truth_images):
        gt, fitted = care_normalised(truth, image)
        residual = fitted - gt
        fine = residual - ndimage.gaussian_filter(residual, 2.0)
        smooth = ndimage.gaussian_filter(truth, 2.0)
        values.append(fine[smooth < np.percentile(smooth, 80)].std())
    return 1000 * float(np.mean(values))


def _row(label: str, extra: str, kind: str, kind_frames: list, beads_frames: list, truth: str = "low_truth") -> str:
    scored, beads = _SETS[kind], _SETS["beads"]
    row = evaluate(label, kind_frames, *scored[truth])
    texture = background_texture(kind_frames, scored[truth][0])
    dy, dx, n = mean_offset_nm(beads_frames, beads[truth][1])
    return (f"| {label} | {extra} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['f1']:.3f} | {row['precision']:.3f} "
            f"| {row['rmse_nm']:.1f} | {row['sigma_nm']:.1f} | {row['lock_2px']:.2f} | {texture:.1f} "
            f"| {dy:+.1f} / {dx:+.1f} ({n}) |")


def score_row(label: str, path: str, extra: str, kind: str, raw_generator: bool = False) -> str:
    """One table row: pixel and spot scores and background texture on `kind`, and the beads' mean signed offset
    (restored on the CPU). `raw_generator`: restore with the generator being trained, not its EMA copy (what
    the model file restores with)."""
    model = load_model(path)
    if raw_generator:
        model.network.load_state_dict(model.training_state["generator"])
    return _row(label, extra, kind, list(restore(model, _SETS[kind]["low"], device="cpu")),
                list(restore(model, _SETS["beads"]["low"], device="cpu")))


def score_raw(exposure: str, kind: str, suffix: str = "") -> str:
    """The row of the raw low or raw high frames (each against the scene when it was taken)."""
    return _row(f"raw {exposure}{suffix}", "", kind, list(_SETS[kind][exposure]), list(_SETS["beads"][exposure]),
                f"{exposure}_truth")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--warmup", type=int, default=2000, help="MAE warm-up steps (and the U-Net's steps)")
    parser.add_argument("--gan-steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=200, help="score every this many GAN steps")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--critic-steps", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=["rot180", "plain"],
                        choices=("rot180", "plain", "noise", "rot180-noise"),
                        help="rot180: rot180_average; noise: critic_noise (AmbientGAN); none given: the U-Net "
                             "alone (its --warmup steps)")
    parser.add_argument("--no-offset", action="store_true", help="no random offset (critic_noise needs none)")
    parser.add_argument("--noise-shape", default="gamma", choices=("gamma", "normal"),
                        help="critic_noise_shape of the noise variants")
    parser.add_argument("--train-kind", default="ap2", choices=(*KINDS, "mixed"),
                        help="the sample kind trained on and scored (beads are scored for the offset either way); "
                             "mixed: one training movie of each kind, scored on each kind")
    parser.add_argument("--frames", type=int, default=100, help="frames per training movie (3 seeds)")
    parser.add_argument("--test-frames", type=int, default=20)
    parser.add_argument("--scorers", type=int, default=4, help="processes scoring checkpoints while training goes on")
    parser.add_argument("--minutes", type=float, default=60.0, help="start no new run after this long")
    parser.add_argument("--no-unet", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training runs (initial weights, patches)")
    parser.add_argument("--score-raw", action="store_true",
                        help="also score the GAN phase's raw generator, besides its EMA copy")
    parser.add_argument("--diffusion", type=float,
                        help="diffusion (um^2/s) of every simulated spot, training and test movies alike (0: spots "
                             "stay put between a pair's low and high exposure)")
    parser.add_argument("--blinking", type=float, nargs=2, metavar=("ON", "OFF"),
                        help="single molecules' blinking rates (per s; default 0.5 5), training and test movies "
                             "alike (0.05 0.5: as many lit, 10x fewer switches between a pair's exposures)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="train in bf16 autocast on a CPU that computes it in hardware (AMX): the ProGAN's "
                             "generator and critic, and the U-Net")
    parser.add_argument("--warmup-from", type=Path, nargs="+", default=[],
                        help="warm-up files of an earlier run (its warm_<variant>.pgsr), used instead of training "
                             "the variants' warm-ups again")
    parser.add_argument("--continue", dest="continue_run", type=Path,
                        help="a GAN run of an earlier call to train on (alone) to --gan-steps GAN steps in all")
    parser.add_argument("--low-pass", type=float, default=0.0, metavar="WEIGHT",
                        help="experiment: add WEIGHT * MAE of the Gaussian-blurred output and target to the GAN "
                             "phase's joint loss (0: off)")
    parser.add_argument("--low-pass-sigma", type=float, default=1.0, help="that blur's sigma in pixels")
    args = parser.parse_args()
    if args.low_pass:
        add_low_pass_term(args.low_pass, args.low_pass_sigma)
    tag = f", low-pass {args.low_pass:g} (sigma {args.low_pass_sigma:g} px)" if args.low_pass else ""
    start = time.perf_counter()
    kind = args.train_kind
    # mixed: the same three training movies' worth of pairs, one movie per kind (seeds 0, 1, 2 in KINDS' order)
    movie_kinds = list(KINDS) if kind == "mixed" else [kind] * 3
    scored_kinds = list(KINDS) if kind == "mixed" else [kind]
    if (args.diffusion is not None or args.blinking) and args.warmup_from:
        # the warm-ups were trained on the default movies; these have the same names and pairs (the stored
        # split, by index, holds) but other pixels: continue them on these without the pixel check
        loop._fingerprint = lambda provenance: (tuple(provenance["names"]), tuple(provenance["pairs"]))
    training = [split_alternating(simulate_movie(movie_kind, args.frames, (256, 256), seed=s,
                                                 scene=scene_with(movie_kind, diffusion=args.diffusion,
                                                                  blinking=args.blinking)).movie,
                                  name=f"{movie_kind} seed {s}") for s, movie_kind in enumerate(movie_kinds)]
    pool = ProcessPoolExecutor(args.scorers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_load_test_sets, initargs=(args.test_frames, args.diffusion, args.blinking))
    folder = Path(tempfile.mkdtemp())
    print(f"files (warm-ups for --warmup-from) in {folder}", flush=True)
    rows = []

    def score(label: str, path: str | Path, extra: str, raw_generator: bool = False) -> None:
        kept = folder / f"scored_{len(rows)}.pgsr"  # checkpoints are overwritten; the scorer reads its own copy
        shutil.copy(path, kept)
        for scored_kind in scored_kinds:
            named = f"{label} [{scored_kind}]" if kind == "mixed" else label
            rows.append(pool.submit(score_row, named, str(kept), extra, scored_kind, raw_generator))
            rows[-1].add_done_callback(lambda done: print(f"scored: {done.result()}", flush=True)
                                       if not done.exception() else None)
        print(f"{time.perf_counter() - start:.0f} s: {label}, {extra}", flush=True)

    for scored_kind in scored_kinds:
        for exposure in ("low", "high"):
            rows.append(pool.submit(score_raw, exposure, scored_kind,
                                    f" [{scored_kind}]" if kind == "mixed" else ""))

    def train_on(run: Path, config: TrainConfig, label: str) -> None:
        """Continue `run` to config.steps, scoring each checkpoint and the end."""
        end, t = config.steps, time.perf_counter()
        for event in iter_training(config, training, run, resume=run):
            if (event.kind == EventKind.CHECKPOINT and event.step < end) or event.kind == EventKind.FINISHED:
                extra = f"+{event.step - config.warmup_steps}"
                score(label, event.values["path"], f"{extra} ({time.perf_counter() - t:.0f} s)")
                if args.score_raw:
                    score(f"{label}, raw generator", event.values["path"], extra, raw_generator=True)

    if args.continue_run:
        run = folder / args.continue_run.name
        shutil.copy(args.continue_run, run)
        stored = load_model(run).metadata["config"]
        config = TrainConfig.from_dict({**stored, "steps": stored["warmup_steps"] + args.gan_steps,
                                        "checkpoint_every": args.every, "device": args.device,
                                        "cpu_bf16": args.cpu_bf16, "divergence_factor": 0})
        train_on(run, config, f"ProGAN joint λ {config.lambda_gan:g}{tag}, continued")
        args.no_unet, args.variants, args.lambdas = True, [], []  # nothing else
    # divergence_factor 0: score the run as it trained, even a blown-up one (the package stops those)
    common = dict(device=args.device, validation_every=10**9, checkpoint_every=10**9, seed=args.seed,
                  offset=False if args.no_offset else None, cpu_bf16=args.cpu_bf16, divergence_factor=0)
    if not args.no_unet:
        t = time.perf_counter()
        result = train(TrainConfig(steps=args.warmup, **common), training, folder / "unet.pgsr")
        score("U-Net MAE", result.path, f"{args.warmup} ({time.perf_counter() - t:.0f} s)")
    gan = {variant: dict(model="progan", width=args.width, patch=64, start_resolution=64, warmup_steps=args.warmup,
                         critic_steps=args.critic_steps, rot180_average="rot180" in variant,
                         critic_noise="noise" in variant, critic_noise_shape=args.noise_shape, **common)
           for variant in args.variants}
    earlier = {path.stem.removeprefix("warm_"): path for path in args.warmup_from}
    for variant in set(earlier) - set(args.variants):
        print(f"warning: {earlier[variant]} is no warm-up of the variants run ({args.variants}); not used", flush=True)
    for variant, settings in gan.items():
        t = time.perf_counter()
        if variant in earlier:  # (resuming checks that its settings match)
            shutil.copy(earlier[variant], folder / f"warm_{variant}.pgsr")
        else:
            train(TrainConfig(steps=args.warmup, lambda_gan=args.lambdas[0], **settings), training,
                  folder / f"warm_{variant}.pgsr")
        took = "from an earlier run" if variant in earlier else f"{time.perf_counter() - t:.0f} s"
        score(f"ProGAN warm-up, {variant}", folder / f"warm_{variant}.pgsr", f"{args.warmup} ({took})")
    for lambda_gan in args.lambdas:
        for variant, settings in gan.items():
            if time.perf_counter() - start > 60 * args.minutes:
                print(f"time budget spent: {variant} lambda {lambda_gan:g} not run", flush=True)
                continue
            run = folder / f"gan_{variant}_{lambda_gan:g}.pgsr"
            shutil.copy(folder / f"warm_{variant}.pgsr", run)
            config = TrainConfig(steps=args.warmup + args.gan_steps, lambda_gan=lambda_gan,
                                 **{**settings, "checkpoint_every": args.every})
            train_on(run, config, f"ProGAN joint λ {lambda_gan:g}, {variant}{tag}")
    wait(rows)  # the scorers' own lines first, then the table
    print(f"\ntraining done at {time.perf_counter() - start:.0f} s; scores:\n")
    scored_on = "[kind]" if kind == "mixed" else kind
    print(f"| model | steps (s) | {scored_on} PSNR | SSIM | F1 | precision | RMSE (nm) | sigma (nm) "
          "| lattice lock (2 px) | background texture (1e-3) | beads mean offset y / x (nm) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for row in rows:
        print(row.result(), flush=True)
    pool.shutdown()  # before the interpreter exits (else its wake-up pipe is already closed: a traceback)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
