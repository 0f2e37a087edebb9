"""Optics and camera models used by the simulator: integrated Gaussian PSF and EMCCD noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf


@dataclass(frozen=True)
class Microscope:
    """Objective and sampling; defaults match the seed's 100x NA 1.45 spinning disk with 160 nm pixels."""

    numerical_aperture: float = 1.45
    wavelength_nm: float = 510.0  # eGFP emission
    pixel_size_nm: float = 160.0
    psf_sigma_nm: float | None = None  # None: Gaussian approximation 0.21 * lambda / NA (Zhang et al. 2007)

    @property
    def sigma_nm(self) -> float:
        """PSF standard deviation in nm."""
        if self.psf_sigma_nm is not None:
            return float(self.psf_sigma_nm)
        return 0.21 * self.wavelength_nm / self.numerical_aperture

    @property
    def sigma_px(self) -> float:
        """PSF standard deviation in camera pixels."""
        return self.sigma_nm / self.pixel_size_nm


@dataclass(frozen=True)
class EMCCD:
    """Electron-multiplying CCD: QE, Poisson photons, CIC, gamma EM gain, read noise, ADU gain, offset, clipping."""

    quantum_efficiency: float = 0.9
    em_gain: float = 100.0
    electrons_per_adu: float = 10.0  # after EM gain
    read_noise_e: float = 40.0  # rms, after EM gain
    clock_induced_charge: float = 0.005  # electrons per pixel per frame, multiplied like photoelectrons
    baseline_adu: float = 100.0
    bit_depth: int = 16

    def mean_photoelectrons(self, photons: np.ndarray) -> np.ndarray:
        """Expected electrons entering the EM register per pixel."""
        return self.quantum_efficiency * np.asarray(photons, dtype=np.float64) + self.clock_induced_charge

    def expected_adu(self, photons: np.ndarray) -> np.ndarray:
        """Noise-free mean camera output in ADU for the given photons per pixel (clipping ignored)."""
        gain = self.em_gain / self.electrons_per_adu
        return (self.baseline_adu + gain * self.mean_photoelectrons(photons)).astype(np.float32)

    def expected_variance_adu(self, photons: np.ndarray) -> np.ndarray:
        """Variance of the output in ADU^2: EM excess noise factor F^2 = 2 plus read noise."""
        n = self.mean_photoelectrons(photons)
        return (2.0 * self.em_gain**2 * n + self.read_noise_e**2) / self.electrons_per_adu**2

    def expose(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One noisy camera frame (unsigned integers of bit_depth) for expected photons per pixel."""
        electrons = rng.poisson(self.mean_photoelectrons(photons))
        # The EM register turns n electrons into a gamma(n, gain) distributed charge (Basden et al. 2003).
        amplified = rng.gamma(np.maximum(electrons, 1e-12), self.em_gain) * (electrons > 0)
        amplified += rng.normal(0.0, self.read_noise_e, size=amplified.shape)
        adu = np.rint(self.baseline_adu + amplified / self.electrons_per_adu)
        top = 2**self.bit_depth - 1
        dtype = np.uint16 if self.bit_depth <= 16 else np.uint32
        return np.clip(adu, 0, top).astype(dtype)


def pixel_fractions(pixels: np.ndarray, centre: np.ndarray, sigma_px: float) -> np.ndarray:
    """Fraction of a 1-D Gaussian (mean `centre`, sd `sigma_px`) falling in each pixel [p - 0.5, p + 0.5)."""
    scale = np.sqrt(2.0) * sigma_px
    return 0.5 * (erf((pixels + 0.5 - centre) / scale) - erf((pixels - 0.5 - centre) / scale))


def render_spots(
    shape: tuple[int, int], y: np.ndarray, x: np.ndarray, photons: np.ndarray, sigma_px: float
) -> np.ndarray:
    """Expected photons per pixel of point sources imaged by a pixel-integrated 2-D Gaussian PSF.

    Pixel (i, j) spans [i - 0.5, i + 0.5) x [j - 0.5, j + 0.5), so a spot at (y, x) = (3.0, 4.0) is centred on
    pixel (3, 4).
    """
    height, width = shape
    image = np.zeros(height * width, dtype=np.float64)
    y, x, photons = (np.asarray(a, dtype=np.float64).ravel() for a in (y, x, photons))
    if y.size == 0:
        return image.reshape(shape)
    radius = int(np.ceil(4 * sigma_px)) + 1
    offsets = np.arange(-radius, radius + 1)
    rows = np.rint(y)[:, None].astype(np.int64) + offsets  # (n, w)
    cols = np.rint(x)[:, None].astype(np.int64) + offsets
    wy = pixel_fractions(rows, y[:, None], sigma_px)
    wx = pixel_fractions(cols, x[:, None], sigma_px)
    weights = photons[:, None, None] * wy[:, :, None] * wx[:, None, :]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    flat = rows[:, :, None] * width + cols[:, None, :]
    image += np.bincount(flat[inside], weights=weights[inside], minlength=height * width)
    return image.reshape(shape)
