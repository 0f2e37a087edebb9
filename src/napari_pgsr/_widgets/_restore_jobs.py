"""What the Restore widget runs in its workers: restoring a movie to a file, and exporting a model for the
BioImage Model Zoo (plain functions of the core's calls, with no widget in them)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import Movie, display_range, frame_source


class Cancelled(Exception):
    """Raised inside the worker when the user cancels."""


@dataclass(frozen=True)
class CancelledRun:
    """What the worker returns after a cancel (a returned exception would count as a worker error)."""

    message: str


@dataclass(frozen=True)
class LazyRestoration:
    """What the lazy restoration's worker returns: the frames (restored as napari shows them), contrast
    limits from the first of them, and the model file it used."""

    data: object  # a dask array
    contrast_limits: tuple[float, float]
    model_path: Path


def describe_job(model_path: Path):
    """Worker body (a generator, for `start`): the model file loaded (seconds for a large one) and described."""
    from ..modelfile import load_model

    yield model_path
    return load_model(model_path)


def lazy_restore_job(model_path: Path, data, low: bool, name: str, device: str, batch: int | None,
                     precision: str, cancel: threading.Event):
    """Worker body (a generator of (done, total), for `start`): the model loaded; for `low`, or a model with
    temporal context, every frame's brightness read chunk by chunk (stopped by `cancel`), to take the low
    frames or to refuse an alternating movie; then the lazy frames, and the first one restored for the
    contrast (the lazy array keeps it, so napari shows it without restoring it again). A CancelledRun when
    cancelled."""
    from ..inference import Restorer, check_context_on_all_frames, restore_lazily, warn_of_foreign_intensities
    from ..modelfile import load_model
    from ..pairs import iter_frame_means, pairs_from_means

    total = data.shape[0] + 1  # every frame's brightness, then the first frame restored
    yield 0, total
    model = load_model(model_path)
    indices, means = None, None
    if low or model.context:
        means = np.empty(data.shape[0])
        for done, _ in iter_frame_means(data, means, name):
            if cancel.is_set():
                return CancelledRun(f"cancelled while reading the brightness of '{name}'; nothing was restored")
            yield done, total
        if low:
            indices = pairs_from_means(data, means, None, name).low_index
        else:  # all frames: a model with context must not take high frames for neighbours
            check_context_on_all_frames(model, data, f"layer '{name}'", means=means)
    warn_of_foreign_intensities(model.normalization, frame_source(data)[int(indices[0]) if indices is not None
                                                                          else 0], f"layer '{name}'")
    restorer = Restorer(model, batch=batch, device=device, precision=precision)
    lazy = restore_lazily(restorer, frame_source(data), indices)
    limits = display_range(lazy, 1)
    yield total, total
    return LazyRestoration(lazy, limits, model_path)


def restore_job(model_path: Path, layer_data, source_path: str | None, pixel_size, frames: str, output: Path,
                device: str, batch: int | None, precision: str, cancel: threading.Event, progress):
    """Worker body (plain function): stream the restored movie to `output` (TIFF or OME-Zarr); returns the
    output path, or a CancelledRun when the user cancelled (a TIFF is then not written; an OME-Zarr store
    keeps the frames restored so far)."""
    from ..inference import Restorer, restore_to_file
    from ..modelfile import load_model

    movie = Movie(layer_data, frame_source(layer_data), Path(source_path) if source_path else None, pixel_size)
    done = [0, -1]  # frames written, of how many

    def report(count: int, total: int) -> None:
        done[:] = count, total
        progress(count, total)

    restorer = Restorer(load_model(model_path), batch=batch, device=device, precision=precision)
    try:
        restore_to_file(restorer, movie, output, frames=frames, progress=report, should_stop=cancel.is_set)
    except InterruptedError:  # not an error: reported as information
        return CancelledRun(f"cancelled after {done[0]} frames; {output.name} was not written (a TIFF is written "
                            "whole; save to a .zarr name to keep what was restored)")
    if cancel.is_set() and done[0] != done[1]:  # a cancel after the last frame changes nothing
        return CancelledRun(f"cancelled after {done[0]} frames; they are kept in {output} (unwritten frames read "
                            "as NaN; napari-pgsr-predict --resume completes it)")
    return output


def export_job(model_path: Path, output: Path, authors: list[str], movie=None, alternating: bool | None = None,
               movie_name: str = ""):
    """Worker body (a generator, for `start`): write the bioimage.io package, its test input taken from the
    first low-exposure frames of `movie` (a layer's data) when given, and run bioimageio.core's own test of
    it; returns (output, passed, the test's summary)."""
    from ..bmz import check_package, export_bioimageio, movie_low_frames
    from ..modelfile import load_model

    yield "writing the package"
    model = load_model(model_path)
    frames = None if movie is None else movie_low_frames(movie, 2 * model.context + 1, alternating=alternating,
                                                          name=movie_name)
    path = export_bioimageio(model, output, authors=authors or None, test_frames=frames)
    yield "testing with bioimageio.core"
    passed, summary = check_package(path)
    return path, passed, summary
