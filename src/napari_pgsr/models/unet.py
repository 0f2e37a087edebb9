"""CARE-style U-Net: two 3x3 convolutions per level, max-pool down, nearest-neighbour up, skip
connections, residual output. Any frame size: padded to a multiple of 2**depth and cropped back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net mapping `in_channels` low-exposure frames (the centre one plus temporal context) to one frame.

    `residual`: the output is the centre input channel plus the network's correction (CARE's default for
    restoration). `output_activation='sigmoid'` for models trained with BCE on targets in [0, 1].
    """

    def __init__(self, in_channels: int = 1, depth: int = 2, width: int = 32, residual: bool = True,
                 output_activation: str = "linear"):
        super().__init__()
        if depth < 1 or width < 1 or in_channels < 1:
            raise ValueError(f"U-Net needs depth, width and in_channels >= 1, got {depth}, {width}, {in_channels}")
        if output_activation not in ("linear", "sigmoid"):
            raise ValueError(f"output_activation must be 'linear' or 'sigmoid', got {output_activation!r}")
        self.in_channels, self.depth, self.width = in_channels, depth, width
        self.residual, self.output_activation = residual, output_activation
        channels = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, channels[0])])
        self.down.extend(_block(channels[i], channels[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(_block(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(channels[0], 1, 1)

    @property
    def architecture(self) -> dict:
        """Everything needed to rebuild this network (stored in model files)."""
        return {"name": "unet", "in_channels": self.in_channels, "depth": self.depth, "width": self.width,
                "residual": self.residual, "output_activation": self.output_activation}

    @property
    def top_channels(self) -> int:
        """Feature channels at the full resolution (what an input pixel costs in memory)."""
        return self.width

    @property
    def receptive_field(self) -> int:
        """Pixels an output pixel can see along one axis, at the worst phase of the pooling grid: 3x3 convs
        reach 2 * 2**l per level l down and up, pooling/upsampling 2**l more: radius 7 * 2**depth - 5."""
        return 2 * (7 * 2**self.depth - 5) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw output, B x 1 x H x W: the restored frame in normalised units, or logits for sigmoid models
        (BCE is computed on these); `activate` turns it into the restored frame."""
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        out = x
        for level, block in enumerate(self.down):
            if level:
                out = F.max_pool2d(out, 2)
            out = block(out)
            skips.append(out)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            out = F.interpolate(out, scale_factor=2, mode="nearest")
            out = block(torch.cat([out, skip], dim=1))
        out = self.head(out)
        if self.residual:
            centre = self.in_channels // 2
            out = out + x[:, centre:centre + 1]
        return out[..., :height, :width]

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """Restored frame(s) in normalised high-exposure units from the raw output."""
        return torch.sigmoid(raw) if self.output_activation == "sigmoid" else raw
