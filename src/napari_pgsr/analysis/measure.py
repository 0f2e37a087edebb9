"""Per-spot measurements on one image: sub-pixel position, PSF width, two SNRs, localisation precision."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import erf

from ..generators import run_to_end
from ..io import as_array, clipping_level
from .fit import SpotFit, fit_spot

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
UNLABELLED_SPOT_SDS = 5.0  # a smoothed blob this far above the background is a spot nobody labelled
OWN_LIGHT_OF_NOISE = 0.25  # ring pixels where the spot's own light is under a quarter of the noise
# Rose's criterion, on the spot's integrated signal against the noise over its area (a matched filter's SNR):
# a test of the fitted peak favoured fits that collapse onto one noisy pixel (the peak is then the whole
# amplitude), and passed 18% of fits to empty EMCCD background as spots 60-110 nm wide (now 5-10%)
NO_SIGNAL_SNR = 5.0

COLUMNS = ["point", "frame", "y", "x", "sigma_px", "fwhm_px", "sigma_nm", "fwhm_nm", "amplitude", "peak",
           "background", "background_sd", "photons", "background_photons", "snr", "sbr", "precision_px",
           "precision_nm", "flag"]


@dataclass(frozen=True)
class CameraCalibration:
    """How image values turn into detected photons (photoelectrons), for photon counts and precision.

    The defaults treat the image as photon counts of an EMCCD (excess noise 2). `electrons_per_adu` is the
    photoelectrons (before EM gain) per grey level: the camera's e-/ADU divided by the EM gain; `excess_noise`
    is the EM register's excess-noise factor F^2, 2; sCMOS and CCD cameras have 1. `read_noise_electrons` is
    the read noise (rms photoelectrons per pixel; an EMCCD's, divided by its EM gain, is about 0; an sCMOS's
    1-2): it adds to the background's noise in the precision.
    """

    baseline_adu: float = 0.0
    electrons_per_adu: float = 1.0
    excess_noise: float = 2.0
    saturation_adu: float | None = None  # the grey level the camera clips at; None: an integer image's maximum
    read_noise_electrons: float = 0.0

    @classmethod
    def from_emccd(cls, camera) -> CameraCalibration:
        """The calibration of a `physics.EMCCD` (as used by the simulator)."""
        return cls(camera.baseline_adu, camera.electrons_per_adu / camera.em_gain, 2.0, 2.0**camera.bit_depth - 1)

    def saturation(self, dtype) -> float | None:
        """The grey level at and above which a pixel is clipped: the one set, else the largest value an
        integer image holds (65535 for 16 bits); None for a floating-point image (a restoration)."""
        return float(self.saturation_adu) if self.saturation_adu is not None else clipping_level(dtype)


def locate_points(image_shape: tuple[int, ...], points, frame: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """Frame index (-1 for a 2-D image) and (y, x) of each point, a note on what was assumed, and each
    point's row in `points` (its number in the table, also when only some points are kept).

    2-D points on a movie and (frame, y, x) points on a single frame need `frame`: the points are then
    measured on that frame of the movie, or only the points of that frame are kept. Points with more than
    three coordinates use the last three.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.size == 0:
        raise ValueError("there are no points to measure: add spot labels first")
    points = points[None] if points.ndim == 1 else points.reshape(len(points), -1)  # 1-D: one point
    if points.shape[1] < 2:
        raise ValueError(f"points need (y, x) coordinates, got {points.shape[1]} column(s)")
    bad = np.flatnonzero(~np.all(np.isfinite(points), axis=1))
    if bad.size:
        raise ValueError(f"point {bad[0]} has a coordinate that is not a number: {points[bad[0]].tolist()}")
    if len(image_shape) not in (2, 3):
        raise ValueError(f"expected a Y x X image or a T x Y x X movie, got shape {tuple(image_shape)}")
    yx = points[:, -2:]
    has_frame = points.shape[1] >= 3
    frames = np.rint(points[:, -3]).astype(int) if has_frame else None
    note = ""
    point_ids = np.arange(len(points))
    if len(image_shape) == 3 and frames is None:
        if frame is None:
            raise ValueError("the points are 2-D (y, x) but the image is a movie: choose the frame to measure "
                             "(napari-pgsr-measure --frame N)")
        if not 0 <= int(frame) < image_shape[0]:
            raise ValueError(f"frame {frame} is outside the movie ({image_shape[0]} frames: 0 to {image_shape[0] - 1})")
        frames = np.full(len(yx), int(frame))
        note = f"2-D points measured on frame {frame} of the movie"
    elif len(image_shape) == 2 and frames is not None:
        if frame is None:
            raise ValueError("the points carry a frame index (frame, y, x) but the image is a single frame: "
                             "choose the frame whose points to measure (napari-pgsr-measure --frame N)")
        keep = frames == int(frame)
        yx, frames, point_ids = yx[keep], np.full(int(keep.sum()), -1), point_ids[keep]
        note = f"{int(keep.sum())} of {len(points)} points lie on frame {frame} and were measured on the 2-D image"
        if not keep.any():
            raise ValueError(f"none of the {len(points)} points lies on frame {frame}")
    elif len(image_shape) == 3 and frame is not None:  # a frame asked for: its points only (all were measured)
        keep = frames == int(frame)
        if not keep.any():
            raise ValueError(f"none of the {len(points)} points lies on frame {frame}")
        yx, frames, point_ids = yx[keep], frames[keep], point_ids[keep]
        note = f"{int(keep.sum())} of {len(points)} points lie on frame {frame}; only they were measured"
    elif frames is None:
        frames = np.full(len(yx), -1)
    return frames, yx, note, point_ids


def centre_fraction(sigma_px: float) -> float:
    """Fraction of a pixel-integrated Gaussian spot that falls in a pixel centred on it: erf(1/(2 sqrt(2) s))^2.
    About 1 / (2 pi s^2) for well-sampled spots, but finite when a fit collapses onto one pixel."""
    return float(erf(0.5 / (np.sqrt(2.0) * sigma_px)) ** 2)


def mortensen_precision(sigma_px: float, photons: float, background_photons: float, excess_noise: float,
                        read_noise_electrons: float = 0.0) -> float:
    """Localisation precision (px) of a least-squares Gaussian fit, Mortensen et al. 2010 eq. 6 with
    square pixels of side 1: var = F (sa^2/N) (16/9 + 8 pi sa^2 b^2 / N), sa^2 = s^2 + 1/12, b^2 the
    background photons per pixel and F the excess-noise factor (2 for an EMCCD). Read noise r (rms e-) adds
    r^2 / F to b^2: a pixel's variance is F b^2 + r^2, as if from that much more background."""
    if not photons > 0:
        return float("nan")
    sa2 = sigma_px**2 + 1.0 / 12.0
    background = max(background_photons, 0.0) + read_noise_electrons**2 / excess_noise
    variance = excess_noise * sa2 / photons * (16.0 / 9.0 + 8.0 * np.pi * sa2 * background / photons)
    return float(np.sqrt(variance))


_LAGUERRE_NODES, _LAGUERRE_WEIGHTS = np.polynomial.laguerre.laggauss(64)


def mortensen_mle_precision(sigma_px, photons, background_photons, excess_noise: float) -> np.ndarray:
    """Localisation precision (px) of a maximum-likelihood Gaussian fit, the best any fit can do (it reaches
    the Cramer-Rao bound): Mortensen et al. 2010 eq. 5 with square pixels of side 1,
    var = F (sa^2/N) / (1 + integral_0^1 ln t / (1 + t / tau) dt), tau = 2 pi sa^2 b^2 / N. Arrays broadcast."""
    photons = np.asarray(photons, dtype=np.float64)
    sa2 = sigma_px**2 + 1.0 / 12.0
    tau = 2 * np.pi * sa2 * np.maximum(np.asarray(background_photons, dtype=np.float64), 0.0) / photons
    # t = exp(-u) turns the integral into -integral_0^inf u e^-u / (1 + e^-u / tau) du (Gauss-Laguerre)
    with np.errstate(divide="ignore"):
        terms = _LAGUERRE_NODES / (1.0 + np.exp(-_LAGUERRE_NODES) / tau[..., None])
    integral = -(terms * _LAGUERRE_WEIGHTS).sum(axis=-1)
    return np.sqrt(excess_noise * sa2 / photons / (1.0 + integral))


def background_sd(frame: np.ndarray, fit: SpotFit, radius: int, others: np.ndarray) -> float:
    """Standard deviation of the background around a fitted spot: the ring of pixels between `radius` + 0.5
    and `radius` + 3.5 px from it, once the fitted spot (whose tail reaches into the ring) is subtracted,
    leaving out pixels within `radius` of other points, unlabelled spots (blobs above `UNLABELLED_SPOT_SDS`
    robust SDs once the residual is smoothed by the spot's width) and, around a bright spot, the pixels its
    own light (and shot noise) still reaches (`OWN_LIGHT_OF_NOISE`).

    A plain SD, not a robust one (1.4826 x MAD): a dim EMCCD background is mostly read noise with an
    EM-gain tail that the MAD does not see (at 0.5 photons/px it read 5.9 ADU where the SD is 10.3)."""
    outer = radius + 3.5
    margin = int(np.ceil(2.0 * max(fit.sigma_px, 1.0)))  # room for the smoothing at the ring's edge
    top, left = max(int(np.floor(fit.y - outer)) - margin, 0), max(int(np.floor(fit.x - outer)) - margin, 0)
    bottom = min(int(np.ceil(fit.y + outer)) + 1 + margin, frame.shape[0])
    right = min(int(np.ceil(fit.x + outer)) + 1 + margin, frame.shape[1])
    rows, cols = np.arange(top, bottom, dtype=np.float64), np.arange(left, right, dtype=np.float64)
    model = fit.model(rows, cols)
    residual = np.asarray(frame[top:bottom, left:right], dtype=np.float64) - model
    distance = np.hypot(rows[:, None] - fit.y, cols[None, :] - fit.x)
    # (NaN padding of a registered image is left out: one NaN made the whole noise NaN)
    ring = (distance > radius + 0.5) & (distance <= outer) & np.isfinite(residual)
    for oy, ox in others:
        ring &= np.hypot(rows[:, None] - oy, cols[None, :] - ox) > radius
    if np.count_nonzero(ring) < 8:
        return float("nan")
    smoothed = ndimage.gaussian_filter(np.where(np.isfinite(residual), residual, 0.0), max(fit.sigma_px, 1.0),
                                       mode="nearest")[ring]
    centre = np.median(smoothed)
    spread = 1.4826 * np.median(np.abs(smoothed - centre))
    if spread > 0:
        blobs = np.zeros(residual.shape, dtype=bool)
        blobs[ring] = smoothed > centre + UNLABELLED_SPOT_SDS * spread
        ring &= ~ndimage.binary_dilation(blobs)
    if np.count_nonzero(ring) < 8:
        return float("nan")
    # a bright spot's own light, and so its shot noise, reaches into the ring: keep the pixels where it is
    # a small part of the noise (at least the quarter of the ring it reaches least)
    own_light = (model - fit.background)[ring]
    first = residual[ring].std(ddof=1)
    dim = own_light <= OWN_LIGHT_OF_NOISE * first
    if np.count_nonzero(dim) < max(8, dim.size // 4):
        dim = own_light <= np.sort(own_light)[max(8, dim.size // 4) - 1]
    return float(residual[ring][dim].std(ddof=1))


def _saturated(frame: np.ndarray, y: float, x: float, radius: int, saturation: float | None) -> bool:
    """Whether a pixel within `radius` of (y, x) is clipped: a flat top the fit widens to reach."""
    if saturation is None:
        return False
    top, left = max(int(round(y)) - radius, 0), max(int(round(x)) - radius, 0)
    return bool(np.any(frame[top:int(round(y)) + radius + 1, left:int(round(x)) + radius + 1] >= saturation))


def _measure_one(frame: np.ndarray, y: float, x: float, others: np.ndarray, radius: int,
                 camera: CameraCalibration, sigma_guess: float, saturation: float | None = None) -> dict:
    """One row of the table (without point, frame and nm columns)."""
    height, width = frame.shape
    if not (-0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):
        return {"y": y, "x": x, "flag": "outside image"}
    try:
        fit = fit_spot(frame, y, x, radius=radius, sigma_guess=sigma_guess)
    except ValueError as err:  # e.g. NaN pixels, or an image smaller than the window
        return {"y": y, "x": x, "flag": f"fit failed: {err}"}
    flags = [fit.flag] if fit.flag else []
    if _saturated(frame, y, x, radius, saturation):
        flags.append("saturated")
    # a neighbour whose light reaches into the fit window (its centre within radius + 2 sigma) biases the fit
    if len(others) and np.min(np.max(np.abs(others - [y, x]), axis=1)) <= radius + 2.0 * fit.sigma_px:
        flags.append("overlap")
    peak = fit.amplitude * centre_fraction(fit.sigma_px)
    noise = background_sd(frame, fit, radius, others)
    area = 4.0 * np.pi * (fit.sigma_px**2 + 1.0 / 12.0)  # pixels a matched filter sums the spot's light over
    floor = max(NO_SIGNAL_SNR * noise if np.isfinite(noise) else 0.0, 1e-6 * max(1.0, abs(fit.background)))
    if not np.isfinite(noise):
        flags.append("background unknown")  # (too few pixels around it): no test of the signal against it
    elif not fit.amplitude / np.sqrt(area) > floor:
        flags.append("no signal")  # nothing above the background noise: no width to measure
    above_baseline = fit.background - camera.baseline_adu
    photons = fit.amplitude * camera.electrons_per_adu
    background_photons = above_baseline * camera.electrons_per_adu
    precision = mortensen_precision(fit.sigma_px, photons, background_photons, camera.excess_noise,
                                    camera.read_noise_electrons)
    return {"y": fit.y, "x": fit.x, "sigma_px": fit.sigma_px, "fwhm_px": FWHM_PER_SIGMA * fit.sigma_px,
            "amplitude": fit.amplitude, "peak": peak, "background": fit.background, "background_sd": noise,
            "photons": photons, "background_photons": background_photons,
            "snr": peak / noise if noise > 0 else float("nan"),
            "sbr": peak / above_baseline if above_baseline > 0 else float("nan"),
            "precision_px": precision, "flag": ", ".join(flags)}


PROGRESS_EVERY = 200  # fits between progress steps of `iter_measure_spots` (~2-3 s on a slow CPU core)


def measure_spots(image, points, pixel_size_nm: float | None = None, radius: int = 3,
                  camera: CameraCalibration | None = None, frame: int | None = None,
                  sigma_guess: float = 1.0) -> pd.DataFrame:
    """Fit every point of `points` on `image` and return one row per point (columns `COLUMNS`).

    `image` is a Y x X frame or a T x Y x X movie (numpy, memmap, zarr or dask: only the frames that hold
    points are read); `points` are (y, x) or (frame, y, x) rows, see `locate_points`. The fit is a
    pixel-integrated Gaussian plus flat background over the (2 radius + 1)^2 window (least squares).
    `peak` is the fitted spot's value in a pixel centred on it (amplitude x `centre_fraction`: the Gaussian's
    height for well-sampled spots, finite for undersampled ones);
    SNR = peak / background_sd (the SD of a ring of pixels around the spot, other spots left out:
    `background_sd`);
    SBR = peak / (background - camera baseline), napari-psf-analysis's signal-to-background. `flag` is ''
    for a usable fit, else 'outside image', 'no convergence', 'edge', 'centre at limit' (the fitted centre on
    the window's edge: the label lies beside a spot), 'width at limit' (sigma at its bound, 0.15 px or
    `radius`: a noise spike or no spot), 'saturated' (a pixel within `radius` at the camera's clipping level,
    `CameraCalibration.saturation`: the fit widens a flat top), 'no signal' (the integrated signal under 5 noise SDs
    of its area: amplitude / (background SD x sqrt(4 pi (sigma^2 + 1/12)))), 'fit failed:
    ...' and/or 'overlap' (another point within radius + 2 sigma). Without `pixel_size_nm`
    the nm columns are NaN.
    """
    return run_to_end(iter_measure_spots(image, points, pixel_size_nm, radius, camera, frame, sigma_guess))


def iter_measure_spots(image, points, pixel_size_nm: float | None = None, radius: int = 3,
                       camera: CameraCalibration | None = None, frame: int | None = None,
                       sigma_guess: float = 1.0) -> Generator[int, None, pd.DataFrame]:
    """Generator form of `measure_spots`: yields the number of points done so far after every frame and every
    PROGRESS_EVERY fits (a progress bar, a cancel between steps), returns the table."""
    camera = camera or CameraCalibration()
    shape = tuple(image.shape)
    frames, yx, _, point_ids = locate_points(shape, points, frame)
    saturation = camera.saturation(image.dtype)
    rows: list[dict] = []
    for t in np.unique(frames):
        in_frame = np.flatnonzero(frames == t)
        if len(shape) == 3 and not 0 <= t < shape[0]:
            rows += [{"point": point_ids[i], "frame": t, "y": yx[i, 0], "x": yx[i, 1], "flag": "outside image"}
                     for i in in_frame]
            yield len(rows)
            continue
        plane = as_array(image if t < 0 else image[t], np.float64)
        for number, i in enumerate(in_frame, 1):
            others = yx[in_frame[in_frame != i]]
            others = others[np.max(np.abs(others - yx[i]), axis=1) <= 2 * radius + 5]  # only neighbours matter
            rows.append({"point": point_ids[i], "frame": t, **_measure_one(
                plane, yx[i, 0], yx[i, 1], others, radius, camera, sigma_guess, saturation)})
            if number % PROGRESS_EVERY == 0 and number < len(in_frame):
                yield len(rows)
        yield len(rows)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS).sort_values("point", kind="stable").reset_index(drop=True)
    table["flag"] = table["flag"].fillna("").astype(str)
    scale = float(pixel_size_nm) if pixel_size_nm else float("nan")
    for name in ("sigma", "fwhm", "precision"):
        table[f"{name}_nm"] = table[f"{name}_px"] * scale
    table["point"] = table["point"].astype(int)
    table["frame"] = table["frame"].astype(int)
    return table


def iter_average_profile(image, table: pd.DataFrame, radius: int = 3, bin_px: float = 0.25
                         ) -> Generator[int, None, pd.DataFrame]:
    """Generator form of `average_profile`: yields the frames done after each frame, returns the profile."""
    edges = np.arange(0.0, radius + 1.0 + bin_px, bin_px)
    total, count = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    good = table[(table["flag"] == "") & (table["peak"] > 0)]
    for done, (t, spots) in enumerate(good.groupby("frame"), start=1):
        plane = as_array(image if t < 0 else image[t], np.float64)
        for spot in spots.itertuples():
            top, left = max(int(round(spot.y)) - radius - 1, 0), max(int(round(spot.x)) - radius - 1, 0)
            window = plane[top:top + 2 * radius + 3, left:left + 2 * radius + 3]
            rows, cols = np.mgrid[top:top + window.shape[0], left:left + window.shape[1]]
            distance = np.hypot(rows - spot.y, cols - spot.x).ravel()
            which = np.digitize(distance, edges) - 1
            inside = which < len(total)
            np.add.at(total, which[inside], ((window.ravel() - spot.background) / spot.peak)[inside])
            np.add.at(count, which[inside], 1)
        yield done
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return pd.DataFrame({"r_px": (edges[:-1] + edges[1:]) / 2, "profile": mean, "pixels": count.astype(int)})


def average_profile(image, table: pd.DataFrame, radius: int = 3, bin_px: float = 0.25) -> pd.DataFrame:
    """Mean radial profile of the usable spots of `table` (measured on `image`): pixel values minus the
    fitted background, divided by what a pixel centred on the spot holds by the fit (so 1 at the centre of
    an undistorted spot), binned by distance to the fitted centre (px)."""
    return run_to_end(iter_average_profile(image, table, radius, bin_px))
