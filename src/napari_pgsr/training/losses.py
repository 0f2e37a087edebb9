"""Pixel losses for restoration. BCE compares sigmoid outputs with targets clipped to [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_loss(name: str, logits: torch.Tensor, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MAE or MSE on the prediction, or BCE on the logits against the target scaled to [0, 1]."""
    if name == "mae":
        return F.l1_loss(prediction, target)
    if name == "mse":
        return F.mse_loss(prediction, target)
    if name == "bce":
        return F.binary_cross_entropy_with_logits(logits, target.clamp(0, 1))
    raise ValueError(f"unknown loss {name!r}; expected mae, mse or bce")
