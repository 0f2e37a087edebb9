"""Restoration networks. `build_model(architecture)` makes one from its plain-dict description."""

from __future__ import annotations

from torch import nn

from .progan import ProGANGenerator
from .unet import UNet

ARCHITECTURES = {"unet": UNet, "progan": ProGANGenerator}
# what the GUI lists: one registry for the CLI, GUI and model files
DISPLAY_NAMES = {"unet": "U-Net", "progan": "ProGAN (conditional)"}


def build_model(architecture: dict) -> nn.Module:
    """Instantiate a network from {'name': ..., **kwargs} as stored in a model file."""
    kwargs = dict(architecture)
    name = kwargs.pop("name", None)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {name!r}; this version knows {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)
