"""The one typed channel from the training loop to its front ends (CLI progress bar, napari widget)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class EventKind(Enum):
    """What happened."""

    STARTED = "started"  # values: device, total_steps, train_pairs, validation_pairs, resumed_from
    STEP = "step"  # values: loss, lr, patches_per_s, eta_s
    VALIDATION = "validation"  # values: loss, psnr, ssim
    CHECKPOINT = "checkpoint"  # values: path
    PREVIEW = "preview"  # values: image (the current model's restoration of the preview frame)
    FINISHED = "finished"  # values: path, reason ('done', 'stopped', 'time', 'diverged'), note (ProGAN)


@dataclass
class TrainingEvent:
    """One update: a kind, the step it belongs to, and its values."""

    kind: EventKind
    step: int
    total_steps: int | None
    values: dict = field(default_factory=dict)
