"""The width of the spots a posterior-mean restoration draws when its localisation is as good as the photon
limit allows.

Not a limit for MAE-trained models: a U-Net trained 7200 steps with MAE drew AP2 spots 77.6 nm wide, below
the 81.6 nm (and the perfect camera's 78.7 nm) printed here (results/quality_unet_7200_cpu.md). MAE returns
the per-pixel median, which is narrower than the mean where the position is uncertain, and a network may use
what it has learnt about the sample, which a fit to one spot does not.

    .venv/bin/python benchmarks/photon_limit.py [--frames 40] [--size 256]

A network trained with MSE returns, for each pixel, about the mean of the high exposures that its input
allows. For a spot it draws the true PSF blurred by everything the input leaves open about the
spot's position in the target frame: the localisation uncertainty of the low frame (at best the Cramer-Rao
bound, which a maximum-likelihood fit reaches; Mortensen et al. 2010 eq. 5) and the spot's diffusion between
the low frame and the high frame it is trained to imitate. Its fitted width is then
sqrt(sigma_psf^2 + precision^2 + 2 D dt) per axis.

For the true spots of the held-out movies that quality.py scores (same seeds, spots brighter than 300
photons in the high exposure, away from the border), this prints the median of that width, computed with the
camera's excess noise factor F^2 = 2 (EMCCD) and F^2 = 1 (a perfect photon
counter); the lowest median a model can show when it finds only 80% or 50% of the spots (those with the
narrowest limits: the scorer measures widths on the spots a model found); the share of spots whose width
can be within 5% of the PSF at all; and the same with K = 2 context frames on each side (5 low frames: 5x
the photons, diffusion ignored within them: a lower bound).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality import MIN_PHOTONS  # noqa: E402

from napari_pgsr.pairs import split_alternating  # noqa: E402
from napari_pgsr.analysis import mortensen_mle_precision  # noqa: E402
from napari_pgsr.physics import EMCCD, Microscope  # noqa: E402
from napari_pgsr.simulate import KINDS, SCENES, simulate_movie  # noqa: E402

BORDER_PX = 4  # as the scorer's spot suggestions


def spot_widths(kind: str, seed: int, frames: int, size: int, context: int = 0,
                excess_noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Per true spot of the low frames: (photon-limited width of a posterior-mean restoration in nm, detected
    photons)."""
    microscope, camera, scene = Microscope(), EMCCD(), SCENES[kind]
    sim = simulate_movie(kind, frames, (size, size), seed=seed)
    exposures, mid_times, bleach = sim.exposures_s, sim.mid_times_s, sim.bleach
    pairs = split_alternating(sim.movie, name=kind)
    widths, detected = [], []
    for low, high in zip(pairs.low_index, pairs.high_index):
        rows = sim.spots["frame"] == low
        y, x, photons = sim.spots["y"][rows], sim.spots["x"][rows], sim.spots["photons"][rows]
        inside = (np.minimum(y, x) >= BORDER_PX) & (np.maximum(y, x) < size - BORDER_PX)
        keep = inside & (photons * exposures.max() / exposures[low] >= MIN_PHOTONS)
        rate = sim.background_photons_per_s[np.rint(y[keep]).astype(int), np.rint(x[keep]).astype(int)]
        background = camera.quantum_efficiency * rate * exposures[low] * bleach[low] + camera.clock_induced_charge
        n = camera.quantum_efficiency * photons[keep] * (2 * context + 1)
        precision = microscope.pixel_size_nm * mortensen_mle_precision(
            microscope.sigma_px, n, background * (2 * context + 1), excess_noise)
        diffusion_nm2 = 2 * scene.diffusion_um2_s * 1e6 * abs(mid_times[high] - mid_times[low])
        widths.append(np.sqrt(microscope.sigma_nm**2 + precision**2 + diffusion_nm2))
        detected.append(n / (2 * context + 1))
    return np.concatenate(widths), np.concatenate(detected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per held-out movie")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    sigma = Microscope().sigma_nm
    print(f"PSF sigma {sigma:.1f} nm; within 5%: <= {1.05 * sigma:.1f} nm. Widths a posterior-mean (MSE) "
          "restoration of the low frames draws with photon-limited localisation (not a bound for MAE; median "
          "over the scored spots; F^2: the camera's excess noise factor)\n")
    print("| sample | context K | spots | median detected photons (one low frame) | median width, F^2 = 2 (nm) "
          "| median width, F^2 = 1 (nm) | F^2 = 1, 80% found | F^2 = 1, 50% found "
          "| spots that can be within 5% (F^2 = 1) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for number, kind in enumerate(KINDS):
        for context in (0, 2):
            seed = 1000 + number  # quality.py's held-out movies
            emccd, photons = spot_widths(kind, seed, args.frames, args.size, context, 2.0)
            ideal, _ = spot_widths(kind, seed, args.frames, args.size, context, 1.0)
            narrowest = np.sort(ideal)
            found = [np.median(narrowest[:max(1, int(share * narrowest.size))]) for share in (0.8, 0.5)]
            print(f"| {kind} | {context} | {emccd.size} | {np.median(photons):.0f} | {np.median(emccd):.1f} "
                  f"| {np.median(ideal):.1f} | {found[0]:.1f} | {found[1]:.1f} "
                  f"| {np.mean(ideal <= 1.05 * sigma):.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
