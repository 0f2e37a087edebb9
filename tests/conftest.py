"""Shared fixtures: small simulated movies written to temporary TIFF files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pgsr.io import write_movie
from napari_pgsr.simulate import simulate_movie


@pytest.fixture(scope="session")
def ap2_small():
    """40 frames of 64x64 simulated AP2 pits, low exposure first."""
    return simulate_movie("ap2", n_frames=40, shape=(64, 64), seed=1)


@pytest.fixture
def movie_file(tmp_path, ap2_small):
    """The small AP2 movie as an ImageJ TIFF with 160 nm pixels."""
    path = tmp_path / "ap2.tif"
    write_movie(path, ap2_small.movie, pixel_size_um=ap2_small.pixel_size_um)
    return path


@pytest.fixture(autouse=True)
def widgets_in_threads(monkeypatch):
    """Widgets run their work in worker threads, as for users, whatever the shell running the suite set;
    a test that wants them synchronous sets NAPARI_PGSR_SYNC=1 itself."""
    monkeypatch.delenv("NAPARI_PGSR_SYNC", raising=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
