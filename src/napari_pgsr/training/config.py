"""One typed training configuration, read from and written to YAML or JSON; every CLI flag is a field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

LOSSES = ("mae", "mse", "bce")
SCHEDULES = ("cosine", "plateau", "constant")


@dataclass
class TrainConfig:
    """Settings of one training run (defaults follow CARE where it has one)."""

    model: str = field(default="unet", metadata={"help": "network architecture"})
    depth: int = field(default=2, metadata={"help": "U-Net depth (poolings)"})
    width: int = field(default=32, metadata={"help": "channels of the first U-Net level"})
    loss: str = field(default="mae", metadata={"help": "mae, mse, or bce (targets scaled to [0, 1])"})
    offset: bool | None = field(default=None, metadata={
        "help": "add a random offset 0..offset_max to both images of a pair (default: on for mae)"})
    offset_max: int = field(default=200, metadata={"help": "largest random offset, in camera units"})
    context: int = field(default=0, metadata={"help": "neighbouring low frames on each side as extra inputs"})
    patch: int = field(default=64, metadata={"help": "patch size in pixels"})
    batch: int = field(default=16, metadata={"help": "patches per step (per process under torchrun)"})
    steps: int | None = field(default=2000, metadata={"help": "training steps"})
    minutes: float | None = field(default=None, metadata={"help": "stop after this many minutes instead"})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate"})
    lr_schedule: str = field(default="cosine", metadata={"help": "cosine, plateau or constant"})
    validation_fraction: float = field(default=0.1, metadata={"help": "pairs held out (one movie: time blocks)"})
    validation_every: int = field(default=100, metadata={"help": "steps between validations"})
    validation_patches: int = field(default=64, metadata={"help": "fixed validation patches"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    seed: int = field(default=0, metadata={"help": "random seed (patches, initial weights)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps"})
    amp: bool = field(default=True, metadata={"help": "bf16/fp16 autocast on GPU"})
    low_first: bool | None = field(default=None, metadata={"help": "phase of alternating movies (default: detect)"})
    block_pairs: int = field(default=16, metadata={"help": "pairs per validation block within one movie"})

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        for name in ("depth", "width", "patch", "batch", "validation_every", "checkpoint_every",
                     "validation_patches", "block_pairs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context < 0:
            problems.append(f"context must be >= 0, got {self.context}")
        if self.steps is None and self.minutes is None:
            problems.append("give steps or minutes")
        if self.patch % 2**self.depth:
            problems.append(f"patch {self.patch} must be a multiple of 2**depth = {2**self.depth}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

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
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else yaml.safe_dump(
            self.to_dict(), sort_keys=False)
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read YAML or JSON written by save (or by hand)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        try:
            values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(values).__name__}")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
