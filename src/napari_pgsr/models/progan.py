"""Progressive-growing conditional GAN (Karras et al. 2018) for image-to-image restoration.

Generator: an encoder that mirrors the critic and a decoder with a skip connection at every resolution
(pix2pix's U-Net generator), so spot positions survive the 4 x 4 bottleneck. Critic: judges a (low, high or
restored) pair stacked as channels. Both grow together from 4 x 4 to `max_resolution`: every resolution
adds a block of two 3 x 3 convolutions (nearest-neighbour up, average-pool down), and a new block fades in
smoothly, `alpha` going 0 -> 1. Equalized learning rate in every layer, minibatch standard deviation in
the critic's last block, leaky ReLU 0.2, no pixel normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Karras's channels for 256 x 256 at width 1.0 (and beyond, halving)
CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def channels(resolution: int, width: float) -> int:
    """Feature channels at `resolution` for the width multiplier."""
    return max(1, int(round(CHANNELS[resolution] * width)))


def resolutions(max_resolution: int) -> list[int]:
    """4, 8, ..., max_resolution (a power of two, 8 to 1024)."""
    if max_resolution not in CHANNELS or max_resolution < 8:
        raise ValueError(f"ProGAN resolution must be a power of two from 8 to 1024, got {max_resolution}")
    return [2**k for k in range(2, int(math.log2(max_resolution)) + 1)]


class EqualizedConv2d(nn.Module):
    """Convolution whose weights are stored as N(0, 1) and scaled by the He constant at run time, so
    Adam's per-parameter step sizes act alike on every layer (Karras et al. 2018, section 4.1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 gain: float = 2**0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size**2)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """Dense layer with the same run-time He scaling."""

    def __init__(self, in_features: int, out_features: int, gain: float = 2**0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class MinibatchStdDev(nn.Module):
    """Appends one channel: the standard deviation of each feature over a group of samples, averaged over
    features and pixels (one value per group), so the critic can see a lack of variety."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, chans, height, width = x.shape
        # Karras: groups of 4 (or the batch); a batch that 4 does not divide takes the largest size that does
        # divide it, or one group of all (a prime batch): groups of 1 would give a constant channel
        group = max(size for size in range(1, min(self.group_size, batch) + 1) if batch % size == 0)
        if group == 1:
            group = batch
        y = x.float().reshape(group, -1, chans, height, width)  # sample i is in group i % (batch / group)
        std = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # one per group
        std = std.to(x.dtype).repeat(group).reshape(batch, 1, 1, 1).expand(batch, 1, height, width)
        return torch.cat([x, std], dim=1)


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(EqualizedConv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2))


def _from_gray(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(EqualizedConv2d(in_channels, out_channels, 1), nn.LeakyReLU(0.2))


def _pair(in_channels: int, mid: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(_conv(in_channels, mid), _conv(mid, out_channels))


def _lerp(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    return new if alpha >= 1.0 else old + (new - old) * alpha


class _Growing(nn.Module):
    """Shared state: the resolution being trained and the fade-in weight of its newest block."""

    def __init__(self, max_resolution: int, width: float, resolution: int | None, alpha: float):
        super().__init__()
        self.levels = resolutions(max_resolution)
        self.max_resolution, self.width = max_resolution, float(width)
        self.resolution = self.levels[1] if resolution is None else int(resolution)
        self.alpha = float(alpha)

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:  # (outside, the fade would extrapolate between the two paths)
            raise ValueError(f"alpha (the fade-in weight) must be in [0, 1], got {value}")
        self._alpha = float(value)

    @property
    def resolution(self) -> int:
        return self._resolution

    @resolution.setter
    def resolution(self, value: int) -> None:
        if value not in self.levels:
            raise ValueError(f"resolution must be one of {self.levels}, got {value}")
        self._resolution = value

    @property
    def fading(self) -> bool:
        """Whether the newest block is still being blended in."""
        return self.alpha < 1.0 and self.resolution > self.levels[0]

    @property
    def depth(self) -> int:
        """Poolings between the current resolution and 4 x 4 (inputs are padded to a multiple of 2**depth)."""
        return int(math.log2(self.resolution // 4))


class ProGANGenerator(_Growing):
    """Low-exposure image (C channels at any size) -> restored image, at the current resolution."""

    def __init__(self, in_channels: int = 1, max_resolution: int = 256, width: float = 1.0,
                 resolution: int | None = None, alpha: float = 1.0, residual: bool = True,
                 rot180_average: bool = False):
        super().__init__(max_resolution, width, resolution, alpha)
        self.in_channels, self.residual, self.rot180_average = in_channels, residual, rot180_average
        ch = {r: channels(r, width) for r in self.levels}
        self.from_gray = nn.ModuleDict({str(r): _from_gray(in_channels, ch[r]) for r in self.levels})
        self.encode = nn.ModuleDict({str(r): _pair(ch[r], ch[r], ch[r // 2]) for r in self.levels[1:]})
        self.bottleneck = _pair(ch[4], ch[4], ch[4])
        self.decode = nn.ModuleDict({str(r): _pair(ch[r // 2] + ch[r], ch[r], ch[r]) for r in self.levels[1:]})
        self.to_gray = nn.ModuleDict({str(r): EqualizedConv2d(ch[r], 1, 1, gain=1.0) for r in self.levels})

    @property
    def architecture(self) -> dict:
        """Everything needed to rebuild this network (stored in model files)."""
        return {"name": "progan", "in_channels": self.in_channels, "max_resolution": self.max_resolution,
                "width": self.width, "resolution": self.resolution, "alpha": self.alpha, "residual": self.residual,
                # only when on, so files of plain generators still load in versions that predate it
                **({"rot180_average": True} if self.rot180_average else {})}

    @property
    def top_channels(self) -> int:
        """Feature channels at the full resolution (what an input pixel costs in memory)."""
        return channels(self.resolution, self.width)

    @property
    def receptive_field(self) -> int:
        """As for a U-Net of the same depth: two 3x3 convolutions per level down, at the bottom and up."""
        return 2 * (7 * 2**self.depth - 5) + 1

    def _output(self, features: torch.Tensor, resolution: int, x: torch.Tensor) -> torch.Tensor:
        out = self.to_gray[str(resolution)](features)
        if self.residual:
            centre = self.in_channels // 2
            out = out + x[:, centre:centre + 1]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rot180_average:
            return self._restore(x)
        # The mean of G(x) and G's answer for the image turned by 180 degrees, turned back: a network that
        # shifts its output by d has that shift cancel (d and -d blur instead), so training removes it.
        both = self._restore(torch.cat([x, x.flip(-2, -1)]))
        plain, turned = both.chunk(2)
        return (plain + turned.flip(-2, -1)) / 2

    def _restore(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if pad_h < height and pad_w < width else "replicate")
        top = self.resolution
        skips: dict[int, torch.Tensor] = {top: self.from_gray[str(top)](x)}
        if top == 4:
            out = self._output(self.bottleneck(skips[4]), 4, x)
            return out[..., :height, :width]
        h = F.avg_pool2d(self.encode[str(top)](skips[top]), 2)
        x_half = F.avg_pool2d(x, 2) if self.fading else None
        if self.fading:  # the previous resolution's input path, blended out as alpha grows
            h = _lerp(self.from_gray[str(top // 2)](x_half), h, self.alpha)
        r = top // 2
        while r > 4:
            skips[r] = h
            h = F.avg_pool2d(self.encode[str(r)](h), 2)
            r //= 2
        d = self.bottleneck(h)
        for r in self.levels[1:]:
            if r > top // 2:
                break
            d = self.decode[str(r)](torch.cat([F.interpolate(d, scale_factor=2.0, mode="nearest"), skips[r]], 1))
        new = self._output(self.decode[str(top)](torch.cat([F.interpolate(d, scale_factor=2.0, mode="nearest"),
                                                            skips[top]], 1)), top, x)
        if self.fading:
            old = F.interpolate(self._output(d, top // 2, x_half), scale_factor=2.0, mode="nearest")
            new = _lerp(old, new, self.alpha)
        return new[..., :height, :width]

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """The restored frame in normalised units (the output is linear)."""
        return raw


class ProGANCritic(_Growing):
    """(low, image) pair at the current resolution -> one score per sample (higher: more like real)."""

    def __init__(self, in_channels: int = 2, max_resolution: int = 256, width: float = 1.0,
                 resolution: int | None = None, alpha: float = 1.0, group_size: int = 4):
        super().__init__(max_resolution, width, resolution, alpha)
        self.in_channels = in_channels
        ch = {r: channels(r, width) for r in self.levels}
        self.from_gray = nn.ModuleDict({str(r): _from_gray(in_channels, ch[r]) for r in self.levels})
        self.blocks = nn.ModuleDict({str(r): _pair(ch[r], ch[r], ch[r // 2]) for r in self.levels[1:]})
        self.final = nn.Sequential(MinibatchStdDev(group_size), _conv(ch[4] + 1, ch[4]),
                                   EqualizedConv2d(ch[4], ch[4], 4), nn.LeakyReLU(0.2), nn.Flatten(),
                                   EqualizedLinear(ch[4], 1, gain=1.0))

    def forward(self, low: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([low, image], dim=1)
        top = self.resolution
        if x.shape[-1] != top or x.shape[-2] != top:
            raise ValueError(f"the critic at {top} x {top} got images of {tuple(x.shape[-2:])}")
        h = self.from_gray[str(top)](x)
        if top > 4:
            h = F.avg_pool2d(self.blocks[str(top)](h), 2)
            if self.fading:
                h = _lerp(self.from_gray[str(top // 2)](F.avg_pool2d(x, 2)), h, self.alpha)
            r = top // 2
            while r > 4:
                h = F.avg_pool2d(self.blocks[str(r)](h), 2)
                r //= 2
        return self.final(h).squeeze(1)


def parameter_count(module: nn.Module, resolution: int | None = None) -> int:
    """Parameters used at `resolution` (default: the module's maximum): blocks above it do not count."""
    resolution = resolution or module.max_resolution
    total = 0
    for name, parameter in module.named_parameters():
        parts = name.split(".")
        per_level = parts[0] in ("from_gray", "to_gray", "encode", "decode", "blocks")
        level = int(parts[1]) if per_level else None
        if level is not None and parts[0] in ("from_gray", "to_gray") and level != resolution:
            continue  # only the current resolution's 1x1 conversions run once the fade is over
        if level is not None and level > resolution:
            continue
        total += parameter.numel()
    return total
