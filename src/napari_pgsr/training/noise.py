"""The camera's noise, fitted from the training frames, so the ProGAN's critic can see the generator's output
as the camera would have recorded it (AmbientGAN, Bora et al. 2018).

The high exposures the critic learns from are noisy. A critic that compares them with the generator's output
rewards a generator that invents noise of the same look: the restored image gains texture and its spots
widen. With `critic_noise` the generator's output gets the camera's noise added before the critic sees it,
so the clean image is what the critic cannot tell apart from a real high exposure.

Photon-transfer model: variance = slope * value + intercept, in camera units. For an EMCCD the slope is
2 x the gain in ADU per photoelectron (excess noise factor 2) and the intercept holds the read noise and
minus slope x baseline; sCMOS and CCD cameras follow the same line with slope = their gain.

The line is fitted from pairs of consecutive high exposures (a photon-transfer curve from frame differences),
not from one frame's pixels against their neighbours: a sample with a flat background (beads) then offers
its bright spots as the upper end of the line, where a single frame's spots are all structure, and the
pixels are sorted by the mean of the movie's other frames, which holds their noise out of the sorting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

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


def fit_noise_model(movies: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], bins: int = 24,
                    min_pixels: int = 200) -> NoiseModel:
    """Fit the photon-transfer line from consecutive high exposures: `movies` holds, per movie, two or more
    (frame, next frame) couples of the same field of view. Each pixel's noise variance is half its squared
    frame-to-frame difference; the pixels are binned by their mean over the movie's other couples
    (independent of that couple's noise, so the bins are not sorted by noise; a bin's value is the mean of
    its couples' own means), in geometrically spaced bins up to the brightest spots; in each bin,
    differences beyond 10 sigma (moving or blinking spots) are dropped."""
    values, means, differences = [], [], []
    for couples in movies:
        if len(couples) < 2:
            raise ValueError(f"noise model: each movie needs at least 2 couples of consecutive high exposures, "
                             f"got {len(couples)}")
        stack = np.asarray([[np.asarray(a, np.float64), np.asarray(b, np.float64)] for a, b in couples])
        if stack.ndim != 4 or min(stack.shape[-2:]) < 8:
            raise ValueError(f"noise model: couples must be two 2-D frames of the same shape, at least 8 x 8, "
                             f"got shape {stack.shape[1:]}")
        total = stack.sum(axis=(0, 1))
        for a, b in stack:
            values.append(((total - a - b) / (2 * (len(stack) - 1))).ravel())
            means.append(((a + b) / 2).ravel())
            differences.append(((a - b) / np.sqrt(2.0)).ravel())
    values, means, differences = np.concatenate(values), np.concatenate(means), np.concatenate(differences)
    low, high = np.quantile(values, [0.005, 0.9995])
    edges = low - 1.0 + np.geomspace(1.0, high - low + 1.0, bins + 1)  # geometric above the darkest pixels
    which = np.digitize(values, edges) - 1
    centres, variances, counts = [], [], []
    for b in range(bins):
        squares = differences[which == b] ** 2
        rough = np.median(squares) / _MEDIAN_OF_SQUARES if len(squares) else 0.0
        if len(squares) < min_pixels or rough <= 0:  # (constant pixels: padding, a saturated or empty region)
            continue
        # 10 sigma: EMCCD differences below ~2 photoelectrons are heavy-tailed, a tighter cut drops real noise
        kept = squares <= 100.0 * rough
        centres.append(means[which == b][kept].mean())  # the couple's own mean: the sorting's noise is not in it
        variances.append(squares[kept].mean())
        counts.append(int(kept.sum()))
    noise_sd = np.sqrt(np.median(differences**2) / _MEDIAN_OF_SQUARES)
    if len(centres) < 2 or np.ptp(centres) < 3.0 * noise_sd:
        raise ValueError(f"noise model: the frames hold too narrow a range of values to fit variance against "
                         f"intensity: {len(centres)} of {bins} intensity bins hold {min_pixels} pixels or more, "
                         f"their means span {np.ptp(centres) if centres else 0:.3g} grey levels (noise SD "
                         f"{noise_sd:.3g}); more or larger frames fill the bright bins")
    # each bin's variance is known to about v * sqrt(2 / n): weigh by the inverse
    slope, intercept = np.polyfit(centres, variances, 1, w=np.sqrt(counts) / np.asarray(variances))
    if slope <= 0:
        raise ValueError(f"noise model: the noise does not grow with intensity (fitted slope {slope:.3g}); "
                         "these frames do not look like camera images")
    return NoiseModel(float(slope), float(intercept))


def noise_couples(pairs: Sequence, refs: Sequence, count: int = 10,
                  largest: int = 512) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Couples of consecutive high exposures ((movie, pair) and (movie, pair + 1) both in `refs`, indices
    into `pairs`, validation movies after the training ones), up to `count` in all, spread evenly over each
    movie with two or more: what the noise model is fitted on. Frames larger than `largest` are cropped to
    their centre (the noise does not depend on where a pixel is)."""
    chosen = set(map(tuple, refs))
    starts: dict[int, list[int]] = {}
    for movie, pair in sorted(chosen):
        if (movie, pair + 1) in chosen and (not starts.get(movie) or pair >= starts[movie][-1] + 2):
            starts.setdefault(movie, []).append(pair)  # disjoint couples
    usable = {movie: firsts for movie, firsts in starts.items() if len(firsts) >= 2}
    if not usable:
        raise ValueError("critic_noise: the noise model needs a movie with two separate couples of consecutive "
                         "training pairs (e.g. 4 consecutive pairs); none has")
    per_movie = max(2, count // len(usable))
    movies = []
    for movie, firsts in list(usable.items())[: max(1, count // 2)]:
        height, width = pairs[movie].high.shape[-2:]
        rows, cols = (slice(max(0, (n - largest) // 2), max(0, (n - largest) // 2) + largest) for n in (height, width))
        spread = np.unique(np.linspace(0, len(firsts) - 1, min(per_movie, len(firsts))).round())
        movies.append([tuple(pairs[movie].read(firsts[int(i)] + step, rows, cols)[1] for step in (0, 1))
                       for i in spread])
    return movies


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
