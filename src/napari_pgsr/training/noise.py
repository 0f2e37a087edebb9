"""The camera's noise, fitted from the training frames, so the ProGAN's critic can see the generator's output
as the camera would have recorded it (AmbientGAN, Bora et al. 2018).

The high exposures the critic learns from are noisy. A critic that compares them with the generator's output
rewards a generator that invents noise of the same look: the restored image gains texture and its spots
widen. With `critic_noise` the generator's output gets the camera's noise added before the critic sees it,
so the clean image is what the critic cannot tell apart from a real high exposure.

Photon-transfer model: variance = slope * value + intercept, in camera units. For an EMCCD the slope is
2 x the gain in ADU per photoelectron (excess noise factor 2) and the intercept holds the read noise and
minus slope x baseline; sCMOS and CCD cameras follow the same line with slope = their gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

# a pixel minus the mean of its 4 neighbours: for white noise of variance v its variance is 1.25 v
_RESIDUAL_GAIN = 1.25
# the median of the square of a zero-mean normal variable is 0.455 times its variance
_MEDIAN_OF_SQUARES = 0.4549


@dataclass(frozen=True)
class NoiseModel:
    """variance = slope * value + intercept (camera units)."""

    slope: float
    intercept: float

    def to_dict(self) -> dict:
        return asdict(self)

    def variance(self, values: np.ndarray) -> np.ndarray:
        return np.maximum(self.slope * np.asarray(values, np.float64) + self.intercept, 0.0)

    def normalised(self, lo: float, hi: float) -> tuple[float, float]:
        """(a, b) with variance = a * y + b for y = (value - lo) / (hi - lo), the networks' units."""
        scale = hi - lo
        return self.slope / scale, (self.slope * lo + self.intercept) / scale**2


def fit_noise_model(frames: Sequence[np.ndarray], bins: int = 24, min_pixels: int = 200) -> NoiseModel:
    """Fit the photon-transfer line from frames of a movie: pixels are binned by their local mean (3 x 3),
    and each bin's noise variance comes from the median of squared 4-neighbour residuals (robust to the
    few pixels whose residual holds image structure, such as spot edges)."""
    means, residuals = [], []
    for frame in frames:
        frame = np.asarray(frame, np.float64)
        if frame.ndim != 2 or min(frame.shape) < 8:
            raise ValueError(f"noise model: frames must be 2-D and at least 8 x 8, got shape {frame.shape}")
        neighbours = ndimage.convolve(frame, np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]) / 4.0, mode="reflect")
        means.append(ndimage.uniform_filter(frame, 3, mode="reflect")[2:-2, 2:-2].ravel())
        residuals.append((frame - neighbours)[2:-2, 2:-2].ravel())
    means, residuals = np.concatenate(means), np.concatenate(residuals)
    # bins spread over the bulk of the values; the brightest pixels are mostly spot centres
    edges = np.unique(np.quantile(means, np.linspace(0.0, 0.98, bins + 1)))
    kept = means <= edges[-1]
    means, residuals = means[kept], residuals[kept]
    which = np.digitize(means, edges[1:-1])
    centres, variances, counts = [], [], []
    for b in range(len(edges) - 1):
        chosen = which == b
        if chosen.sum() >= min_pixels:
            centres.append(np.median(means[chosen]))
            variances.append(np.median(residuals[chosen] ** 2) / (_MEDIAN_OF_SQUARES * _RESIDUAL_GAIN))
            counts.append(chosen.sum())
    if len(centres) < 2 or np.ptp(centres) <= 0:
        raise ValueError("noise model: the frames hold too narrow a range of values to fit variance against "
                         "intensity")
    slope, intercept = np.polyfit(centres, variances, 1, w=np.sqrt(counts))
    if slope <= 0:
        raise ValueError(f"noise model: the noise does not grow with intensity (fitted slope {slope:.3g}); "
                         "these frames do not look like camera images")
    return NoiseModel(float(slope), float(intercept))


def noise_frames(pairs: Sequence, refs: Sequence, count: int = 8) -> list[np.ndarray]:
    """High-exposure frames of `count` training pairs spread evenly over `refs` ((movie, pair) indices into
    `pairs`, validation movies after the training ones): what the noise model is fitted on."""
    chosen = [refs[int(i)] for i in np.unique(np.linspace(0, len(refs) - 1, min(count, len(refs))).round())]
    return [pairs[movie].read(int(pair))[1] for movie, pair in chosen]


def camera_noise(image: torch.Tensor, a: float, b: float, pooled: int = 1, shape: str = "normal") -> torch.Tensor:
    """Zero-mean noise of variance (a * image + b) / pooled**2 for `image` in the networks' units: the
    camera's noise at the current resolution (average-pooling pooled x pooled pixels divides it by
    pooled**2). The noise level is taken as given (no gradient through it).

    `normal`: Gaussian. `gamma`: the signal above the camera's baseline (where the line reaches zero
    variance, -b / a) drawn from a gamma distribution with that mean and variance, as an EMCCD's multiplied
    photoelectrons roughly are. Low-light noise is skewed (the simulated high exposures' background: 1.2),
    and a critic can tell that from Gaussian noise."""
    image = image.detach()
    if shape == "normal":
        variance = (a * image + b).clamp_min(0.0) / pooled**2
        return variance.sqrt() * torch.randn_like(image)
    if shape != "gamma":
        raise ValueError(f"noise shape must be normal or gamma, got {shape!r}")
    signal = (image + b / a).clamp_min(1e-6 * a)  # above the baseline, in the networks' units
    # mean signal, variance a * signal / pooled**2: concentration signal * pooled**2 / a, rate pooled**2 / a
    concentration = signal * pooled**2 / a
    draws = torch.distributions.Gamma(concentration.float(), torch.full_like(concentration, pooled**2 / a).float())
    return (draws.sample() - signal).to(image.dtype)
