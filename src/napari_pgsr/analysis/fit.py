"""Least-squares fit of a pixel-integrated 2-D Gaussian plus a flat background around a spot."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from ..physics import pixel_fractions


@dataclass(frozen=True)
class SpotFit:
    """A fitted spot in image pixel coordinates; `flag` is '' when the fit is usable."""

    y: float
    x: float
    sigma_px: float
    amplitude: float  # integrated intensity above background (image units x pixels)
    background: float
    flag: str = ""  # 'edge', 'no convergence', 'width at limit', 'centre at limit'

    @property
    def fwhm_px(self) -> float:
        """Full width at half maximum in pixels."""
        return 2.0 * np.sqrt(2.0 * np.log(2.0)) * self.sigma_px

    def model(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The fitted spot plus background on the pixel grid `rows` x `cols`."""
        return _model(np.array([self.y, self.x, self.sigma_px, self.amplitude, self.background]), rows, cols)


def _model(params: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    y, x, sigma, amplitude, background = params
    return background + amplitude * np.outer(pixel_fractions(rows, y, sigma), pixel_fractions(cols, x, sigma))


def fit_spot(image: np.ndarray, y: float, x: float, radius: int = 3, sigma_guess: float = 1.0) -> SpotFit:
    """Fit the (2 radius + 1)^2 window around (y, x); the window is moved inside the image at borders and the
    fit flagged 'edge' when the spot centre is closer than `radius` to the border."""
    height, width = image.shape
    if not (-0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):  # pixel i covers [i - 0.5, i + 0.5)
        raise ValueError(f"point ({y:.1f}, {x:.1f}) lies outside the {height}x{width} image")
    size = 2 * radius + 1
    if height < size or width < size:
        raise ValueError(f"image of {height}x{width} pixels is smaller than the {size}x{size} fit window")
    top = int(np.clip(round(y) - radius, 0, height - size))
    left = int(np.clip(round(x) - radius, 0, width - size))
    window = np.asarray(image[top:top + size, left:left + size], dtype=np.float64)
    missing = int(np.count_nonzero(~np.isfinite(window)))
    if missing:  # e.g. frames not restored yet in a partly written OME-Zarr
        raise ValueError(f"{missing} NaN/inf pixel{'s' * (missing > 1)} in the {size}x{size} fit window")
    rows, cols = np.arange(top, top + size, dtype=np.float64), np.arange(left, left + size, dtype=np.float64)
    background = float(np.percentile(window, 20))
    amplitude = max(float(window.sum() - background * window.size), 1e-6)
    start = np.array([y, x, sigma_guess, amplitude, background])
    lower = [top - 0.5, left - 0.5, 0.15, 0.0, -np.inf]
    upper = [top + size - 0.5, left + size - 0.5, float(radius), np.inf, np.inf]
    start = np.clip(start, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
    result = least_squares(lambda p: (_model(p, rows, cols) - window).ravel(), start, bounds=(lower, upper),
                           x_scale="jac", max_nfev=200)
    fy, fx, sigma, amp, bg = result.x
    flag = "" if result.success else "no convergence"
    if not flag and min(fy, fx, height - 1 - fy, width - 1 - fx) < radius:
        flag = "edge"
    # at a bound the width is no measurement: a noise spike (narrower than any lens makes) or no spot at all
    if not flag and not lower[2] * 1.05 < sigma < upper[2] * 0.99:
        flag = "width at limit"
    # a centre on the window's edge is a spot beside the label, or its tail, not a spot at it
    if not flag and min(fy - lower[0], upper[0] - fy, fx - lower[1], upper[1] - fx) < 0.01:
        flag = "centre at limit"
    return SpotFit(float(fy), float(fx), float(sigma), float(amp), float(bg), flag)


def as_yx(points, what: str = "points") -> np.ndarray:
    """`points` as an (N, 2) float array of (y, x) rows: one (y, x) pair, N pairs or none. Other widths are
    refused, so (frame, y, x) rows of a movie's points are not read as pairs of numbers."""
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 2)
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{what} must be (y, x) rows of one frame, got shape {np.shape(points)}"
                         + ("; pass the rows of one frame without the frame column"
                            if array.ndim == 2 and array.shape[1] == 3 else ""))
    return array


def fit_spots(image: np.ndarray, points: np.ndarray, radius: int = 3, sigma_guess: float = 1.0) -> list[SpotFit]:
    """fit_spot for every (y, x) row of `points`."""
    return [fit_spot(image, y, x, radius, sigma_guess) for y, x in as_yx(points).tolist()]
