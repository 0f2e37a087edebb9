"""Physically based alternating-exposure movies with ground truth (AP2 pits, beads, single molecules).

``python -m napari_pgsr.simulate --kind ap2 --frames 200 --size 1200 -o movie.tif`` writes a movie, its
noise-free expected image (``--expected``) and a CSV of the true spots.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .physics import EMCCD, Microscope, render_spots

KINDS = ("ap2", "beads", "single_molecules")


@dataclass(frozen=True)
class Acquisition:
    """Alternating exposure timing."""

    low_exposure_s: float = 0.010
    high_exposure_s: float = 0.100
    readout_s: float = 0.010
    low_first: bool = True

    def exposures(self, n_frames: int) -> np.ndarray:
        """Exposure time of every frame in acquisition order."""
        first, second = (self.low_exposure_s, self.high_exposure_s)
        if not self.low_first:
            first, second = second, first
        return np.where(np.arange(n_frames) % 2 == 0, first, second)


@dataclass(frozen=True)
class Scene:
    """What is imaged: spot kind, density, brightness (photons/s at the camera) and background."""

    kind: str = "ap2"
    spots_per_um2: float = 0.25
    spot_rate: float = 8_000.0  # photons/s at peak brightness
    cell_background_rate: float = 500.0  # autofluorescence, photons/pixel/s inside the cell
    outside_background_rate: float = 30.0  # photons/pixel/s outside the cell
    with_cell: bool = True
    lifetime_s: float = 30.0  # AP2 pit lifetime (mean)
    diffusion_um2_s: float = 0.002
    on_rate_hz: float = 0.5  # single-molecule blinking
    off_rate_hz: float = 5.0
    bleach_time_s: float = 60.0  # fluorescence decays as exp(-illumination time / bleach_time_s)


SCENES = {
    "ap2": Scene(),
    "beads": Scene(kind="beads", spots_per_um2=0.05, spot_rate=30_000.0, cell_background_rate=0.0,
                   outside_background_rate=50.0, with_cell=False, diffusion_um2_s=0.0, bleach_time_s=600.0),
    "single_molecules": Scene(kind="single_molecules", spots_per_um2=0.3, spot_rate=20_000.0,
                              cell_background_rate=300.0, diffusion_um2_s=0.01, bleach_time_s=120.0),
}


@dataclass
class SimulatedMovie:
    """A simulated movie (T x Y x X uint16), its noise-free expectation in ADU and the true spots per frame."""

    movie: np.ndarray
    expected: np.ndarray
    spots: dict[str, np.ndarray]  # columns: frame, id, y, x, photons (expected photons at the camera)
    exposures_s: np.ndarray
    low_first: bool
    pixel_size_um: float
    background_photons_per_s: np.ndarray  # Y x X
    config: dict = field(default_factory=dict)
    mid_times_s: np.ndarray | None = None  # each frame's exposure midpoint, where its spots are drawn
    bleach: np.ndarray | None = None  # each frame's remaining fluorescence (1: unbleached)


def cell_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth, irregular cell footprint covering roughly the middle 60% of the field (float 0..1)."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    theta = np.arctan2(yy - height / 2, xx - width / 2)
    radius = 0.35 * np.ones_like(theta)
    for harmonic in (2, 3, 5):
        radius += 0.04 * rng.normal() * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    distance = np.hypot((yy - height / 2) / height, (xx - width / 2) / width)
    mask = (distance < radius).astype(np.float64)
    return ndimage.gaussian_filter(mask, sigma=max(2.0, 0.01 * min(shape)))


SUBSTEPS = 8  # slices of each exposure: spots move and molecules blink while the shutter is open


class _Emitters:
    """Every spot's position and brightness, advanced through time slice by slice (a Brownian walk, and the
    brightness course of its kind), so a frame can draw each spot where it was during each slice."""

    def __init__(self, scene: Scene, n: int, shape, weights: np.ndarray, step_px: float, duration: float, rng):
        self.scene, self.step_px, self.rng = scene, step_px, rng
        flat = weights.ravel() / weights.sum()
        start = rng.choice(flat.size, size=n, p=flat)
        self.y = start // shape[1] + rng.uniform(-0.5, 0.5, n)
        self.x = start % shape[1] + rng.uniform(-0.5, 0.5, n)
        self.time: float | None = None
        if scene.kind == "ap2":
            # pits nucleate, grow to a peak at 70% of their lifetime, then bud off and vanish
            self.lifetime = rng.gamma(3.0, scene.lifetime_s / 3.0, n)
            self.birth = rng.uniform(-self.lifetime, duration)
            self.peak = rng.uniform(0.3, 1.0, n)
        elif scene.kind == "single_molecules":
            total = scene.on_rate_hz + scene.off_rate_hz
            self.on = rng.random(n) < (scene.on_rate_hz / total if total > 0 else 0.0)
        elif scene.kind != "beads":
            raise ValueError(f"unknown sample kind {scene.kind!r}; expected one of {KINDS}")

    def advance(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y, x, brightness 0..1), each (n, len(times)), at the increasing `times` (s) after the last ones."""
        n, scene = self.y.size, self.scene
        ys, xs, brightness = (np.empty((n, times.size)) for _ in range(3))
        for j, t in enumerate(times):
            dt = 0.0 if self.time is None else t - self.time
            self.y = self.y + self.rng.normal(size=n) * self.step_px * np.sqrt(dt)
            self.x = self.x + self.rng.normal(size=n) * self.step_px * np.sqrt(dt)
            if scene.kind == "single_molecules" and dt > 0:
                # the two-state chain's exact transition probabilities over dt
                total = scene.on_rate_hz + scene.off_rate_hz
                settle = 1 - np.exp(-total * dt) if total > 0 else 0.0
                switch_on = self.rng.random(n) < scene.on_rate_hz / total * settle if total > 0 else False
                switch_off = self.rng.random(n) < scene.off_rate_hz / total * settle if total > 0 else False
                self.on = np.where(self.on, ~switch_off, switch_on)
            self.time = float(t)
            ys[:, j], xs[:, j] = self.y, self.x
            brightness[:, j] = self._brightness(t)
        return ys, xs, brightness

    def _brightness(self, t: float) -> np.ndarray:
        if self.scene.kind == "beads":
            return np.ones(self.y.size)
        if self.scene.kind == "single_molecules":
            return self.on.astype(np.float64)
        age = (t - self.birth) / self.lifetime
        rise, fall = np.clip(age / 0.7, 0, 1), np.clip((1 - age) / 0.3, 0, 1)
        return self.peak * np.where(age < 0.7, rise, fall) * ((age >= 0) & (age <= 1))


def simulate_movie(
    kind: str = "ap2",
    n_frames: int = 100,
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    microscope: Microscope | None = None,
    camera: EMCCD | None = None,
    acquisition: Acquisition | None = None,
    scene: Scene | None = None,
) -> SimulatedMovie:
    """Simulate an alternating low/high exposure movie with its noise-free expectation and true spots.
    Each exposure is drawn as `SUBSTEPS` slices, so spots blur as they move and molecules blink within it;
    the true position is the spot's photon-weighted mean over the exposure, its photons their sum."""
    if kind not in SCENES:
        raise ValueError(f"unknown sample kind {kind!r}; expected one of {KINDS}")
    if n_frames < 1 or len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"need n_frames >= 1 and a 2-D shape of at least 8x8 pixels, got {n_frames}, {shape}")
    microscope, camera = microscope or Microscope(), camera or EMCCD()
    acquisition, scene = acquisition or Acquisition(), scene or SCENES[kind]
    rng = np.random.default_rng([seed, 0])
    exposures = acquisition.exposures(n_frames)
    starts = np.concatenate([[0.0], np.cumsum(exposures + acquisition.readout_s)[:-1]])
    times = starts + exposures / 2
    duration = float(starts[-1] + exposures[-1])
    bleach = np.exp(-(np.cumsum(exposures) - exposures / 2) / scene.bleach_time_s)

    pixel_um = microscope.pixel_size_nm / 1000
    mask = cell_mask(shape, rng) if scene.with_cell else np.ones(shape)
    background = scene.outside_background_rate + scene.cell_background_rate * mask
    area_um2 = float(mask.sum()) * pixel_um**2
    n_spots = max(1, int(rng.poisson(scene.spots_per_um2 * area_um2)))
    step_px = np.sqrt(2 * scene.diffusion_um2_s) / pixel_um
    emitters = _Emitters(scene, n_spots, shape, mask + 1e-6, step_px, duration, rng)
    slices = (np.arange(SUBSTEPS) + 0.5) / SUBSTEPS

    movie = np.empty((n_frames, *shape), dtype=np.uint16)
    expected = np.empty((n_frames, *shape), dtype=np.float32)
    rows = []
    for k in range(n_frames):
        ys, xs, brightness = emitters.advance(starts[k] + slices * exposures[k])
        sliced = scene.spot_rate * exposures[k] / SUBSTEPS * bleach[k] * brightness  # photons per slice
        photons_spot = sliced.sum(axis=1)
        lit = photons_spot > 0
        weights = np.where(lit[:, None], sliced, 1.0)
        y = (weights * ys).sum(axis=1) / weights.sum(axis=1)
        x = (weights * xs).sum(axis=1) / weights.sum(axis=1)
        shown = lit & (y > -0.5) & (y < shape[0] - 0.5) & (x > -0.5) & (x < shape[1] - 0.5)
        drawn = sliced > 0  # every slice of every lit spot, one just outside the frame too (its light is in it)
        photons = background * exposures[k] * bleach[k]
        photons = photons + render_spots(shape, ys[drawn], xs[drawn], sliced[drawn], microscope.sigma_px)
        expected[k] = camera.expected_adu(photons)
        movie[k] = camera.expose(photons, np.random.default_rng([seed, 1, k]))
        ids = np.flatnonzero(shown)
        rows.append(np.column_stack([np.full(ids.size, k), ids, y[ids], x[ids], photons_spot[ids]]))
    table = np.concatenate(rows) if rows else np.empty((0, 5))
    spots = {name: table[:, i] for i, name in enumerate(("frame", "id", "y", "x", "photons"))}
    spots["frame"], spots["id"] = spots["frame"].astype(np.int64), spots["id"].astype(np.int64)
    config = {"kind": kind, "n_frames": n_frames, "shape": list(shape), "seed": seed,
              "psf_sigma_nm": microscope.sigma_nm, "low_exposure_s": acquisition.low_exposure_s,
              "high_exposure_s": acquisition.high_exposure_s}
    return SimulatedMovie(movie, expected, spots, exposures, acquisition.low_first, pixel_um,
                          background.astype(np.float32), config, times, bleach)


def write_spots_csv(path: str | Path, spots: dict[str, np.ndarray]) -> None:
    """Write the true spot table as CSV with a header (frame, id, y, x, photons)."""
    names = ("frame", "id", "y", "x", "photons")
    table = np.column_stack([spots[n] for n in names])
    np.savetxt(path, table, delimiter=",", header=",".join(names), comments="", fmt="%d,%d,%.4f,%.4f,%.2f")


def low_frame_spots(sim: SimulatedMovie) -> dict[str, np.ndarray]:
    """The true spots of the low-exposure frames, `frame` renumbered to the pair index: the frames of the
    low stack (Exposure pairs) and of a movie restored with `--frames low`."""
    from .pairs import split_alternating

    low_index = split_alternating(sim.movie, low_first=sim.low_first).low_index
    pair_of_frame = np.full(len(sim.movie), -1)
    pair_of_frame[low_index] = np.arange(len(low_index))
    keep = pair_of_frame[sim.spots["frame"]] >= 0
    return {**{name: values[keep] for name, values in sim.spots.items()},
            "frame": pair_of_frame[sim.spots["frame"][keep]]}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: simulate a movie and write it (plus truth) to disk."""
    from .io import write_movie

    parser = argparse.ArgumentParser(prog="napari-pgsr-simulate",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--kind", choices=KINDS, default="ap2", help="sample [ap2]")
    parser.add_argument("--frames", type=int, default=100, help="number of frames (low and high together) [100]")
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="frame size: N or H W pixels [256]")
    parser.add_argument("--seed", type=int, default=0, help="random seed [0]")
    parser.add_argument("--high-first", action="store_true", help="start with the long exposure")
    parser.add_argument("--expected", action="store_true", help="also write the noise-free movie")
    parser.add_argument("-o", "--output", required=True, help="output .tif / .ome.tif")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)
    if args.frames < 2:
        print(f"napari-pgsr-simulate: error: --frames: at least 2 (a low and a high exposure), got {args.frames}",
              file=sys.stderr)
        return 2
    out = Path(args.output)
    stem = out.name.removesuffix(".tif").removesuffix(".tiff").removesuffix(".ome")
    spots_path, low_spots_path = out.with_name(stem + "_spots.csv"), out.with_name(stem + "_low_spots.csv")
    expected_path = out.with_name(stem + "_expected.tif")
    existing = [str(path) for path in (out, spots_path, low_spots_path) + ((expected_path,) if args.expected else ())
                if path.exists()]
    if existing and not args.overwrite:
        print(f"napari-pgsr-simulate: error: {', '.join(existing)} exist{'s' * (len(existing) == 1)}; pass "
              "--overwrite to replace", file=sys.stderr)
        return 2
    shape = (args.size[0], args.size[-1])
    sim = simulate_movie(args.kind, args.frames, shape, args.seed,
                         acquisition=Acquisition(low_first=not args.high_first))
    write_movie(out, sim.movie, pixel_size_um=sim.pixel_size_um, overwrite=args.overwrite)
    write_spots_csv(spots_path, sim.spots)
    write_spots_csv(low_spots_path, low_frame_spots(sim))  # napari-pgsr-measure's labels
    if args.expected:
        write_movie(expected_path, sim.expected, pixel_size_um=sim.pixel_size_um, overwrite=args.overwrite)
    print(f"wrote {out} ({args.frames} frames of {shape[0]}x{shape[1]}, {sim.spots['frame'].size} spot "
          f"instances, pixel {sim.pixel_size_um * 1000:.0f} nm, low exposure first: {sim.low_first}); true spots: "
          f"{spots_path.name}, and numbered as the low frames (labels for napari-pgsr-measure): "
          f"{low_spots_path.name}{f'; noise-free movie: {expected_path.name}' if args.expected else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
