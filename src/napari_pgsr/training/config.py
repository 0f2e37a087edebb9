"""One typed training configuration, read from and written to YAML or JSON; every CLI flag is a field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

LOSSES = ("mae", "mse", "bce")
MODELS = ("unet", "progan")
GAN_MODES = ("joint", "gan")
SCHEDULES = ("cosine", "plateau", "constant")
NOISE_SHAPES = ("gamma", "normal")
# settings that only one of the models reads (a ProGAN's rates are warmup_lr and gan_lr; its depth follows patch)
ONLY_FOR = {"unet": ("depth", "lr"),
            "progan": ("gan_mode", "lambda_gan", "gan_lr", "critic_steps", "start_resolution", "phase_images",
                       "phase_scale", "resolution_batches", "ema_decay", "warmup_steps", "warmup_lr",
                       "rot180_average", "critic_noise", "critic_noise_shape", "divergence_factor")}


def as_trained(stored: dict) -> dict:
    """A config stored in a checkpoint, with the fields added since it was written set to what that run
    used: the command line resumes with these unless told otherwise."""
    values = dict(stored)
    if values.get("model") == "progan":
        if values.get("warmup_steps", 0) > 0:  # before warmup_lr, the warm-up started at lr
            values.setdefault("warmup_lr", values.get("lr", 4e-4))
        values.setdefault("rot180_average", False)
        values.setdefault("critic_noise", False)
        values.setdefault("critic_noise_shape", "normal")  # the only shape before the field existed
    return values


def _typed(path: Path, name: str, value, kind: str):
    """A config file's value as its field's type: YAML reads 1e-3 (no dot) as a string, and a number given
    for a text field or text for a number would fail deep inside training."""
    if value is None and "None" in kind:
        return None
    expected = kind.split(" | ")[0]
    if expected == "bool" and (isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))):
        return bool(value)
    if expected in ("int", "float") and not isinstance(value, bool):
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if isinstance(number, (int, float)) and (expected == "float" or float(number).is_integer()):
            return float(number) if expected == "float" else int(number)
    if expected == "str" and isinstance(value, str):
        return value
    wanted = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}[expected]
    hint = " (YAML reads 4:32 as a number in base 60: quote it, '4:32')" if expected == "str" and isinstance(
        value, int) and name == "resolution_batches" else ""
    raise ValueError(f"{path}: {name} must be {wanted}{' or null' if 'None' in kind else ''}, got {value!r}{hint}")


@dataclass
class TrainConfig:
    """Settings of one training run (defaults follow CARE where it has one)."""

    model: str = field(default="unet", metadata={"help": "network architecture: unet or progan"})
    depth: int = field(default=2, metadata={"help": "U-Net depth (poolings)"})
    width: float | None = field(default=None, metadata={
        "help": "U-Net: channels of the first level (default 32); ProGAN: multiplier of Karras's channels "
                "(default 1.0: 512 at 4-32 px ... 64 at 256 px)"})
    loss: str = field(default="mae", metadata={"help": "mae, mse, or bce (targets scaled to [0, 1])"})
    offset: bool | None = field(default=None, metadata={
        "help": "add a random offset 0..offset_max to both images of a pair (default: on for mae on raw camera "
                "counts; float and 8-bit movies train without it)"})
    offset_max: int = field(default=200, metadata={"help": "largest random offset, in camera units"})
    context: int = field(default=0, metadata={"help": "neighbouring low frames on each side as extra inputs"})
    patch: int | None = field(default=None, metadata={
        "help": "patch size in pixels (default 64; ProGAN: the final resolution, default 256)"})
    batch: int = field(default=16, metadata={"help": "patches per step (per process under torchrun)"})
    steps: int | None = field(default=2000, metadata={"help": "training steps"})
    minutes: float | None = field(default=None, metadata={"help": "stop after this many minutes instead"})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate"})
    lr_schedule: str = field(default="cosine", metadata={"help": "cosine, plateau or constant (a cosine over "
                                                                  "a time budget alone, --minutes without --steps, "
                                                                  "runs as plateau) [default: cosine]"})
    validation_fraction: float = field(default=0.1, metadata={
        "help": "pairs held out: the last movies whole if they hold about this share, else time blocks"})
    validation_every: int = field(default=100, metadata={"help": "steps between validations"})
    validation_patches: int = field(default=64, metadata={"help": "fixed validation patches"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    seed: int = field(default=0, metadata={"help": "random seed (patches, initial weights)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps"})
    amp: bool = field(default=True, metadata={"help": "bf16/fp16 autocast on GPU"})
    cpu_bf16: bool = field(default=False, metadata={
        "help": "bf16 autocast on CPUs that compute bf16 in hardware (AMX, AVX512-BF16; on a 2-core AMX machine "
                "U-Net training 2.5-2.9x, ProGAN GAN steps at 64 px 1.9x faster); ignored on other CPUs, where it "
                "would be slower"})
    low_first: bool | None = field(default=None, metadata={"help": "phase of alternating movies (default: detect)"})
    recipe: str = field(default="", metadata={
        "help": "the recipe the run started from (recorded in the model file; the other fields hold what was "
                "changed)"})
    block_pairs: int = field(default=16, metadata={"help": "pairs per validation block within one movie"})
    # ProGAN (Karras et al. 2018); ignored by the U-Net
    gan_mode: str = field(default="joint", metadata={
        "help": "ProGAN generator loss: joint (MAE + lambda_gan * adversarial, SRGAN) or gan (adversarial)"})
    lambda_gan: float = field(default=1e-3, metadata={"help": "weight of the adversarial term in joint mode"})
    gan_lr: float = field(default=1e-3, metadata={"help": "ProGAN Adam learning rate (betas 0, 0.99)"})
    critic_steps: int = field(default=1, metadata={"help": "critic updates per generator update"})
    start_resolution: int = field(default=4, metadata={"help": "ProGAN: first resolution trained (skip below)"})
    phase_images: int = field(default=600_000, metadata={
        "help": "ProGAN: images the generator trains on per fade-in and per stabilisation phase (Karras: 600k, "
                "with one critic update per generator update)"})
    phase_scale: float = field(default=1.0, metadata={"help": "ProGAN: multiplies phase_images (e.g. 0.01)"})
    resolution_batches: str = field(default="", metadata={
        "help": "ProGAN: batch per resolution, e.g. '4:64,8:64,16:32' (others: batch)"})
    ema_decay: float = field(default=0.999, metadata={"help": "ProGAN: decay of the generator's EMA copy"})
    warmup_steps: int = field(default=0, metadata={
        "help": "ProGAN: generator steps with MAE alone (U-Net-style warm-up) before the critic joins"})
    rot180_average: bool = field(default=False, metadata={
        "help": "ProGAN: average the generator's output with its answer for the input turned by 180 degrees "
                "(turned back), so it cannot shift the image (2x generator cost)"})
    critic_noise: bool = field(default=False, metadata={
        "help": "ProGAN: the critic sees the generator's output with the camera's noise added (fitted from "
                "the training frames; AmbientGAN), so inventing noise earns the generator nothing (needs "
                "--no-offset: the noise model holds for the camera's own levels)"})
    critic_noise_shape: str = field(default="gamma", metadata={
        "help": "ProGAN: the critic noise's distribution: gamma (skewed like low-light camera noise) or "
                "normal"})
    divergence_factor: float = field(default=3.0, metadata={
        "help": "ProGAN: stop when a validation loss exceeds this many times the run's best at the same "
                "training stage (patch size in px), or is not finite: a GAN that blew up; the model file then "
                "holds the last validated state (0: never; runs without validation data are not checked)"})
    warmup_lr: float = field(default=4e-3, metadata={
        "help": "ProGAN: Adam learning rate of the MAE warm-up (equalized-LR weights are stored as N(0, 1), "
                "so a step moves them ~10x less, relative to their size, than lr moves the U-Net's)"})

    def __post_init__(self) -> None:
        problems = []
        if self.model not in MODELS:
            problems.append(f"model must be one of {MODELS}, got {self.model!r}")
        progan = self.model == "progan"
        if self.width is None:
            self.width = 1.0 if progan else 32
        if self.patch is None:
            self.patch = 256 if progan else 64
        if not progan:
            if float(self.width) != int(self.width):
                problems.append(f"U-Net width is a number of channels, got {self.width}")
            self.width = int(self.width)
        if self.gan_mode not in GAN_MODES:
            problems.append(f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}")
        if progan:
            problems += self._progan_problems()
        else:
            problems += [f"{name} is a ProGAN setting (model progan)" for name in ("rot180_average", "critic_noise")
                         if getattr(self, name)]
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        for name in ("depth", "patch", "batch", "validation_every", "checkpoint_every", "validation_patches",
                     "block_pairs") + (() if progan else ("width",)):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context < 0:
            problems.append(f"context must be >= 0, got {self.context}")
        for name in ("lr", "gan_lr", "warmup_lr"):  # Adam at rate 0 would train nothing, silently
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.steps is None and self.minutes is None:
            problems.append("give steps or minutes")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            problems.append(f"minutes must be > 0, got {self.minutes}")
        if self.offset_max < 0:
            problems.append(f"offset_max must be >= 0, got {self.offset_max}")
        if not progan and self.patch % 2**self.depth:
            problems.append(f"patch {self.patch} must be a multiple of 2**depth = {2**self.depth}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def _progan_problems(self) -> list[str]:
        problems = []
        powers = [2**k for k in range(2, 11)]
        if self.patch not in powers[1:]:
            problems.append(f"ProGAN patch (final resolution) must be a power of two from 8 to 1024, got {self.patch}")
        if self.start_resolution not in powers or self.start_resolution > self.patch:
            problems.append(f"start_resolution must be a power of two from 4 to patch {self.patch}, "
                            f"got {self.start_resolution}")
        if not self.width > 0:
            problems.append(f"ProGAN width multiplier must be > 0, got {self.width}")
        if self.loss != "mae":
            problems.append("ProGAN's joint loss uses MAE: loss must be 'mae'")
        try:
            self.batch_at(4)
        except ValueError as err:
            problems.append(str(err))
        if self.critic_noise_shape not in NOISE_SHAPES:
            problems.append(f"critic_noise_shape must be one of {NOISE_SHAPES}, got {self.critic_noise_shape!r}")
        if self.critic_noise and self.offset_enabled:
            problems.append("critic_noise needs the camera's own levels: turn the random offset off (offset false, "
                            "--no-offset)")
        if self.divergence_factor and not self.divergence_factor > 1:
            problems.append(f"divergence_factor must be 0 (never stop) or above 1, got {self.divergence_factor}")
        for name in ("critic_steps", "phase_images"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:  # a negative decay would extrapolate the weights
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("lambda_gan", "warmup_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.phase_scale > 0:
            problems.append(f"phase_scale must be > 0, got {self.phase_scale}")
        return problems

    def batch_at(self, resolution: int) -> int:
        """ProGAN batch size at `resolution` (from resolution_batches, else batch)."""
        sizes = {}
        for item in filter(None, (part.strip() for part in self.resolution_batches.split(","))):
            try:
                key, value = item.split(":")
                sizes[int(key)] = int(value)
            except ValueError:
                raise ValueError(f"resolution_batches must look like '4:64,8:32', got {self.resolution_batches!r}")
        wrong = [f"{key}:{value}" for key, value in sizes.items() if value < 1 or key < 4 or key & (key - 1)]
        if wrong:  # (a batch of 0 failed deep in training; 5 px, a resolution no ProGAN has, was a silent typo)
            raise ValueError(f"resolution_batches: {', '.join(wrong)}: each must be a resolution (a power of two, "
                             "4 or more) and a batch of at least 1")
        return sizes.get(resolution, self.batch)

    @property
    def offset_enabled(self) -> bool:
        """The seed's random offset: on by default for MAE only."""
        return self.loss == "mae" if self.offset is None else bool(self.offset)

    def to_dict(self) -> dict:
        """Plain dict (for YAML/JSON and model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict, naming any key that is not a field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        """Write as YAML (.yaml/.yml) or JSON (.json)."""
        from ..atomic import atomic_path

        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix.lower() == ".json" else yaml.safe_dump(
            self.to_dict(), sort_keys=False)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return path

    @classmethod
    def read_values(cls, path: str | Path) -> dict:
        """The fields written in a YAML or JSON config file (by save or by hand), and only those, so that
        what the file leaves out can come from elsewhere (a recipe, a checkpoint)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        try:
            values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
            raise ValueError(f"{path}: not valid {kind}: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {unknown}")
        kinds = {f.name: f.type for f in fields(cls)}  # (strings: the module's annotations are postponed)
        return {name: _typed(path, name, value, kinds[name]) for name, value in values.items()}

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read YAML or JSON written by save (or by hand); fields it leaves out take their defaults."""
        try:
            return cls.from_dict(cls.read_values(path))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from err
