"""npe2 reader: open TIFF / OME-TIFF / ImageJ movies lazily as napari image layers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .io import Movie, is_tiff_path, read_movie


def get_reader(path: str | list[str]) -> Callable | None:
    """Return the movie reader when every path is a TIFF file, else None (napari tries other readers)."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(is_tiff_path(p) for p in paths):
        return None
    return read_movies


def contrast_from_first_frame(data) -> tuple[float, float]:
    """Display range from one frame, so napari never scans a whole lazy movie."""
    frame = np.asarray(data[0].compute() if hasattr(data[0], "compute") else data[0], dtype=np.float64)
    low, high = np.percentile(frame, (0.1, 99.9))
    return float(low), float(max(high, low + 1))


def movie_layer_data(movie: Movie, name: str | None = None) -> tuple:
    """A (data, kwargs, 'image') tuple for napari, with the file's pixel size as scale."""
    pixel = movie.pixel_size_um
    scale = (1.0, pixel, pixel) if pixel else (1.0, 1.0, 1.0)
    stem = movie.path.name if movie.path else "movie"
    for suffix in (".tiff", ".tif", ".ome"):
        stem = stem.removesuffix(suffix)
    kwargs = {"name": name or stem, "scale": scale, "metadata": dict(movie.metadata),
              "contrast_limits": contrast_from_first_frame(movie.data)}
    return movie.data, kwargs, "image"


def read_movies(path: str | list[str]) -> list[tuple]:
    """Read one or several movie files; errors name the file and what was expected."""
    paths = path if isinstance(path, list) else [path]
    return [movie_layer_data(read_movie(p)) for p in paths]
