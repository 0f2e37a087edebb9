"""Training patches from exposure pairs: aligned random crops, dihedral augmentation, offset, normalization."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .pairs import Pairs

PairRef = tuple[int, int]  # (movie number, pair number)


@dataclass(frozen=True)
class Normalization:
    """Percentile normalization fitted on training data: x -> (x - lo) / (hi - lo), separately for low and high."""

    low_lo: float
    low_hi: float
    high_lo: float
    high_hi: float
    percentiles: tuple[float, float] = (1.0, 99.8)

    def low(self, x: np.ndarray) -> np.ndarray:
        """Normalize a low-exposure image."""
        return (np.asarray(x, np.float32) - np.float32(self.low_lo)) / np.float32(self.low_hi - self.low_lo)

    def high(self, x: np.ndarray) -> np.ndarray:
        """Normalize a high-exposure image."""
        return (np.asarray(x, np.float32) - np.float32(self.high_lo)) / np.float32(self.high_hi - self.high_lo)

    def high_inverse(self, y: np.ndarray) -> np.ndarray:
        """Back from model output to high-exposure intensities."""
        return np.asarray(y, np.float32) * np.float32(self.high_hi - self.high_lo) + np.float32(self.high_lo)

    def to_dict(self) -> dict:
        """Plain dict for model files."""
        return {**asdict(self), "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, values: dict) -> Normalization:
        """Inverse of to_dict."""
        return cls(**{**values, "percentiles": tuple(values.get("percentiles", (1.0, 99.8)))})


def fit_normalization(pairs: Sequence[Pairs], refs: Sequence[PairRef], percentiles=(1.0, 99.8),
                      max_frames: int = 16, seed: int = 0) -> Normalization:
    """Fit percentiles on up to `max_frames` training pairs (read whole), never on validation frames."""
    if not refs:
        names = ", ".join(p.name for p in pairs)
        raise ValueError(f"cannot fit a normalization for {names}: no training pairs")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(refs), size=min(max_frames, len(refs)), replace=False)
    lows, highs = zip(*(pairs[refs[i][0]].read(refs[i][1]) for i in sorted(chosen)))
    low_values = np.concatenate([f.ravel()[::4] for f in lows]).astype(np.float64)
    high_values = np.concatenate([f.ravel()[::4] for f in highs]).astype(np.float64)
    lo_l, hi_l = np.percentile(low_values, percentiles)
    lo_h, hi_h = np.percentile(high_values, percentiles)
    return Normalization(float(lo_l), float(max(hi_l, lo_l + 1e-6)), float(lo_h), float(max(hi_h, lo_h + 1e-6)),
                         tuple(percentiles))


WHOLE_MOVIES_WITHIN = 2.0  # held-out movies may hold up to 2x (or down to 1/2) the requested pairs


def split_refs(pairs: Sequence[Pairs], validation_fraction: float = 0.1, block_pairs: int = 16,
               gap: int = 1) -> tuple[list[PairRef], list[PairRef]]:
    """Train/validation split: whole movies when the last movies hold about the requested share (within a
    factor `WHOLE_MOVIES_WITHIN`), else blocks of consecutive pairs within each movie.

    Validation blocks are spread evenly over time, and the `gap` training pairs on each side of them are
    left out, so no two adjacent frames straddle the split (gap = 1 + temporal context). Whole movies are
    only taken when they fit: two movies would hold out half of the pairs for a requested tenth.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    everything = [(m, p) for m, movie in enumerate(pairs) for p in range(len(movie))]
    if validation_fraction == 0:
        return everything, []
    if len(pairs) > 1:
        wanted = max(1.0, validation_fraction * len(everything))
        held = [sum(len(movie) for movie in pairs[-k:]) for k in range(1, len(pairs))]
        k = 1 + int(np.argmin([abs(np.log(count / wanted)) if count else np.inf for count in held]))
        if held[k - 1] and 1 / WHOLE_MOVIES_WITHIN <= held[k - 1] / wanted <= WHOLE_MOVIES_WITHIN:
            val_movies = set(range(len(pairs) - k, len(pairs)))
            return ([r for r in everything if r[0] not in val_movies], [r for r in everything if r[0] in val_movies])
    train, val = [], []
    for m, movie in enumerate(pairs):
        if len(pairs) > 1 and len(movie) < 2 + 2 * gap:
            train += [(m, p) for p in range(len(movie))]  # too short to split: all of it trains
            continue
        movie_train, movie_val = _time_blocks(movie, validation_fraction, block_pairs, gap)
        train += [(m, p) for p in movie_train]
        val += [(m, p) for p in movie_val]
    names = ", ".join(movie.name for movie in pairs)
    if not val:
        raise ValueError(f"{names}: {len(everything)} pairs, no movie long enough to hold out validation pairs "
                         f"with a gap of {gap} (or set validation_fraction to 0: --validation-fraction 0)")
    if not train:
        raise ValueError(f"{names}: no training pairs left after holding out {len(val)} of {len(everything)} "
                         "pairs for validation; lower validation_fraction")
    return train, val


def _time_blocks(movie: Pairs, validation_fraction: float, block_pairs: int, gap: int) -> tuple[list[int], list[int]]:
    """Pair indices of one movie for training and validation: evenly spread validation blocks with `gap`
    pairs left out on each side."""
    n = len(movie)
    if n < 2 + 2 * gap:
        raise ValueError(f"{movie.name}: {n} pair{'s are' if n != 1 else ' is'} too few to hold out validation "
                         f"pairs with a gap of {gap}; need at least {2 + 2 * gap} (or set validation_fraction to 0: "
                         "--validation-fraction 0)")
    n_val = max(1, int(round(validation_fraction * n)))
    n_blocks = int(np.ceil(n_val / max(1, block_pairs)))
    block = max(1, int(round(n_val / n_blocks)))
    starts = ((np.arange(n_blocks) + 0.5) * n / n_blocks - block / 2).astype(int).clip(0, n - block)
    is_val = np.zeros(n, bool)
    for start in starts:
        is_val[start:start + block] = True
    guard = np.zeros(n, bool)
    for shift in range(1, gap + 1):
        guard[:-shift] |= is_val[shift:]
        guard[shift:] |= is_val[:-shift]
    return [p for p in range(n) if not is_val[p] and not guard[p]], [p for p in range(n) if is_val[p]]


def context_indices(index: int, length: int, context: int) -> np.ndarray:
    """Indices index-context .. index+context, reflected at the ends of a sequence of `length`."""
    indices = np.arange(index - context, index + context + 1)
    period = max(1, 2 * (length - 1))
    indices = np.abs(indices) % period if length > 1 else np.zeros_like(indices)
    return np.where(indices > length - 1, period - indices, indices)


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: rotate by k % 4 quarter turns, mirror when k >= 4."""
    out = np.rot90(image, k % 4)
    return out[:, ::-1] if k >= 4 else out


class PatchDataset(torch.utils.data.Dataset):
    """Random aligned (low, high) crops as C x P x P and 1 x P x P float32 tensors (C = 1 + 2 * context
    neighbouring low frames), reading only the frames it needs.

    Item i is a pure function of (seed, epoch, i), so a resumed run sees the same patches. Validation items
    are fixed crops without augmentation.
    """

    def __init__(self, pairs: Pairs | Sequence[Pairs], patch_size: int = 64, split: str = "train",
                 validation_fraction: float = 0.1, length: int | None = None, augment: bool = True,
                 offset_max: int = 0, normalization: Normalization | None = None, seed: int = 0,
                 block_pairs: int = 16, context: int = 0, refs: Sequence[PairRef] | None = None):
        self.pairs = [pairs] if isinstance(pairs, Pairs) else list(pairs)
        if split not in ("train", "validation", "all"):
            raise ValueError(f"split must be 'train', 'validation' or 'all', got {split!r}")
        for movie in self.pairs:
            height, width = movie.low.shape[1:]
            if patch_size > min(height, width):
                raise ValueError(f"{movie.name}: frames of {height}x{width} pixels are smaller than the "
                                 f"{patch_size}x{patch_size} patch size; choose a patch size <= {min(height, width)}")
        if refs is not None:  # an explicit set (a resumed run's stored split)
            if split == "validation" and normalization is None:  # (no training pairs here to fit one on)
                raise ValueError("a validation set given by its pairs (refs) needs the training set's "
                                 "normalization: pass normalization=")
            train, val = (list(refs), []) if split != "validation" else ([], list(refs))
        else:
            train, val = split_refs(self.pairs, validation_fraction if split != "all" else 0.0, block_pairs,
                                    gap=1 + context)
        self.train_refs, self.validation_refs = train, val
        self.refs = val if split == "validation" else train
        self.context = int(context)
        if not self.refs:
            names = ", ".join(p.name for p in self.pairs)
            raise ValueError(f"{names}: no {split} pairs available ({sum(map(len, self.pairs))} pairs in total)")
        self.normalization = normalization or fit_normalization(self.pairs, train, seed=seed)
        self.patch_size, self.split, self.seed, self.epoch = patch_size, split, seed, 0
        self.augment = augment and split != "validation"
        self.offset_max = int(offset_max)
        self.length = length or len(self.refs)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """New random patches for a new epoch (training split only)."""
        self.epoch = epoch

    def _validation_ref(self, index: int) -> PairRef:
        """Fewer items than pairs are spread over all of them (taking the first ones saw only the start of a
        long movie: 64 patches covered its first third, before most bleaching)."""
        count = len(self.refs)
        return self.refs[index * count // self.length] if self.length < count else self.refs[index % count]

    def _rng(self, index: int) -> np.random.Generator:
        if self.split == "validation":
            return np.random.default_rng([self.seed, 1 << 30, index])
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self._rng(index)
        ref = self._validation_ref(index) if self.split == "validation" else \
            self.refs[int(rng.integers(len(self.refs)))]
        movie = self.pairs[ref[0]]
        height, width = movie.low.shape[1:]
        y = int(rng.integers(height - self.patch_size + 1))
        x = int(rng.integers(width - self.patch_size + 1))
        rows, cols = slice(y, y + self.patch_size), slice(x, x + self.patch_size)
        low, high = (a.astype(np.float32) for a in movie.read(ref[1], rows, cols))
        if self.context:
            neighbours = context_indices(ref[1], len(movie), self.context)
            low = np.stack([movie.read_low(int(q), rows, cols).astype(np.float32) if q != ref[1] else low
                            for q in neighbours])
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(f"{movie.name}: pair {ref[1]} (frames {movie.low_index[ref[1]]}/"
                             f"{movie.high_index[ref[1]]}) contains NaN or infinite values")
        if self.offset_max > 0:
            offset = np.float32(rng.integers(0, self.offset_max + 1))
            low, high = low + offset, high + offset
        low = low if low.ndim == 3 else low[None]
        if self.augment:
            k = int(rng.integers(8))
            low, high = np.stack([dihedral(channel, k) for channel in low]), dihedral(high, k)
        low, high = self.normalization.low(low), self.normalization.high(high)
        return torch.from_numpy(np.ascontiguousarray(low)), torch.from_numpy(np.ascontiguousarray(high)[None])


def data_provenance(pairs: Sequence[Pairs], files: Sequence[str] = ()) -> dict:
    """What a model was trained on: names, pair counts, frame shapes, a hash of each movie's first pair,
    and the size of each input file."""
    import hashlib

    digests = []
    for movie in pairs:
        low, high = movie.read(0)
        digests.append(hashlib.sha1(np.ascontiguousarray(low).tobytes() + np.ascontiguousarray(high).tobytes())
                       .hexdigest()[:16])
    sizes = {}
    for name in files:
        try:
            sizes[str(name)] = os.path.getsize(name)
        except OSError:
            sizes[str(name)] = None
    return {"names": [movie.name for movie in pairs], "pairs": [len(movie) for movie in pairs],
            "frame_shapes": [list(movie.low.shape[1:]) for movie in pairs], "first_pair_sha1": digests,
            "file_sizes": sizes, "summaries": [movie.summary() for movie in pairs]}
