"""Progressive-growing GAN training: the phase schedule (stabilise at the start resolution, then fade in
and stabilise each larger one), WGAN-GP with drift, the generator's EMA copy, exact resume mid-fade, and
several processes under torchrun (gradients averaged across ranks; rank 0 alone writes)."""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..devices import autocast, cpu_has_native_bf16
from ..modelfile import save_model
from ..models.progan import ProGANCritic, ProGANGenerator, resolutions
from ..pairs import Pairs
from .config import TrainConfig
from .events import EventKind, TrainingEvent
from .gan_losses import critic_loss, generator_loss
from .loop import TrainingDiverged, TrainResult, _from_rank_zero, _preview, prepare_run, stop_reason, validate
from .noise import NoiseModel, camera_noise, fit_noise_model, noise_couples


@dataclass(frozen=True)
class Phase:
    """Where the schedule is after `images` GAN images: resolution, fading or stable, and alpha."""

    resolution: int
    fading: bool
    alpha: float
    index: int  # position in the schedule (changes at every phase boundary)


def phase_schedule(config: TrainConfig) -> list[tuple[int, bool, int]]:
    """(resolution, fading, images) phases: the start resolution stable, then each larger resolution
    faded in and stabilised; training stays at the final resolution after the last phase."""
    images = max(1, int(round(config.phase_images * config.phase_scale)))
    levels = [r for r in resolutions(config.patch) if r >= config.start_resolution]
    phases = [(levels[0], False, images)]
    for resolution in levels[1:]:
        phases += [(resolution, True, images), (resolution, False, images)]
    return phases


def phase_at(config: TrainConfig, images_seen: int) -> Phase:
    """The phase after `images_seen` GAN images (alpha grows linearly through a fade)."""
    start = 0
    phases = phase_schedule(config)
    for index, (resolution, fading, images) in enumerate(phases):
        if images_seen < start + images:
            alpha = (images_seen - start) / images if fading else 1.0
            return Phase(resolution, fading, alpha, index)
        start += images
    return Phase(phases[-1][0], False, 1.0, len(phases))


def downsample(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool square patches to `resolution` (the way the networks' own paths halve)."""
    factor = images.shape[-1] // resolution
    return F.avg_pool2d(images, factor) if factor > 1 else images


def faded_real(images: torch.Tensor, alpha: float) -> torch.Tensor:
    """Real images during a fade: blend of the 2x2-pooled-and-upsampled images and the full ones."""
    if alpha >= 1.0:
        return images
    coarse = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2.0, mode="nearest")
    return coarse + (images - coarse) * alpha


def as_recorded(image: torch.Tensor, a: float, b: float, pooled: int, alpha: float,
                shape: str = "normal") -> torch.Tensor:
    """The generator's output as the camera would have recorded it at the current phase: the camera's noise
    at this resolution, cross-faded like the real images during a fade (so real and generated images carry
    the same noise, in level and in grain)."""
    return image + faded_real(camera_noise(image, a, b, pooled, shape), alpha)


def _optimizers(generator, critic, config: TrainConfig,
                warming: bool = False) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Karras's Adam (lr 1e-3, betas 0 and 0.99) for both networks; during the MAE warm-up the generator
    trains like the U-Net (default betas: without momentum MAE alone converged far slower) at `warmup_lr`."""
    def adam(module):
        return torch.optim.Adam(module.parameters(), lr=config.gan_lr, betas=(0.0, 0.99), eps=1e-8)

    if warming:
        return torch.optim.Adam(generator.parameters(), lr=config.warmup_lr), adam(critic)
    return adam(generator), adam(critic)


def warmup_lr_at(config: TrainConfig, step: int) -> float:
    """The warm-up's learning rate: cosine from `warmup_lr` down to a 50th of it at the warm-up's end, as
    the U-Net's (a function of the step, so resuming stays exact); constant for other schedules."""
    if config.lr_schedule != "cosine" or config.warmup_steps <= 0:
        return config.warmup_lr
    low = config.warmup_lr / 50
    return low + (config.warmup_lr - low) * (1 + math.cos(math.pi * min(step / config.warmup_steps, 1.0))) / 2


def ema_decay_at(config: TrainConfig, step: int) -> float:
    """The EMA's decay: 0 during the warm-up (copied as it is), then ramped up from 0.1 towards
    `ema_decay` as (1 + n) / (10 + n) after n GAN steps, so a short run's EMA is not mostly its warm-up."""
    gan_steps = step - config.warmup_steps
    return 0.0 if gan_steps < 0 else min(config.ema_decay, (1.0 + gan_steps) / (10.0 + gan_steps))


def rank_step_seed(seed: int, rank: int, step: int) -> int:
    """The random draws' seed of one rank's step under torchrun: distinct across ranks, and a resumed run
    draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _average_gradients(module: torch.nn.Module, world: int) -> None:
    """Mean gradient over ranks (plain all-reduce: DDP's hooks do not mix with the gradient penalty's
    double backward)."""
    if world == 1:
        return
    for parameter in module.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1.0 - decay)


def gan_step(generator, critic, g_opt, d_opt, low: torch.Tensor, real: torch.Tensor, config: TrainConfig,
             device: torch.device, world: int = 1, warming: bool = False,
             camera: Callable[[torch.Tensor], torch.Tensor] | None = None,
             critic_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, dict]:
    """One training step: `critic_steps` critic updates (WGAN-GP + drift), then one generator update
    (`gan_mode` loss; MAE alone while `warming`) on (low, real). Each critic update takes its own (low, real)
    batch from `critic_batches` (WGAN-GP's algorithm: N updates on one batch fit the critic to that batch);
    without them, (low, real). `camera` adds the camera's noise to what the critic sees of the generator's
    output (`critic_noise`). Returns the generator's loss and all loss terms."""
    values = {}
    seen = camera or (lambda image: image)  # what the critic sees of the generator's output
    critic_batches = critic_batches or [(low, real)] * config.critic_steps

    def critic_precision():
        return autocast(device, False, cpu_bf16=config.cpu_bf16)
    if not warming:
        for critic_low, critic_real in critic_batches:
            with torch.no_grad(), autocast(device, config.amp, training=True, cpu_bf16=config.cpu_bf16):
                fake = generator(critic_low)
            d_opt.zero_grad(set_to_none=True)
            # fp32 on GPUs (the penalty's double backward); bf16 on a CPU only when asked, as the critic is
            # most of a GAN step's time there
            with critic_precision():
                loss, values = critic_loss(critic, critic_low, critic_real, seen(fake.float()))
            loss.backward()
            _average_gradients(critic, world)
            d_opt.step()
    g_opt.zero_grad(set_to_none=True)
    with autocast(device, config.amp, training=True, cpu_bf16=config.cpu_bf16):
        fake = generator(low)
    fake = fake.float()
    if warming:
        loss = F.l1_loss(fake, real)
        values["mae"] = float(loss.detach())
    else:
        critic.requires_grad_(False)  # the generator's step needs no critic gradients
        with critic_precision():
            loss, more = generator_loss(critic, low, fake, real, config.gan_mode, config.lambda_gan,
                                        seen=seen(fake))
        critic.requires_grad_(True)
        values.update(more)
    loss.backward()
    _average_gradients(generator, world)
    g_opt.step()
    return loss, values


def diverged(validations: Sequence[dict], factor: float) -> dict | None:
    """The last validation, with the best earlier loss at its stage, if its loss is not finite or above
    `factor` times that best, else None. Only validations at the same stage (patch size in pixels) compare, as
    a growing GAN's losses differ between stages, so the first one at a stage is judged only for being finite.
    factor 0: never."""
    if not factor or not validations:
        return None
    last = validations[-1]
    earlier = [v["loss"] for v in validations[:-1] if v["resolution"] == last["resolution"]]
    best = {"best_loss": min(earlier)} if earlier else {}
    if not math.isfinite(last["loss"]) or (earlier and last["loss"] > factor * min(earlier)):
        return {**last, **best}
    return None


def divergence_note(record: dict) -> str:
    """What to tell the user about a run that diverged (a `history["divergences"]` entry)."""
    best = (f"over {record['factor']:g}x the run's best at this stage, {record['best_loss']:.4g}"
            if math.isfinite(record["loss"]) else "not a finite number")
    cause = record.get("cause") or f"validation loss {record['loss']:.4g}, {best}"
    kept = ("the last validated state before it" if record["restored_validated"]
            else "the state this run resumed from, saved between validations (not validated)"
            if record.get("restored_resumed") else "the state this run started from (nothing was validated before it)")
    return (f"training diverged at step {record['step']} ({cause}): the "
            f"model file holds step {record['restored_step']}, {kept}; resuming it would replay the same "
            "steps, so to go further start a new run with a smaller lambda_gan or gan_lr, or another seed")


def _on_cpu(tree):
    """A copy of a (nested) state dict with every tensor on the CPU (a snapshot that costs no GPU memory)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {key: _on_cpu(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_on_cpu(value) for value in tree)
    return tree


def _set_phase(phase: Phase, *networks) -> None:
    for network in networks:
        network.resolution, network.alpha = phase.resolution, phase.alpha if phase.fading else 1.0


def iter_progan_training(config: TrainConfig, pairs: Sequence[Pairs], output: str | os.PathLike,
                         validation: Sequence[Pairs] = (), resume: str | os.PathLike | None = None,
                         should_stop: Callable[[], bool] | None = None, files: Sequence[str] = (),
                         preview: np.ndarray | None = None,
                         preview_every: int = 0) -> Generator[TrainingEvent, None, TrainResult]:
    """Train the conditional ProGAN; events and result as `loop.iter_training`. The model file holds the
    generator's EMA copy (used for inference); its training state holds both networks and the phase."""
    output = Path(output)
    if config.steps is not None and config.steps <= config.warmup_steps:  # (a recipe's 5000 beside --steps 3)
        warnings.warn(f"steps {config.steps} end within the ProGAN's MAE warm-up of {config.warmup_steps} steps: "
                      "no adversarial step is trained, so the model is its generator trained on MAE alone; give "
                      "more steps or a shorter warm-up (warmup_steps)", UserWarning, stacklevel=3)
    setup = prepare_run(config, pairs, validation, resume, files)
    device, rank, world, state, history = setup.device, setup.rank, setup.world, setup.state, setup.history
    history.setdefault("phases", [])
    torch.manual_seed(config.seed)
    in_channels = 1 + 2 * config.context
    generator = ProGANGenerator(in_channels, config.patch, config.width, resolution=config.start_resolution,
                                rot180_average=config.rot180_average)
    critic = ProGANCritic(in_channels + 1, config.patch, config.width, resolution=config.start_resolution)
    generator, critic = generator.to(device), critic.to(device)
    noise = None
    if config.critic_noise:  # a resumed run keeps its line (the fit may have changed since it was written)
        if "critic_noise" in history:
            model = NoiseModel(**history["critic_noise"])
        else:
            model = fit_noise_model(noise_couples(list(pairs) + list(validation), setup.train_refs))
            history["critic_noise"] = model.to_dict()
        noise = model.normalised(setup.normalization.high_lo, setup.normalization.high_hi)
    ema = copy.deepcopy(generator).requires_grad_(False)
    step = images_seen = cursor = 0
    elapsed_before = 0.0
    phase = phase_at(config, 0)
    optimizer_resolution = phase.resolution  # the resolution the Adam states belong to
    optimizer_warming = config.warmup_steps > 0  # and whether they are the warm-up's
    g_opt, d_opt = _optimizers(generator, critic, config, optimizer_warming)

    def restore(saved: dict, ema_weights: dict) -> None:
        """Networks, optimizers, schedule position and random state from a training state (a checkpoint's,
        or the snapshot a diverged run goes back to)."""
        nonlocal step, images_seen, cursor, phase, optimizer_resolution, optimizer_warming, g_opt, d_opt
        generator.load_state_dict(saved["generator"])
        critic.load_state_dict(saved["critic"])
        ema.load_state_dict(ema_weights)
        step, images_seen, cursor = int(saved["step"]), int(saved["images_seen"]), int(saved["cursor"])
        # the stage the weights were trained at, so a run that stops before its next step saves them as they
        # were (the next step moves on by itself); older checkpoints stored only the next step's
        phase = Phase(**saved["trained_phase"]) if "trained_phase" in saved else phase_at(config, images_seen)
        optimizer_resolution = int(saved["optimizer_resolution"])
        optimizer_warming = bool(saved.get("optimizer_warming", False))
        g_opt, d_opt = _optimizers(generator, critic, config, optimizer_warming)
        g_opt.load_state_dict(saved["generator_optimizer"])
        d_opt.load_state_dict(saved["critic_optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in saved:  # the penalty's and the critic noise's draws
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        _set_phase(phase, generator, critic, ema)

    if state is not None:
        restore(state, setup.checkpoint.network.state_dict())
        elapsed_before = float(state.get("elapsed_s", 0.0))
    _set_phase(phase, generator, critic, ema)
    if device.type == "cuda" or (config.cpu_bf16 and cpu_has_native_bf16()):  # faster bf16 convolutions
        for network in (generator, critic, ema):
            network.to(memory_format=torch.channels_last)

    def current_state(reason: str) -> dict:
        return {
            "step": step, "images_seen": images_seen, "cursor": cursor,
            "phase": vars(phase_at(config, images_seen)).copy(),  # what the next step trains
            "trained_phase": vars(phase).copy(),  # what the last step trained
            "optimizer_resolution": optimizer_resolution, "optimizer_warming": optimizer_warming,
            "generator": generator.state_dict(), "critic": critic.state_dict(),
            "generator_optimizer": g_opt.state_dict(), "critic_optimizer": d_opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "elapsed_s": elapsed_before + time.perf_counter() - t0,
            "train_refs": [list(r) for r in setup.train_refs], "validation_refs": [list(r) for r in setup.val_refs],
            "reason": reason}

    guarded = bool(config.divergence_factor) and setup.val_set is not None

    def snapshot(validated: bool, resumed: bool = False) -> dict | None:
        """Everything a diverged run goes back to: the training state, the EMA, the stage it was validated at
        and how long the history was (None when nothing can diverge: no check or no validation set)."""
        if not guarded:
            return None
        return {"state": _on_cpu(current_state("diverged")), "ema": _on_cpu(ema.state_dict()), "phase": phase,
                "validated": validated, "resumed": resumed,
                "history": {key: len(history[key]) for key in ("loss", "validation", "phases")}}

    def go_back(to: dict, record: dict) -> None:
        nonlocal phase
        restore(to["state"], to["ema"])
        phase = to["phase"]  # the stage it was validated at
        _set_phase(phase, generator, critic, ema)
        for key, length in to["history"].items():
            del history[key][length:]
        history.setdefault("divergences", []).append(
            {**record, "restored_step": step, "restored_validated": to["validated"],
             "restored_resumed": to["resumed"]})

    def wrecked() -> bool:
        """Weights gone to NaN or inf: between validations (Stop, a time limit, a checkpoint) they were saved
        over the last good model file."""
        return not all(torch.isfinite(value).all() for network in (generator, critic, ema)
                       for value in network.state_dict().values())

    def back_from_the_wreck() -> tuple[str, str]:
        """Go back to the last good state (reason and note of a diverged run), or refuse to save."""
        if good is None:
            raise TrainingDiverged(f"training diverged: the weights are not finite at step {step}; nothing "
                                   f"validated to go back to, so {output} was not written this step")
        go_back(good, {"step": step, "loss": float("nan"), "factor": config.divergence_factor,
                       "cause": "the weights are not finite"})
        return "diverged", divergence_note(history["divergences"][-1])

    def save(reason: str) -> Path:
        training_state = current_state(reason)
        history.update(step=step, seconds=training_state["elapsed_s"], images_seen=images_seen)
        metadata = {"config": config.to_dict(), "history": history, "provenance": setup.provenance,
                    "device": str(device), "world_size": world}
        return save_model(output, ema, setup.normalization, metadata, training_state)

    total = config.steps
    yield TrainingEvent(EventKind.STARTED, step, total, {
        "device": str(device), "world_size": world, "train_pairs": len(setup.train_refs),
        "validation_pairs": len(setup.val_refs), "resumed_from": str(resume) if resume else None,
        "resolution": phase.resolution})
    t0 = time.perf_counter()
    start_cursor, start_step, reason, note = cursor, step, "done", ""
    # a checkpoint resumed from is a validated state only if it was saved at a validation (Stop, Ctrl-C, a time
    # limit and checkpoints between validations save others)
    at_validation = bool(history["validation"]) and history["validation"][-1]["step"] == step
    good = snapshot(validated=state is not None and at_validation, resumed=state is not None)
    deadline = None if config.minutes is None else t0 + 60 * config.minutes - elapsed_before
    while total is None or step < total:
        reason = stop_reason(should_stop, deadline, world, device) or "done"
        if reason != "done":
            break
        warming = step < config.warmup_steps
        now = phase if warming else phase_at(config, images_seen)
        if now.resolution != optimizer_resolution or warming != optimizer_warming:  # fresh Adam states
            g_opt, d_opt = _optimizers(generator, critic, config, warming)
            if now.resolution != optimizer_resolution:
                history["phases"].append({"step": step, "images_seen": images_seen, "resolution": now.resolution})
            optimizer_resolution, optimizer_warming = now.resolution, warming
        phase = now
        if warming:
            for group in g_opt.param_groups:
                group["lr"] = warmup_lr_at(config, step)
        _set_phase(phase, generator, critic, ema)
        batch = config.batch_at(phase.resolution)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal cursor
            first = cursor * world + rank * batch  # disjoint patches per rank; the cursor makes resume exact
            cursor += batch
            lows, highs = zip(*(setup.train_set[i] for i in range(first, first + batch)))
            return (downsample(torch.stack(lows).to(device), phase.resolution),
                    faded_real(downsample(torch.stack(highs).to(device), phase.resolution), generator.alpha))

        # a batch of its own for each critic update; the generator's step takes the last one
        critic_batches = [next_batch() for _ in range(1 if warming else config.critic_steps)]
        low, real = critic_batches[-1]
        camera = None if noise is None else partial(as_recorded, a=noise[0], b=noise[1],
                                                    pooled=config.patch // phase.resolution, alpha=generator.alpha,
                                                    shape=config.critic_noise_shape)
        if world > 1:  # one seed would give every rank the same penalty points and critic noise
            torch.manual_seed(rank_step_seed(config.seed, rank, step))
        loss, values = gan_step(generator, critic, g_opt, d_opt, low, real, config, device, world, warming, camera,
                                critic_batches=None if warming else critic_batches)
        update_ema(ema, generator, ema_decay_at(config, step))
        step += 1
        if not warming:
            images_seen += batch * world
        history["loss"].append(float(loss.detach()))
        seconds = time.perf_counter() - t0
        rate = (cursor - start_cursor) * world / max(seconds, 1e-9)  # image pairs per second, all ranks
        # (from the time per step: a step of the GAN phase reads critic_steps batches, one of the warm-up one)
        eta = ((total - step) * seconds / max(step - start_step, 1) if total is not None
               else max(0.0, deadline - time.perf_counter()))
        yield TrainingEvent(EventKind.STEP, step, total, {
            "loss": history["loss"][-1], "patches_per_s": rate, "eta_s": eta,
            "lr": g_opt.param_groups[0]["lr"],
            "resolution": phase.resolution, "alpha": generator.alpha,
            "fading": phase.fading, "images_seen": images_seen, **values})
        if setup.val_set is not None and (step % config.validation_every == 0 or step == total):
            # scored against what it is trained towards: during a fade, the cross-faded high-exposure image
            metrics = validate(ema, setup.val_set, "mae", device,
                               resize=lambda t, r=phase.resolution: downsample(t, r),
                               target=lambda t, a=generator.alpha: faded_real(t, a))
            metrics["loss"] = _from_rank_zero(metrics["loss"], world, device)  # every rank decides alike
            history["validation"].append({"step": step, "resolution": phase.resolution, **metrics})
            yield TrainingEvent(EventKind.VALIDATION, step, total, metrics)
            failed = diverged(history["validation"], config.divergence_factor)
            if failed:  # a GAN that blew up: keep the last validated state, not the wreck
                go_back(good, {key: failed[key] for key in ("step", "loss", "best_loss") if key in failed}
                        | {"factor": config.divergence_factor})
                reason, note = "diverged", divergence_note(history["divergences"][-1])
                break
            good = None  # (one snapshot in memory at a time)
            good = snapshot(validated=True)
        if preview is not None and preview_every and step % preview_every == 0 and rank == 0:
            yield TrainingEvent(EventKind.PREVIEW, step, total,
                                {"image": _preview(ema, setup.normalization, config, device, preview)})
        if step % config.checkpoint_every == 0 and rank == 0 and step != total:
            if wrecked():
                reason, note = back_from_the_wreck()
                break
            yield TrainingEvent(EventKind.CHECKPOINT, step, total, {"path": str(save("checkpoint"))})
    if reason != "diverged" and wrecked():  # stopped or ended between validations
        reason, note = back_from_the_wreck()
    if ema.resolution < config.patch or ema.alpha < 1:  # (the default --model progan: 2000 steps grew it to 4 px)
        ungrown = (f"the generator has grown to {ema.resolution} of {config.patch} px"
                   f"{' (still fading in)' if ema.alpha < 1 else ''}: it learnt on patches averaged down to that "
                   "size and restores full frames at a scale it never saw; train longer (the phases take "
                   "phase_images images each) or start at the full size (start_resolution, as the progan-spots "
                   "recipe does)")
        note = f"{note}; {ungrown}" if note else ungrown
    path = save(reason) if rank == 0 else output
    if world > 1:
        dist.barrier()
    yield TrainingEvent(EventKind.FINISHED, step, total, {"path": str(path), "reason": reason,
                                                         "resolution": phase.resolution, "note": note})
    return TrainResult(path, step, history, reason, ema, note)
