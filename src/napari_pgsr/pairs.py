"""Split an alternating low/high exposure movie into frame-aligned (low, high) pairs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
from scipy import ndimage

from .io import Movie, as_array, clipping_level, frame_source, lazy_frames, release_mapped_pages

MIN_RATIO = 1.3  # below this, low and high exposures cannot be told apart


class NoAlternation(ValueError):
    """The movie's frames do not alternate between two exposures (a movie of one exposure, say)."""


@dataclass
class Pairs:
    """Frame-aligned low/high exposure pairs taken from one movie (or from two stacks)."""

    low: da.Array  # P x Y x X, lazy
    high: da.Array
    low_first: bool | None  # None when the pairs came from two separate stacks
    ratio: float  # exposure (intensity above the camera baseline) ratio high / low
    low_index: np.ndarray  # frame index of each low frame in its source
    high_index: np.ndarray
    dropped: list[int] = field(default_factory=list)  # frames that break the alternation or are unmatched
    baseline: float = 0.0
    low_source: object = None  # array the low frames are read from (memmap/zarr/numpy/dask)
    high_source: object = None
    name: str = ""

    def __len__(self) -> int:
        return int(self.low_index.size)

    def read(self, pair: int, rows: slice = slice(None), cols: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Read (a crop of) one low and one high frame straight from their sources."""
        return (_read(self.low_source, int(self.low_index[pair]), rows, cols),
                _read(self.high_source, int(self.high_index[pair]), rows, cols))

    def read_low(self, pair: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Read (a crop of) one low frame alone (a temporal context's neighbours need no high frame)."""
        return _read(self.low_source, int(self.low_index[pair]), rows, cols)

    def summary(self) -> dict:
        """Plain-python description for layer metadata, logs and model files."""
        return {"pairs": len(self), "low_first": self.low_first, "ratio": round(float(self.ratio), 3),
                "dropped_frames": [int(i) for i in self.dropped], "baseline": round(float(self.baseline), 2),
                "source": self.name}


def _read(source, index: int, rows: slice, cols: slice) -> np.ndarray:
    crop = source[index, rows, cols]
    return as_array(crop)


def _as_dask(data) -> da.Array:
    if isinstance(data, da.Array):
        return data
    return lazy_frames(data, "frames")


def _check_movie(data, name: str) -> None:
    if data.ndim != 3:
        raise ValueError(f"{name}: expected a movie T x Y x X, got {data.ndim} dimensions {tuple(data.shape)}")
    if data.shape[0] < 2:
        raise ValueError(f"{name}: has {data.shape[0]} frame(s) of {data.shape[1]}x{data.shape[2]}; "
                         "pairs need at least 2 frames")


def iter_frame_means(data, out: np.ndarray, name: str = "movie",
                     max_samples: int = 65_536) -> Iterator[tuple[int, int]]:
    """Fill `out` with the mean of every frame, yielding (frames done, total) as it goes.

    Means come from an evenly strided subset of pixels, so a big movie is only partly read.
    """
    n_frames, height, width = data.shape
    step = max(1, int(np.sqrt(height * width / max_samples)))
    chunk = 64
    source = frame_source(data)
    for start in range(0, n_frames, chunk):
        block = data[start:start + chunk, ::step, ::step]
        block = as_array(block, np.float64)
        out[start:start + block.shape[0]] = block.mean(axis=(1, 2))
        release_mapped_pages(source)  # a memory-mapped movie's pages read so far
        yield min(start + chunk, n_frames), n_frames
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ValueError(f"{name}: frames {bad[:10].tolist()} contain NaN or infinite values")


def frame_means(data, name: str = "movie", progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Mean intensity of every frame (see iter_frame_means); `progress(done, total)` is called per chunk."""
    means = np.empty(data.shape[0])
    for done, total in iter_frame_means(data, means, name):
        if progress is not None:
            progress(done, total)
    return means


def _binned(data, indices: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the given frames, binned k x k (averages out shot and read noise), and which bins hold a
    pixel at the camera's clipping level in any of them (their mean is no measure of the light)."""
    stack = as_array(data[np.sort(indices)])
    level = clipping_level(stack.dtype)
    clipped = (stack >= level).any(axis=0) if level is not None else np.zeros(stack.shape[1:], bool)
    mean = stack.astype(np.float64).mean(axis=0)
    height, width = (n // k * k for n in mean.shape)
    if height == 0 or width == 0:
        return mean, clipped
    return (mean[:height, :width].reshape(height // k, k, width // k, k).mean(axis=(1, 3)),
            clipped[:height, :width].reshape(height // k, k, width // k, k).any(axis=(1, 3)))


def _binned_mean(data, indices: np.ndarray, k: int = 4) -> np.ndarray:
    """Mean of the given frames, binned k x k."""
    return _binned(data, indices, k)[0]


def estimate_baseline(data, means: np.ndarray, low: np.ndarray, high: np.ndarray, n_pairs: int = 8) -> float:
    """Camera offset b from the first pairs: pixelwise high = b + ratio * (low - b), a straight line whose
    intercept gives b. Falls back to a low percentile of the dimmest frame when there is no clear slope.

    The slope is sqrt(cov(A, high) cov(B, high)) / cov(A, B) over two halves A, B of the low frames: their noise is
    independent, so it does not dilute the slope as in cov(low, high) / var(low), which on a nearly uniform
    sample read a ratio of 2 as 4.3 or refused the movie as not alternating."""
    count = min(n_pairs, low.size, high.size)
    halves = (low[:count:2], low[1:count:2])
    paired = means[np.concatenate([low, high])]  # (a blank or dark frame left out is no measure of the offset)
    dimmest = paired.min()
    if count >= 2:
        (low_a, clipped_a), (low_b, clipped_b), (high_image, clipped_high) = (
            _binned(data, frames) for frames in (*halves, high[:count]))
        # bins with a clipped pixel lie below the line: on 0.6% clipped high pixels the offset read 68 for 100
        unclipped = ~(clipped_a | clipped_b | clipped_high).ravel()
        low_a, low_b, high_image = (image.ravel()[unclipped] for image in (low_a, low_b, high_image))
        low_image = 0.5 * (low_a + low_b)
        structure = np.cov(low_a, low_b)[0, 1] if low_a.size >= 4 else 0.0
        # a structure clearly above the noise: the halves agree (else the slope is noise over noise)
        if structure > 0 and structure > 0.25 * np.sqrt(low_a.var() * low_b.var()):
            # both halves against the high frames: bleaching makes half A a little brighter than half B
            slope = np.sqrt(max(np.cov(low_a, high_image)[0, 1] * np.cov(low_b, high_image)[0, 1], 0.0)) / structure
            if slope > 1.1:
                intercept = high_image.mean() - slope * low_image.mean()
                # below the dimmest frame, which holds some light; by a hair only: with a large offset (1000
                # ADU) a low frame may hold just 5 ADU above it, and a cap at 99% of it read a 10x movie as 5.5x
                return float(min(intercept / (1 - slope), dimmest - 1e-3 * max(abs(dimmest), 1.0)))
    frame = _binned_mean(data, np.array([int(low[np.argmin(means[low])])]))
    return float(min(np.percentile(frame, 1.0), 0.9 * dimmest))


CLIPPED_SHARE = 1e-3  # share of the high frames' pixels at the clipping level above which the split warns


def clipped_share(data, frames: np.ndarray, n_frames: int = 8) -> tuple[float, float | None]:
    """The share of pixels at the camera's clipping level in the first `n_frames` of `frames` (the brightest
    before bleaching, and those the offset was read from), and that level (None for floating-point data)."""
    level = clipping_level(data.dtype)
    if level is None or not frames.size:
        return 0.0, level
    return float(np.mean(as_array(data[np.sort(frames[:n_frames])]) >= level)), level


def warn_if_clipped(data, high: np.ndarray, name: str) -> None:
    """Warn when over CLIPPED_SHARE of the first high frames' pixels are at the camera's maximum."""
    share, level = clipped_share(data, high)
    if share > CLIPPED_SHARE:
        warnings.warn(f"{name}: {share:.2%} of the high-exposure pixels are at the camera's maximum ({level:g}): "
                      "their spots are clipped, and a model trained on them learns flat-topped spots; lower the "
                      "high exposure, the laser power or the gain", stacklevel=3)


MIN_AGREEMENT = 0.5  # low-high correlation, relative to low-low, below which the frames show other things


def structure_agreement(data, low: np.ndarray, high: np.ndarray, n_pairs: int = 8) -> float | None:
    """How well the high frames show what the low frames show: corr(low, high) / corr(low A, low B) of the
    first pairs' binned images (A, B: two halves of the low frames, so noise sets the scale). About 1 for
    exposure pairs; near 0 for two channels interleaved in one stack (spots and a membrane, say), which
    were split as pairs with a ratio of 6. None when the low frames show no structure to compare."""
    count = min(n_pairs, low.size, high.size)
    if count < 2:
        return None
    low_a, low_b = (_binned_mean(data, half).ravel() for half in (low[:count:2], low[1:count:2]))
    high_image = _binned_mean(data, high[:count]).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        within = np.corrcoef(low_a, low_b)[0, 1]
        across = np.corrcoef(0.5 * (low_a + low_b), high_image)[0, 1]
    if not np.isfinite(within) or within < 0.3 or not np.isfinite(across):
        return None
    return float(across / within)


ODD_FRAME_FACTOR = 2.0  # light above the baseline beyond 2x (or below 1/2) of its exposure's running median


def odd_frames(means: np.ndarray, low: np.ndarray, high: np.ndarray, baseline: float, window: int = 9) -> np.ndarray:
    """Frames whose light above the baseline is off their own exposure's running median by more than
    `ODD_FRAME_FACTOR` and by more than 5 robust SDs of the frame-to-frame scatter: a low frame taken in the
    dark, a high frame of a misfired laser, a stray brightfield frame. A dark low frame was paired with its
    high one and trained on as an input without signal."""
    odd = []
    for index in (low, high):
        if index.size < 5:
            continue
        above = means[index] - baseline
        typical = ndimage.median_filter(above, size=min(window, index.size), mode="mirror")  # (no edge copies)
        deviation = above - typical
        scatter = 1.4826 * np.median(np.abs(deviation))
        off = (above < typical / ODD_FRAME_FACTOR) | (above > typical * ODD_FRAME_FACTOR)
        odd += index[off & (np.abs(deviation) > 5.0 * scatter) & (typical > 0)].tolist()
    return np.array(sorted(odd), int)


def blank_frames(means: np.ndarray) -> np.ndarray:
    """Frames of zeros (no camera reads exactly 0 in every pixel, offset and noise aside): a camera's blank
    first frame, the never-written end of an aborted acquisition. They are no exposure: one dragged the
    log-mean envelope 20 units down, so seven frames around it were lost. (A frame whose mean is below 0,
    in a movie with its offset subtracted, is a frame all the same: it stays.)"""
    return means == 0


def classify_frames(means: np.ndarray, window: int = 7, blank: np.ndarray | None = None) -> np.ndarray:
    """True for bright (high exposure) frames: above the geometric midpoint of the local min/max envelope
    of the frames that are not `blank` (blank frames read False; they are paired with none).

    The envelope follows slow bleaching trends, and a window of 7 frames always holds both exposures
    even around a dropped or duplicated frame.
    """
    blank = np.zeros(means.shape, bool) if blank is None else blank
    if blank.all():
        return np.zeros(means.shape, bool)
    log = np.where(blank, np.nan, np.log(np.where(blank, 1.0, np.maximum(means, 1e-9))))
    if means.size < window:  # too short for a trend to matter: one midpoint for all
        return ~blank & (np.nan_to_num(log, nan=-np.inf) > 0.5 * (np.nanmax(log) + np.nanmin(log)))
    size = window | 1  # odd, so the window is centred
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(log, size // 2, mode="edge"), size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a window of blank frames only: NaN, not bright
        midpoint = 0.5 * (np.nanmax(windows, axis=1) + np.nanmin(windows, axis=1))
    with np.errstate(invalid="ignore"):
        return ~blank & (log > midpoint)


def _pair_up(bright: np.ndarray, low_first: bool,
             blank: np.ndarray | None = None) -> tuple[list[int], list[int], list[int]]:
    """Walk the frames, pairing each frame of the first phase with the next if that is of the other phase
    (a blank frame pairs with none)."""
    low, high, dropped = [], [], []
    first_is_bright = not low_first
    usable = np.ones(bright.size, bool) if blank is None else ~blank
    t = 0
    while t < bright.size:
        if (t + 1 < bright.size and usable[t] and usable[t + 1] and bright[t] == first_is_bright
                and bright[t + 1] != first_is_bright):
            lo, hi = (t, t + 1) if low_first else (t + 1, t)
            low.append(lo)
            high.append(hi)
            t += 2
        else:
            dropped.append(t)
            t += 1
    return low, high, dropped


def exposure_ratio(means: np.ndarray, low: np.ndarray, high: np.ndarray, baseline: float) -> float:
    """Sum over pairs of (high - baseline) / sum of (low - baseline): the bright pairs weigh most, so the
    late pairs of a bleached movie, with hardly any light above the baseline, do not swamp it with noise."""
    above_low = max(float(np.sum(means[low] - baseline)), 1e-9)
    return float(np.sum(means[high] - baseline) / above_low)


def split_alternating(data, low_first: bool | None = None, name: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Pairs:
    """Split a T x Y x X alternating-exposure movie (a Movie or an array) into lazy low and high stacks.

    `low_first=None` detects the phase; True/False says whether each low frame is paired with the frame
    after it or before it. Frames that break the alternation (dropped or duplicated frames) and an
    unmatched last frame are left out and listed in `dropped`. A movie with no alternation (exposure ratio
    below 1.3) raises ValueError.
    """
    if isinstance(data, Movie):
        name = name or (data.path.name if data.path else None)
        data = data.data
    name = name or "movie"
    _check_movie(data, name)
    return pairs_from_means(data, frame_means(data, name, progress), low_first, name)


def pairs_from_means(data, means: np.ndarray, low_first: bool | None = None, name: str = "movie") -> Pairs:
    """The second half of split_alternating, once the frame means are known."""
    blank = blank_frames(means)
    bright = classify_frames(means, blank=blank)
    # Phase unknown: keep the reading that pairs the most frames (ties: the first usable frame's class).
    first = bright[int(np.argmin(blank))]
    choices = (not first, bool(first)) if low_first is None else (low_first,)
    low_first, low, high, dropped = max(((lf, *_pair_up(bright, lf, blank)) for lf in choices),
                                        key=lambda reading: len(reading[1]))
    low, high = np.array(low, int), np.array(high, int)
    if low.size == 0:
        raise NoAlternation(f"{name}: no low/high frame pairs found in {data.shape[0]} frames")
    baseline = estimate_baseline(data, means, low, high)
    odd = odd_frames(means, low, high, baseline)
    if odd.size:  # a dark frame (the laser did not fire) or a stray bright one: its pair is left out
        keep = ~(np.isin(low, odd) | np.isin(high, odd))
        dropped = sorted({*dropped, *low[~keep].tolist(), *high[~keep].tolist()})
        low, high = low[keep], high[keep]
        if low.size == 0:
            raise ValueError(f"{name}: no low/high frame pairs left after leaving out odd frames {odd.tolist()}")
        baseline = estimate_baseline(data, means, low, high)
    ratio = exposure_ratio(means, low, high, baseline)
    warn_if_clipped(data, high, name)
    agreement = structure_agreement(data, low, high)
    if agreement is not None and agreement < MIN_AGREEMENT:
        warnings.warn(f"{name}: the dim and bright frames show different structures (their images correlate "
                      f"{max(agreement, 0.0):.0%} as well as the dim frames with each other): two channels interleaved "
                      "in one stack rather than two exposures? Training needs pairs of the same field",
                      stacklevel=2)
    if ratio < MIN_RATIO:
        raise NoAlternation(f"{name}: no alternating exposure detected: the bright/dim frame intensity ratio is "
                         f"{ratio:.2f} (above a camera baseline of {baseline:.1f}); expected at least "
                         f"{MIN_RATIO} for alternating low/high exposures")
    stack, source = _as_dask(data), frame_source(data)
    return Pairs(stack[low], stack[high], bool(low_first), ratio, low, high, [int(i) for i in dropped],
                 baseline, source, source, name)


def _two_stack_baseline(low, high, low_means: np.ndarray, n_pairs: int = 8) -> float:
    """estimate_baseline for two stacks: interleave their first frames into one sequence."""
    n = min(n_pairs, low.shape[0])
    both = np.concatenate([np.asarray(low[:n]), np.asarray(high[:n])])
    means = np.concatenate([low_means[:n], both[n:].mean(axis=(1, 2))])
    return estimate_baseline(both, means, np.arange(n), np.arange(n, 2 * n))


def pair_stacks(low, high, name: str | None = None) -> Pairs:
    """Pair frame i of a low-exposure stack with frame i of a separately recorded high-exposure stack (arrays
    or `Movie`s; `name` defaults to the files' names)."""
    if name is None:
        names = [stack.path.name for stack in (low, high) if isinstance(stack, Movie) and stack.path]
        name = "+".join(names) if len(names) == 2 else "stacks"
    low, high = (stack.data if isinstance(stack, Movie) else stack for stack in (low, high))
    _check_movie(low, f"{name} (low)")
    _check_movie(high, f"{name} (high)")
    if tuple(low.shape) != tuple(high.shape):
        raise ValueError(f"{name}: low stack has shape {tuple(low.shape)} but high stack has "
                         f"{tuple(high.shape)}; expected the same number of frames of the same size")
    low_means, high_means = frame_means(low, f"{name} (low)"), frame_means(high, f"{name} (high)")
    index = np.arange(low.shape[0])
    baseline = _two_stack_baseline(low, high, low_means)
    ratio = exposure_ratio(np.concatenate([low_means, high_means]), index, index + len(index), baseline)
    if ratio < 1.0:
        raise ValueError(f"{name}: the 'high' stack is dimmer than the 'low' stack (ratio {ratio:.2f}); "
                         "were they swapped?")
    warn_if_clipped(high, index, f"{name} (high)")
    return Pairs(_as_dask(low), _as_dask(high), None, ratio, index, index.copy(), [], baseline,
                 frame_source(low), frame_source(high), name)


def pairs_at(data, low_index, high_index, name: str | None = None, low_first: bool | None = None) -> Pairs:
    """Pairs at known frame indices (e.g. stored in a layer's metadata by an earlier split)."""
    if isinstance(data, Movie):
        name = name or (data.path.name if data.path else None)
        data = data.data
    name = name or "movie"
    low, high = np.asarray(low_index, int), np.asarray(high_index, int)
    if low.shape != high.shape or low.size == 0:
        raise ValueError(f"{name}: need as many low as high frame indices (got {low.size} and {high.size})")
    outside = [int(i) for i in np.concatenate([low, high]) if not 0 <= i < data.shape[0]]
    if outside:  # (a negative index would silently count from the movie's end)
        raise ValueError(f"{name}: frame index {outside[0]} is outside the movie's {data.shape[0]} frames "
                         f"(0 to {data.shape[0] - 1})")
    means = frame_means(data, name)
    baseline = estimate_baseline(data, means, low, high)
    stack, source = _as_dask(data), frame_source(data)
    return Pairs(stack[low], stack[high], low_first, exposure_ratio(means, low, high, baseline), low, high, [],
                 baseline, source, source, name)


def frame_runs(indices) -> str:
    """Frame numbers as runs of one step: '0-38 step 2, 41-99 step 2' (a single frame stands alone)."""
    values = [int(i) for i in indices]
    runs, start = [], 0
    while start < len(values):
        end = start + 1
        if end < len(values):
            step = values[end] - values[start]
            while end + 1 < len(values) and values[end + 1] - values[end] == step:
                end += 1
            end += 1
        run = values[start:end]
        runs.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" + (f" step {run[1] - run[0]}"
                                                                                 if run[1] - run[0] != 1 else ""))
        start = end
    return ", ".join(runs)
