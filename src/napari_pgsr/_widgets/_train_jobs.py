"""What the Train widget runs in its worker: the pairs made from layers or movie files, a preview's frames,
and the core training loop (plain functions, with no widget in them)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import context_indices, split_refs
from ..io import read_movie
from ..pairs import Pairs, pair_stacks, pairs_at
from ..training.config import TrainConfig, as_trained


@dataclass
class ResumedSettings:
    """What the worker read from the model file it resumes: the settings kept, and the curves so far."""

    path: Path
    config: TrainConfig
    history: dict


@dataclass(frozen=True)
class StoppedBeforeTraining:
    """What the worker returns when Stop came while the pairs were made: nothing trained, nothing written."""

    message: str


def resumed_settings(path: Path, chosen: TrainConfig) -> ResumedSettings:
    """The settings `path` was trained with, with the length of training, the device and bf16 of `chosen`
    (the widget's): a resumed run keeps the rest."""
    from ..modelfile import load_model

    model = load_model(path)
    stored = as_trained(model.metadata.get("config") or {})
    if not stored:
        raise ValueError(f"{path} holds no training settings to resume with")
    config = TrainConfig.from_dict({**stored, "steps": chosen.steps, "minutes": chosen.minutes,
                                    "device": chosen.device, "cpu_bf16": chosen.cpu_bf16})
    return ResumedSettings(path, config, model.metadata.get("history") or {})


def pairs_from_layers(low_layer, high_layer) -> Pairs:
    """Pairs from the Exposure pairs widget's layers: read straight from the movie file when it is known
    (fast patch sampling), else from the layers' data."""
    meta = low_layer.metadata
    source = meta.get("source_path")
    if "low_index" in meta and source and Path(source).exists():
        movie = read_movie(source)
        # the file still holds what was split (not rewritten since, nor the layer cropped or a copy's)
        if movie.shape[1:] == tuple(low_layer.data.shape[1:]) and max(meta["low_index"] + meta["high_index"]) < len(
                movie.data) and len(meta["low_index"]) == len(low_layer.data):
            return pairs_at(movie, meta["low_index"], meta["high_index"], low_first=meta.get("low_first"))
    return pair_stacks(low_layer.data, high_layer.data, name=low_layer.name)


def training_job(config: TrainConfig, make_pairs: Callable[[], list[Pairs]], output: Path, resume: Path | None,
                 stop: threading.Event, preview_every: int):
    """Worker body: when resuming, the stored settings (yielded as ResumedSettings: loading a large model takes
    seconds, not for the GUI thread), then the pairs made (their exposure check reads every frame), then the
    core training generator, stopped cooperatively through `stop`. Resuming, `config` gives only the length
    of training, the device and bf16."""
    import torch

    from ..training.loop import iter_training

    if resume is not None:
        settings = resumed_settings(resume, config)
        yield settings
        config = settings.config
    yield "preparing: reading the movies' exposures"
    pairs = make_pairs()
    preview = preview_frames(pairs, config) if preview_every else None
    if stop.is_set():  # (a step-0 model written now would only stand in the way of the next Train)
        kept = f"{output} is as it was" if resume is not None else f"{output} was not written"
        return StoppedBeforeTraining(f"stopped before training began; {kept}")
    threads = torch.get_num_threads()
    if threads > 1:  # leave a core to napari's drawing, or the viewer stutters on small machines
        torch.set_num_threads(threads - 1)
    try:
        return (yield from iter_training(config, pairs, output, resume=resume, should_stop=stop.is_set,
                                         preview=preview, preview_every=preview_every))
    finally:
        torch.set_num_threads(threads)
        _free_gpu_memory()


def preview_frames(pairs: list[Pairs], config: TrainConfig) -> np.ndarray:
    """The low frames (with their context) of the middle validation pair of the split the training makes, at
    most 256 x 256: what the preview restores as training goes on, so it shows frames the model does not
    learn from (the middle pair of a movie is a training pair in many a split)."""
    try:
        _, validation = split_refs(pairs, config.validation_fraction, config.block_pairs, gap=1 + config.context)
    except ValueError:  # too few pairs to hold any out: the training says so
        validation = []
    movie, pair = validation[len(validation) // 2] if validation else (0, len(pairs[0]) // 2)
    corner = slice(0, 256)
    return np.stack([pairs[movie].read_low(int(i), corner, corner) for i in
                     context_indices(pair, len(pairs[movie]), config.context)]).astype(np.float32)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
