"""npe2 reader: open TIFF / OME-TIFF / ImageJ movies lazily as napari image layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .io import (Movie, SingleFrameError, display_range, is_tiff_path, movie_stem, read_image, read_movie,
                 tiff_layout_readable)
from .zarr_movie import is_zarr_movie


def get_reader(path: str | list[str]) -> Callable | None:
    """Return the movie reader when every path is a TIFF movie or frame or an OME-Zarr movie (with a time
    axis), else None (napari tries other readers: colour images, z-stacks, hyperstacks, plates, labels...)."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all((is_tiff_path(p) and tiff_layout_readable(p)) or is_zarr_movie(p) for p in paths):
        return None
    return read_movies


def movie_layer_data(movie: Movie, name: str | None = None) -> tuple:
    """A (data, kwargs, 'image') tuple for napari, with the file's pixel size as scale."""
    pixel = movie.pixel_size_um
    scale = (1.0, pixel, pixel) if pixel else (1.0, 1.0, 1.0)
    kwargs = {"name": name or (movie_stem(movie.path) if movie.path else "movie"), "scale": scale,
              "metadata": dict(movie.metadata), "contrast_limits": display_range(movie.data)}
    return movie.data, kwargs, "image"


def read_movies(path: str | list[str]) -> list[tuple]:
    """Read one or several movie files; errors name the file and what was expected. A file of one frame (a
    snapshot, one restored pair) opens as a 2-D image."""
    layers = []
    for one in path if isinstance(path, list) else [path]:
        try:
            layers.append(movie_layer_data(read_movie(one)))
        except SingleFrameError:
            frame, pixel = read_image(one)
            # the source path: so the plugin's writer never saves over the file (its metadata would be lost)
            layers.append((frame, {"name": movie_stem(one), "scale": (pixel, pixel) if pixel else (1.0, 1.0),
                                   "contrast_limits": display_range(frame[None], 1),
                                   "metadata": {"source_path": str(Path(one).resolve()),
                                                "pixel_size_um": pixel}}, "image"))
    return layers
