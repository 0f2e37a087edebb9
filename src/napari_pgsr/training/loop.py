"""The training loop: deterministic patches, Adam with a schedule, validation, atomic checkpoints, exact
resume, and DistributedDataParallel when launched by torchrun (rank 0 alone writes)."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ..data import PatchDataset, data_provenance, fit_normalization, split_refs
from .. import devices
from ..devices import autocast, pick_device
from ..generators import run_to_end
from ..heap import reusing_freed_memory
from ..modelfile import load_model, save_model
from ..models import build_model
from ..pairs import Pairs
from .config import TrainConfig
from .events import EventKind, TrainingEvent
from .losses import pixel_loss


@dataclass
class TrainResult:
    """Where the model went, how far it got, and why it ended ('done', 'stopped', 'time', or for a GAN
    'diverged')."""

    path: Path
    step: int
    history: dict
    reason: str
    network: torch.nn.Module | None = None  # the trained network (this rank's copy under torchrun)
    note: str = ""  # what the user should know about how it ended (a diverged GAN), else empty


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes in the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same step)."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value)
    return bool(value.item() > 0)


def _from_rank_zero(value: float, world: int, device: torch.device) -> float:
    """Rank 0's value on every rank (keeps plateau schedules in step)."""
    if world == 1:
        return value
    tensor = torch.tensor([value], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(tensor, 0)
    return float(tensor.item())


def stop_reason(should_stop: Callable[[], bool] | None, deadline: float | None, world: int,
                device: torch.device) -> str | None:
    """'stopped' (asked to), 'time' (past the deadline) or None, agreed by every rank."""
    stop = bool(should_stop and should_stop())
    out_of_time = deadline is not None and time.perf_counter() >= deadline
    if not _any_rank(stop or out_of_time, world, device):
        return None
    return "stopped" if _any_rank(stop, world, device) else "time"


FIXED_ON_RESUME = ("model", "depth", "width", "loss", "offset", "offset_max", "context", "patch", "batch", "seed",
                   "lr", "lr_schedule", "validation_fraction", "block_pairs", "gan_mode", "lambda_gan", "gan_lr",
                   "critic_steps", "start_resolution", "phase_images", "phase_scale", "resolution_batches",
                   "ema_decay", "warmup_steps", "warmup_lr", "rot180_average",
                   "critic_noise", "critic_noise_shape")


def check_resumable(stored: dict, config: TrainConfig, path) -> None:
    """Resuming is exact only with the settings the checkpoint was trained with (steps, minutes and the
    validation/checkpoint intervals may change; so may the device, amp and cpu_bf16, which are ways of running
    rather than settings of the model, but then the continuation is not bit-for-bit the same)."""
    stored = dict(stored)
    if "offset" in stored:  # compared as applied: None is "on for MAE", as the command line stores it
        stored["offset"] = stored.get("loss", "mae") == "mae" if stored["offset"] is None else bool(stored["offset"])
    applied = {name: config.offset_enabled if name == "offset" else getattr(config, name) for name in FIXED_ON_RESUME}
    changed = [f"{name}: {stored.get(name)!r} -> {applied[name]!r}" for name in FIXED_ON_RESUME
               if name in stored and stored[name] != applied[name]]
    if changed:
        raise ValueError(f"{path} was trained with other settings ({'; '.join(changed)}); resume with the "
                         "stored ones (the command line takes them from the checkpoint unless you override them)")


def architecture_for(config: TrainConfig) -> dict:
    """Network description from the config (BCE: sigmoid output, no residual)."""
    return {"name": config.model, "in_channels": 1 + 2 * config.context, "depth": config.depth,
            "width": config.width, "residual": config.loss != "bce",
            "output_activation": "sigmoid" if config.loss == "bce" else "linear"}


def _split(config: TrainConfig, pairs: list[Pairs], validation: list[Pairs]) -> tuple[list, list]:
    if validation:  # separate validation movies: all of them validate, all training movies train
        n = len(pairs)
        return ([(m, p) for m in range(n) for p in range(len(pairs[m]))],
                [(n + m, p) for m in range(len(validation)) for p in range(len(validation[m]))])
    return split_refs(pairs, config.validation_fraction, config.block_pairs, gap=1 + config.context)


def _fingerprint(provenance: dict) -> tuple:
    return tuple(provenance["names"]), tuple(provenance["pairs"]), tuple(provenance["first_pair_sha1"])


@torch.no_grad()
def validate(network: torch.nn.Module, dataset: PatchDataset, loss_name: str, device: torch.device,
             batch: int = 16, resize: Callable[[torch.Tensor], torch.Tensor] | None = None,
             target: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Loss, PSNR and SSIM (normalised units, data range 1) over the fixed validation patches (`resize`:
    applied to both images first, e.g. to a growing GAN's current resolution; `target`: to the high-exposure
    image after it, e.g. the cross-fade the GAN is trained towards during a fade)."""
    network.eval()
    losses, psnrs, ssims = [], [], []
    for start in range(0, len(dataset), batch):
        lows, highs = zip(*(dataset[i] for i in range(start, min(start + batch, len(dataset)))))
        x, y = torch.stack(lows).to(device), torch.stack(highs).to(device)
        if resize is not None:
            x, y = resize(x), resize(y)
        if target is not None:
            y = target(y)
        raw = network(x).float()
        prediction = network.activate(raw)
        losses.append(pixel_loss(loss_name, raw, prediction, y).item() * len(lows))
        for out, truth in zip(prediction.cpu().numpy()[:, 0], y.cpu().numpy()[:, 0]):
            psnrs.append(peak_signal_noise_ratio(truth, out, data_range=1.0))
            side = min(truth.shape)
            window = min(7, side if side % 2 else side - 1)  # a growing GAN validates 4 x 4 images too
            ssims.append(structural_similarity(truth, out, data_range=1.0, win_size=window)
                         if window >= 3 else float("nan"))
    network.train()
    return {"loss": float(sum(losses) / len(dataset)), "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


class TrainingDiverged(ValueError):
    """The weights went to NaN or inf (a learning rate far too high): the run stops without saving them."""


@dataclass
class RunSetup:
    """What every training loop needs before its first step (fresh or resumed)."""

    device: torch.device
    rank: int
    world: int
    provenance: dict
    train_refs: list
    val_refs: list
    normalization: object
    history: dict
    state: dict | None
    checkpoint: object
    train_set: PatchDataset
    val_set: PatchDataset | None


def _offset_max(config: TrainConfig, pairs: Sequence[Pairs]) -> int:
    """The random offset's reach: it is in camera units, so by default (offset None) it is added to raw
    camera counts only. On a float movie scaled 0..1 an offset of up to 200 left the frames as noise to the
    network (validation PSNR -1.5 dB after 150 steps, against 15.0 without)."""
    if not config.offset_enabled:
        return 0
    kinds = sorted({str(np.dtype(p.low.dtype)) for p in pairs} | {str(np.dtype(p.high.dtype)) for p in pairs})
    counts = all(np.dtype(kind).kind in "ui" and np.dtype(kind).itemsize >= 2 for kind in kinds)
    if config.offset is None and not counts:
        warnings.warn(f"the random offset (0..{config.offset_max} camera units) is for raw camera counts; these "
                      f"frames hold {', '.join(kinds)} values: training without it (offset true, --offset, adds it "
                      "anyway)", RuntimeWarning, stacklevel=4)
        return 0
    return config.offset_max


def prepare_run(config: TrainConfig, pairs: Sequence[Pairs], validation: Sequence[Pairs],
                resume: str | os.PathLike | None, files: Sequence[str]) -> RunSetup:
    """Device and process group, the train/validation split and normalisation (the checkpoint's own when
    resuming, after checking that data and settings match), and the patch datasets."""
    pairs, validation = list(pairs), list(validation)
    everything = pairs + validation
    device = pick_device(config.device)
    if config.cpu_bf16 and device.type == "cpu" and not devices.cpu_has_native_bf16():  # as autocast decides
        warnings.warn("cpu_bf16 ignored: this CPU has no hardware bf16 (AMX, AVX512-BF16), where bf16 would be "
                      "slower than fp32; training in fp32", RuntimeWarning, stacklevel=3)
    rank, world = _distributed(device)
    provenance = data_provenance(everything, files)
    state, checkpoint, history = None, None, {"loss": [], "validation": [], "step": 0, "seconds": 0.0}
    if resume is not None:
        checkpoint = load_model(resume)
        state = checkpoint.training_state
        if state is None:
            raise ValueError(f"{resume} holds no training state (a final model exported without it); "
                             "resume from a checkpoint written during training")
        stored = checkpoint.metadata["provenance"]
        if _fingerprint(stored) != _fingerprint(provenance):
            raise ValueError(f"{resume} was trained on {stored['names']} ({stored['pairs']} pairs); the data "
                             f"given now differ ({provenance['names']}, {provenance['pairs']} pairs), so the "
                             "stored train/validation split would not hold")
        check_resumable(checkpoint.metadata["config"], config, resume)
        train_refs = [tuple(r) for r in state["train_refs"]]
        val_refs = [tuple(r) for r in state["validation_refs"]]
        normalization, history = checkpoint.normalization, checkpoint.metadata["history"]
    else:
        train_refs, val_refs = _split(config, pairs, validation)
        normalization = fit_normalization(everything, train_refs, seed=config.seed)
    offset_max = _offset_max(config, everything)
    # the offset as applied to these data (the settings alone do not say: on a float movie the default adds
    # none, and --offset on resuming added one the checkpoint never had)
    applied_before = history.setdefault("offset_applied", offset_max)
    if applied_before != offset_max:
        raise ValueError(f"{resume} was trained with a random offset of 0..{applied_before} camera units on these "
                         f"data; the settings given now add 0..{offset_max}: resume with the stored ones")
    common = {"patch_size": config.patch, "normalization": normalization, "seed": config.seed,
              "context": config.context}
    train_set = PatchDataset(everything, split="train", refs=train_refs, length=2**62,
                             offset_max=offset_max, **common)
    val_set = PatchDataset(everything, split="validation", refs=val_refs, length=config.validation_patches,
                           **common) if val_refs else None
    return RunSetup(device, rank, world, provenance, train_refs, val_refs, normalization, history, state,
                    checkpoint, train_set, val_set)


def train(config: TrainConfig, pairs: Sequence[Pairs], output: str | os.PathLike,
          validation: Sequence[Pairs] = (), resume: str | os.PathLike | None = None,
          progress: Callable[[TrainingEvent], None] | None = None, should_stop: Callable[[], bool] | None = None,
          files: Sequence[str] = (), preview: np.ndarray | None = None, preview_every: int = 0) -> TrainResult:
    """Train a restoration model on low/high pairs and write it to `output` (a .pgsr model file).

    `resume` continues a checkpoint exactly: weights, optimizer, schedule, step, RNG and the stored
    train/validation split. `progress` receives TrainingEvents; `should_stop()` ends at the next step.
    `preview` (raw low frames, C x Y x X with the context) is restored every `preview_every` steps.
    """
    return run_to_end(iter_training(config, pairs, output, validation, resume, should_stop, files, preview,
                                    preview_every), progress)


def _preview(network, normalization, config: TrainConfig, device, frames: np.ndarray) -> np.ndarray:
    """The current network's restoration of `frames` (C x Y x X raw low), in high-exposure units."""
    from ..inference import Restorer
    from ..modelfile import ModelFile

    model = ModelFile(network, normalization, {"config": config.to_dict()})
    try:
        return Restorer(model, tile=256, device=str(device))(frames)
    finally:
        network.train()


def iter_training(config: TrainConfig, pairs: Sequence[Pairs], output: str | os.PathLike,
                  validation: Sequence[Pairs] = (), resume: str | os.PathLike | None = None,
                  should_stop: Callable[[], bool] | None = None, files: Sequence[str] = (),
                  preview: np.ndarray | None = None,
                  preview_every: int = 0) -> Generator[TrainingEvent, None, TrainResult]:
    """`train` as a generator of TrainingEvents that returns the TrainResult (for GUI workers)."""
    arguments = (config, pairs, output, validation, resume, should_stop, files, preview, preview_every)
    # kept allocations: no page faults for every step on a CPU (U-Net steps ~7% faster; see heap.py)
    with reusing_freed_memory(pick_device(config.device).type == "cpu"):
        if config.model == "progan":
            from .progan_loop import iter_progan_training

            return (yield from iter_progan_training(*arguments))
        return (yield from _iter_unet_training(*arguments))


def _iter_unet_training(config: TrainConfig, pairs: Sequence[Pairs], output: str | os.PathLike,
                        validation: Sequence[Pairs], resume: str | os.PathLike | None,
                        should_stop: Callable[[], bool] | None, files: Sequence[str], preview: np.ndarray | None,
                        preview_every: int) -> Generator[TrainingEvent, None, TrainResult]:
    output = Path(output)
    setup = prepare_run(config, pairs, validation, resume, files)
    device, rank, world = setup.device, setup.rank, setup.world
    train_refs, val_refs, normalization = setup.train_refs, setup.val_refs, setup.normalization
    state, history, checkpoint, provenance = setup.state, setup.history, setup.checkpoint, setup.provenance
    train_set, val_set = setup.train_set, setup.val_set

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    # channels_last: faster convolutions on GPUs and with oneDNN on CPUs (73 -> ~90 patches/s here)
    network = build_model(architecture_for(config)).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    # a time budget alone (no step count): a plateau schedule. A cosine over the time was tried: 10 CPU minutes
    # then drew AP2 spots 94.8 nm wide against 80.1 (results/quality_10min_cpu_time_cosine.md); the spots
    # sharpen late in training, and an early decay freezes them wide.
    schedule = config.lr_schedule if config.steps is not None or config.lr_schedule != "cosine" else "plateau"
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=config.lr / 50)
                 if schedule == "cosine" else torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                                                         patience=5)
                 if schedule == "plateau" else None)
    step, elapsed_before = 0, 0.0
    saved_step = None  # the last step whose model is in `output`
    if state is not None:
        network.load_state_dict(checkpoint.network.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        if Path(resume).resolve() == Path(output).resolve():
            saved_step = step
        same_schedule = state.get("scheduler") and state.get("schedule", schedule) == schedule
        if scheduler is not None and same_schedule:
            scheduler.load_state_dict(state["scheduler"])
        # a timed run given a number of steps, or a run given more (or fewer) steps: on to the cosine of that
        # many steps. torch's cosine steps from the current rate, so a finished run resumed for more steps
        # would train all of them at its floor (lr / 50) if only T_max changed
        if schedule == "cosine" and not (same_schedule and scheduler.T_max == config.steps):
            scheduler.T_max, scheduler.last_epoch = config.steps, step
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (
                    1 + math.cos(math.pi * min(step, config.steps) / config.steps)) / 2
        torch.set_rng_state(state["torch_rng"])
    model = network
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)

    def diverged(what: str) -> None:
        """Weights gone to NaN or inf (a learning rate far too high): stop without writing them over the last
        good checkpoint."""
        kept = (f"{output} holds the checkpoint of step {saved_step}" if saved_step is not None
                else "no model file was written")
        raise TrainingDiverged(f"training diverged: {what} at step {step} (a learning rate of {config.lr:g} "
                               f"too high?); {kept}")

    def save(reason: str) -> Path:
        if not all(torch.isfinite(value).all() for value in network.state_dict().values()):
            diverged("the weights are not finite")
        training_state = {"step": step, "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler is not None else {},
                          "torch_rng": torch.get_rng_state(), "elapsed_s": elapsed_before + time.perf_counter() - t0,
                          "train_refs": [list(r) for r in train_refs],
                          "validation_refs": [list(r) for r in val_refs], "reason": reason, "schedule": schedule}
        history.update(step=step, seconds=training_state["elapsed_s"])
        metadata = {"config": config.to_dict(), "history": history, "provenance": provenance,
                    "device": str(device), "world_size": world}
        return save_model(output, network, normalization, metadata, training_state)

    total = config.steps
    yield TrainingEvent(EventKind.STARTED, step, total, {
        "device": str(device), "world_size": world, "train_pairs": len(train_refs),
        "validation_pairs": len(val_refs), "resumed_from": str(resume) if resume else None})
    t0 = time.perf_counter()
    start_step, reason = step, "done"
    deadline = None if config.minutes is None else t0 + 60 * config.minutes - elapsed_before
    model.train()
    while total is None or step < total:
        reason = stop_reason(should_stop, deadline, world, device) or "done"
        if reason != "done":
            break
        first = (step * world + rank) * config.batch  # item indices fix each patch: resumable, rank-disjoint
        lows, highs = zip(*(train_set[i] for i in range(first, first + config.batch)))
        x, y = torch.stack(lows).to(device), torch.stack(highs).to(device)
        x = x.to(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, config.amp, training=True, cpu_bf16=config.cpu_bf16):
            raw = model(x)
        raw = raw.float()
        loss = pixel_loss(config.loss, raw, network.activate(raw), y)
        loss.backward()
        optimizer.step()
        if schedule == "cosine":
            scheduler.step()
        step += 1
        history["loss"].append(float(loss.item()))
        seconds = time.perf_counter() - t0
        rate = (step - start_step) * config.batch * world / max(seconds, 1e-9)
        eta = ((total - step) * config.batch * world / rate if total is not None
               else max(0.0, deadline - time.perf_counter()))
        yield TrainingEvent(EventKind.STEP, step, total, {"loss": history["loss"][-1], "patches_per_s": rate,
                                                         "eta_s": eta, "lr": optimizer.param_groups[0]["lr"]})
        if val_set is not None and (step % config.validation_every == 0 or step == total):
            metrics = validate(network, val_set, config.loss, device)
            history["validation"].append({"step": step, **metrics})
            agreed = _from_rank_zero(metrics["loss"], world, device)  # every rank decides alike
            if not math.isfinite(agreed):
                diverged(f"the validation loss is {agreed}")
            if schedule == "plateau":
                scheduler.step(agreed)
            yield TrainingEvent(EventKind.VALIDATION, step, total, metrics)
        if preview is not None and preview_every and step % preview_every == 0 and rank == 0:
            image = _preview(network, normalization, config, device, preview)
            yield TrainingEvent(EventKind.PREVIEW, step, total, {"image": image})
        if step % config.checkpoint_every == 0 and rank == 0 and step != total:
            yield TrainingEvent(EventKind.CHECKPOINT, step, total, {"path": str(save("checkpoint"))})
            saved_step = step
    path = save(reason) if rank == 0 else output
    if world > 1:
        dist.barrier()
    yield TrainingEvent(EventKind.FINISHED, step, total, {"path": str(path), "reason": reason})
    return TrainResult(path, step, history, reason, network)


def throughput_note(result: TrainResult, batch: int) -> str:
    """One line summary for logs."""
    seconds = max(result.history.get("seconds", 0.0), 1e-9)
    return f"{result.step} steps in {seconds:.0f} s ({result.step * batch / seconds:.0f} patches/s)"

