"""npe2 sample data: simulated alternating-exposure movies with their true spot positions."""

from __future__ import annotations

import numpy as np

from .simulate import simulate_movie

TITLES = {"ap2": "AP2 clathrin pits", "beads": "fluorescent beads", "single_molecules": "single molecules"}


def sample_layers(kind: str, n_frames: int = 100, size: int = 256, seed: int = 0) -> list[tuple]:
    """The movie as an image layer and the ground-truth spots as a hidden points layer (frame, y, x)."""
    sim = simulate_movie(kind, n_frames, (size, size), seed)
    px = sim.pixel_size_um
    name = f"{TITLES[kind]} (simulated)"
    metadata = {"simulation": sim.config, "pixel_size_um": px, "low_first": sim.low_first,
                "exposures_s": sim.exposures_s.tolist()}
    image = (sim.movie, {"name": name, "scale": (1.0, px, px), "metadata": metadata}, "image")
    coords = np.column_stack([sim.spots["frame"], sim.spots["y"], sim.spots["x"]])
    points = (coords, {"name": f"{name} true spots", "scale": (1.0, px, px), "visible": False, "size": 4,
                       "metadata": {"ground_truth": True},
                       "face_color": "transparent", "border_color": "yellow",
                       "features": {"photons": sim.spots["photons"], "spot_id": sim.spots["id"]}}, "points")
    return [image, points]


def ap2_sample() -> list[tuple]:
    """Simulated AP2 clathrin pits in a cell, 10 ms / 100 ms alternating."""
    return sample_layers("ap2")


def beads_sample() -> list[tuple]:
    """Simulated fluorescent beads, 10 ms / 100 ms alternating."""
    return sample_layers("beads")


def single_molecules_sample() -> list[tuple]:
    """Simulated blinking single molecules in a cell, 10 ms / 100 ms alternating."""
    return sample_layers("single_molecules")
