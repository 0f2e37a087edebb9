"""Device choice (auto: CUDA, then MPS, then CPU) and mixed precision, shared by training and inference."""

from __future__ import annotations

import contextlib
import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA (this process's local rank under torchrun), then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available")
    return device


def available_devices() -> list[str]:
    """Devices a user can choose from (for GUIs and --help)."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on GPUs that support it (fp16 otherwise); nothing on CPU."""
    if not enabled or device.type not in ("cuda", "mps"):
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
