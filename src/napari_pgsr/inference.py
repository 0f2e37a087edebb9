"""Apply a trained model to frames: normalise, tile with overlap, batch, blend, de-normalise.

Tiles start on multiples of 2**depth (so the U-Net's pooling grid matches a whole-frame pass) and each
tile's outer `margin` pixels, which see the tile's zero padding instead of real neighbours, get no weight;
beyond that a linear ramp blends neighbouring tiles. With a margin of half the receptive field the tiled
result equals the whole-frame result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .data import context_indices
from . import devices
from .devices import CompiledForward, autocast, available_memory, pick_device
from .heap import reusing_freed_memory
from .io import Movie, RecentFrames, as_array, frames_named_on_error, register_derived, write_movie
from .modelfile import ModelFile


PRECISIONS = ("auto", "fp32", "bf16")


def _starts(length: int, tile: int, stride: int, align: int) -> list[int]:
    """Tile origins covering [0, length): multiples of `align` (length and tile are), the last flush with
    the end; the stride is rounded down to a multiple of `align`, so overlaps never shrink."""
    if tile >= length:
        return [0]
    stride = max(align, stride - stride % align)
    return list(range(0, length - tile, stride)) + [length - tile]


def _weights(start: int, size: int, length: int, margin: int, ramp: int) -> np.ndarray:
    """1-D blending weights of one tile: zero in the margins facing other tiles, then a linear ramp."""
    position = np.arange(size, dtype=np.float32)
    weight = np.ones(size, np.float32)
    if start > 0:
        weight = np.minimum(weight, np.clip((position - margin + 1) / (ramp + 1), 0, 1))
    if start + size < length:
        weight = np.minimum(weight, np.clip((size - position - margin) / (ramp + 1), 0, 1))
    return weight


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    """cuDNN's TF32 off within the block (and only that setting), as it was after it."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


class Restorer:
    """A model ready to restore frames on a device: `restorer(frame_stack)` for one frame's C x Y x X input."""

    def __init__(self, model: ModelFile, tile: int | None = None, overlap: int | None = None,
                 batch: int | None = None, device: str = "auto", precision: str = "auto", compile: bool = False):
        self.model, self.device = model, pick_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16" and self.device.type == "cpu" and not devices.cpu_has_native_bf16():
            # (emulated bf16 ran 2.3x slower than fp32 on an AMD EPYC without it, and less exactly)
            warnings.warn("bf16 asked for, but this CPU has no hardware bf16 (AMX, AVX512-BF16), where it is "
                          "slower than fp32: restoring in fp32", RuntimeWarning, stacklevel=2)
            precision = "fp32"
        self.precision = precision
        for name, value in (("tile", tile), ("batch", batch)):
            if value is not None and value < 1:  # (0 or -5 ran as a few-pixel tile: 200x slower, unsaid)
                raise ValueError(f"{name} must be at least 1, got {value}")
        # channels-last: oneDNN and cuDNN run 3x3 convolutions much faster on it (1.7x on this CPU)
        self.network = model.network.to(self.device).eval().to(memory_format=torch.channels_last)
        # compiled: 1.1-1.6x faster, worth its seconds of compiling on long movies
        self.forward = CompiledForward(self.network) if compile else self.network
        # tiles and small frames share forward passes on a GPU; on a CPU one at a time keeps the caches warm
        # (batches of four 256² frames ran slower per frame) and the peak memory low
        batch = batch or (1 if self.device.type == "cpu" else 4)
        expected = 1 + 2 * model.context
        channels = getattr(self.network, "in_channels", expected)
        if channels != expected:
            raise ValueError(f"the model file does not hold together: its network takes {channels} input "
                             f"channel(s) but the model file says {expected} (context {model.context})")
        norm = model.normalization
        if not (np.isfinite([norm.low_lo, norm.low_hi, norm.high_lo, norm.high_hi]).all()
                and norm.low_hi > norm.low_lo and norm.high_hi > norm.high_lo):
            raise ValueError(f"the model file's normalisation is unusable ({norm}): each range needs hi > lo")
        arch = model.metadata.get("architecture", {})
        if arch.get("name") == "progan" and (arch.get("resolution", 0) < arch.get("max_resolution", 0)
                                             or arch.get("alpha", 1.0) < 1):
            warnings.warn(f"this ProGAN grew to {arch['resolution']} of {arch['max_resolution']} px only (its "
                          "training ended before it had grown): it learnt on patches averaged down to that size, so "
                          "it restores full frames at a scale it never saw", UserWarning, stacklevel=2)
        self.align = 2 ** getattr(self.network, "depth", 0)
        self.margin = (getattr(self.network, "receptive_field", 1) - 1) // 2
        chosen = overlap is None
        overlap = 2 * self.margin + 16 if overlap is None else overlap
        if overlap < 2 * self.margin:
            raise ValueError(f"overlap {overlap} is smaller than the receptive field needs ({2 * self.margin}); "
                             "tiles would show seams")
        self.auto_tile = tile is None
        tile = 512 if tile is None else tile  # used when a whole frame does not fit in memory
        self.tile = max(self.align, tile - tile % self.align)
        if chosen and self.tile < overlap + self.align:  # a deep network (a grown GAN) sees further than a tile
            self.tile = (overlap // self.align + 2) * self.align
            if not self.auto_tile:  # (a tile asked for, 256, ran as 1024 unsaid: a GPU's memory may not hold it)
                warnings.warn(f"tile {tile} is smaller than this network's overlap of {overlap} px needs: tiles of "
                              f"{self.tile} px are used", UserWarning, stacklevel=2)
        if self.tile < overlap + self.align:  # tiles step by the pooling grid: a smaller step leaves gaps
            smallest = -(-(overlap + self.align) // self.align) * self.align
            raise ValueError(f"tile {tile} with an overlap of {overlap} px leaves tiles {self.tile - overlap} px "
                             f"apart, less than this network's pooling grid of {self.align} px, so columns of pixels "
                             f"would be left out; choose a tile of at least {smallest} (or a smaller overlap)")
        self.overlap, self.batch = overlap, max(1, batch)
        self.frames_per_batch = self.batch
        self._staged: torch.Tensor | None = None
        self._largest_batch = self.batch
        self._frames_per_pass: dict[tuple[int, int], int] = {}
        self._staging_lock = threading.Lock()

    def _bytes_per_pixel(self) -> float:
        """Rough peak activation memory per input pixel: a few float tensors of the full-resolution level's
        width, the deeper levels adding as much again."""
        channels = getattr(self.network, "top_channels", 32)
        copies = 2 if getattr(self.network, "rot180_average", False) else 1  # it runs each input twice
        return 4.0 * 2 * channels * 6 * copies

    def _memory_budget(self) -> float:
        """Bytes the activations of one forward pass may take: half the free GPU memory; on a CPU a quarter
        of the available memory, at most 1 GiB (a whole 1200² frame peaked at 1.9 GB; in 2 x 2 tiles of
        632² it ran only ~4% slower)."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            # blocks torch holds but no tensor uses are free to this process too (after the first pass
            # the driver counts them as taken)
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return 0.5 * (free + cached)
        return min(0.25 * available_memory(), 2**30)

    def _memory_limit(self) -> float:
        """Bytes one forward pass may take when no tile fits the budget: most of what is free, not a share."""
        if self.device.type == "cuda":
            return 2.0 * self._memory_budget() * 0.9  # (the budget is half the free memory)
        return 0.5 * available_memory()

    def tile_for(self, height: int, width: int) -> int:
        """The tile for frames of this size: the whole frame when it fits the memory budget, else the
        largest square that splits it into the fewest tiles that fit (the least overlap computed twice)."""
        if not self.auto_tile:
            return self.tile
        rows, cols = height + -height % self.align, width + -width % self.align
        longest = max(rows, cols)
        budget, per_pixel = self._memory_budget(), self._bytes_per_pixel()
        computed = {}  # tile size: pixels the network computes over the frame with it
        for pieces in range(1, 256):
            size = -(-(longest + (pieces - 1) * self.overlap) // pieces)
            size += -size % self.align
            if size < self.overlap + self.align:
                break
            # (a tile's sides: the frame's shorter side caps one of them; a tall frame was costed as square)
            tile_pixels = min(size, rows) * min(size, cols)
            if tile_pixels * per_pixel <= budget:
                return size
            count = [1 if size >= side else -(-(side - self.overlap) // (size - self.overlap)) for side in (rows, cols)]
            computed[size] = count[0] * count[1] * tile_pixels
        # nothing fits the budget (a grown GAN sees 900 px around a pixel): the fewest pixels computed among the
        # sizes memory can still hold, not the fallback tile (16 tiles of 1024² for a 1200² frame computed 11.7x
        # its pixels, and were over the budget too); else the fallback tile
        limit = self._memory_limit()
        held = {size: pixels for size, pixels in computed.items()
                if min(size, rows) * min(size, cols) * per_pixel <= limit}
        return min(held, key=held.get) if held else self.tile

    def _network_output(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x Y x X normalised input on the device -> N x 1 x Y x X normalised output (float32)."""
        with self._precision():
            return self.network.activate(self.forward(x.to(memory_format=torch.channels_last)).float()).float()

    @torch.inference_mode()
    def _run(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        x = torch.from_numpy(np.stack(tiles)).to(self.device)
        return list(self._network_output(x).cpu().numpy()[:, 0])

    def restore_normalised(self, image: np.ndarray) -> np.ndarray:
        """C x Y x X normalised low-exposure input -> Y x X normalised restoration."""
        channels, height, width = image.shape
        pad_h, pad_w = -height % self.align, -width % self.align
        if pad_h or pad_w:  # the same padding the network would apply to the whole frame
            mode = "reflect" if pad_h < height and pad_w < width else "edge"
            image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)
        full_h, full_w = image.shape[1:]
        tile = self.tile_for(height, width)
        tile_h, tile_w = min(tile, full_h), min(tile, full_w)
        stride_h, stride_w = tile_h - self.overlap, tile_w - self.overlap
        ramp = self.overlap - 2 * self.margin
        boxes = [(y, x) for y in _starts(full_h, tile_h, stride_h, self.align)
                 for x in _starts(full_w, tile_w, stride_w, self.align)]
        total = np.zeros((full_h, full_w), np.float32)
        weight_sum = np.zeros((full_h, full_w), np.float32)
        # the tile was sized to the memory budget alone: only as many per pass as fit it together
        per_pass = min(self.batch, max(1, int(self._memory_budget() // (tile_h * tile_w * self._bytes_per_pixel()))))
        for first in range(0, len(boxes), per_pass):
            chunk = boxes[first:first + per_pass]
            outputs = self._run([image[:, y:y + tile_h, x:x + tile_w] for y, x in chunk])
            for (y, x), out in zip(chunk, outputs):
                weight = np.outer(_weights(y, tile_h, full_h, self.margin, ramp),
                                  _weights(x, tile_w, full_w, self.margin, ramp))
                total[y:y + tile_h, x:x + tile_w] += weight * out
                weight_sum[y:y + tile_h, x:x + tile_w] += weight
        if not weight_sum[:height, :width].all():  # never written as data: 0 became the high exposure's floor
            raise RuntimeError(f"tiles of {tile_h} x {tile_w} px overlapping by {self.overlap} left pixels of a "
                               f"{height} x {width} frame uncovered")
        return (total / weight_sum)[:height, :width]

    @property
    def arithmetic(self) -> str:
        """What the network computes in: 'fp32', 'bf16' or 'fp16' (auto on a GPU without bf16)."""
        if self.precision == "bf16":
            return "bf16"
        if self.precision == "fp32" or self.device.type not in ("cuda", "mps"):
            return "fp32"
        return "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp16"

    def _precision(self):
        """auto: bf16 (or fp16) on GPUs, fp32 on CPUs; bf16: also on CPUs (fast with AMX, ~3 significant
        digits); fp32: never reduced."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if self.precision == "fp32" and self.device.type == "cuda":
            # cuDNN computes float32 convolutions in TF32 (10-bit mantissa) on Ampere and newer unless told not to
            return _without_tf32()
        return autocast(self.device, self.precision == "auto" and self.device.type != "cpu")

    def fits_one_tile(self, height: int, width: int) -> bool:
        """Whether frames of this size go through the network whole (no tiles, nothing to blend)."""
        return max(height + -height % self.align, width + -width % self.align) <= self.tile_for(height, width)

    def frames_per_pass(self, height: int, width: int) -> int:
        """How many whole frames of this size one forward pass may take within the memory budget (at least
        one: a frame that does not fit alone is tiled instead). Decided once per frame size, so a compiled
        network sees one batch shape, not one per change in free memory."""
        if (height, width) not in self._frames_per_pass:
            pixels = (height + -height % self.align) * (width + -width % self.align)
            self._frames_per_pass[height, width] = max(1, int(self._memory_budget()
                                                              // (pixels * self._bytes_per_pixel())))
        return self._frames_per_pass[height, width]

    def restore_many(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
        """Several C x Y x X inputs at once: frames that fit in one tile share forward passes, as many per
        pass as the memory budget allows (small frames alone would leave a GPU or the CPU's cores idle);
        larger ones are tiled one by one."""
        height, width = stacks[0].shape[-2:]
        if not self.fits_one_tile(height, width):
            return [self(stack) for stack in stacks]
        per_pass = self.frames_per_pass(height, width)
        if len(stacks) > per_pass:  # passes of equal size: less filling up on the compiled path
            size = -(-len(stacks) // -(-len(stacks) // per_pass))
            return [out for first in range(0, len(stacks), size)
                    for out in self.restore_many(stacks[first:first + size])]
        if isinstance(self.forward, CompiledForward):
            # a compiled graph fits one batch shape: a movie's short last batch is filled up, not recompiled
            self._largest_batch = min(max(self._largest_batch, len(stacks)), per_pass)
            return self._restore_whole(stacks, rows=self._largest_batch)
        return self._restore_whole(stacks)

    def _staging(self, rows: int, shape: tuple) -> torch.Tensor:
        """A reused host buffer for `rows` inputs of `shape`; page-locked for a GPU, so the copy runs at full
        speed. It grows when needed and is otherwise sliced."""
        buffer = self._staged
        if buffer is None or tuple(buffer.shape[1:]) != shape or buffer.shape[0] < rows:
            buffer = torch.empty((rows, *shape), dtype=torch.float32, pin_memory=self.device.type == "cuda")
            self._staged = buffer
        return buffer[:rows]

    @torch.inference_mode()
    def _restore_whole(self, stacks: list[np.ndarray], rows: int | None = None) -> list[np.ndarray]:
        """Whole frames in one batch (filled up to `rows` with copies of the last); normalising, padding and
        de-normalising run on the device (on a GPU the host's NumPy passes took ~8 ms per 1200² frame, eight
        times the network's share)."""
        with self._staging_lock:  # one staging buffer: callers on other threads (napari workers) take turns
            return self._restore_staged(stacks, max(rows or 0, len(stacks)))

    def _restore_staged(self, stacks: list[np.ndarray], rows: int) -> list[np.ndarray]:
        height, width = stacks[0].shape[-2:]
        count = len(stacks)
        staged = self._staging(rows, tuple(stacks[0].shape))
        # the one host pass over the frames (and their cast to float32)
        np.stack([np.asarray(stack) for stack in stacks], out=staged.numpy()[:count], casting="unsafe")
        staged[count:] = staged[count - 1]
        norm = self.model.normalization
        x = staged.to(self.device, non_blocking=staged.is_pinned())
        x = torch.sub(x, norm.low_lo).div_(norm.low_hi - norm.low_lo)
        missing = ~torch.isfinite(x)
        if missing.any():  # NaN borders of a registered movie: filled, else the network spreads them its reach
            fill = torch.nanmedian(torch.where(missing, torch.nan, x).flatten(1), dim=1).values.nan_to_num(0.0)
            x = torch.where(missing, fill[:, None, None, None], x)
        else:
            missing = None
        pad_h, pad_w = -height % self.align, -width % self.align
        if pad_h or pad_w:  # as the network would pad the whole frame
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        out = self._network_output(x)[:count, 0, :height, :width]
        out = out.mul(norm.high_hi - norm.high_lo).add_(norm.high_lo)
        if missing is not None:  # no value in, none out
            out = out.masked_fill(missing[:count, self.model.context], torch.nan)
        # .cpu() waits for the device, so the staging buffer is free again when this returns
        return list(out.cpu().numpy())

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        """C x Y x X raw low-exposure frames (centre frame plus context) -> Y x X in high-exposure units."""
        if self.fits_one_tile(*stack.shape[-2:]):
            return self._restore_whole([stack])[0]
        normalised = self.model.normalization.low(np.asarray(stack, np.float32))
        missing = ~np.isfinite(normalised)
        if not missing.any():
            return self.model.normalization.high_inverse(self.restore_normalised(normalised))
        finite = normalised[~missing]  # as on the device: filled with the median, no value where none came in
        normalised = np.where(missing, np.median(finite) if finite.size else 0.0, normalised).astype(np.float32)
        out = self.model.normalization.high_inverse(self.restore_normalised(normalised))
        return np.where(missing[self.model.context], np.float32(np.nan), out)


def iter_restore(model: ModelFile, frames, indices=None, tile: int | None = None, overlap: int | None = None,
                 batch: int = 4, device: str = "auto",
                 progress: Callable[[int, int], None] | None = None) -> Iterator[np.ndarray]:
    """Restore frames[indices] one at a time (T x Y x X input read lazily). With temporal context, the
    neighbours of a frame are its neighbours within `indices` (e.g. the low frames of an alternating movie),
    reflected at the ends."""
    restorer = Restorer(model, tile, overlap, batch, device)
    indices = np.arange(frames.shape[0]) if indices is None else np.asarray(indices)
    recent = RecentFrames.of(frames, 2 * model.context + 1 if model.context else 0)
    with reusing_freed_memory(restorer.device.type == "cpu"):  # no page faults on every forward pass
        for position in range(len(indices)):
            neighbours = indices[context_indices(position, len(indices), model.context)]
            yield restorer(np.stack([recent[i] for i in neighbours]))
            if progress is not None:
                progress(position + 1, len(indices))


def restore(model: ModelFile, frames, tile: int | None = None, overlap: int | None = None, batch: int = 4,
            device: str = "auto", indices=None) -> np.ndarray:
    """Restore a Y x X frame or a T x Y x X movie; float32 in the high exposure's intensity units."""
    frames = np.asarray(frames) if not hasattr(frames, "shape") else frames
    single = frames.ndim == 2
    stack = frames[None] if single else frames
    expected = 1 + 2 * model.context
    if single and expected > 1:
        raise ValueError(f"this model uses {model.context} neighbouring frames on each side; give a movie")
    out = np.stack(list(iter_restore(model, stack, indices, tile, overlap, batch, device)))
    return out[0] if single else out


class RestoredFrames:
    """Array-like view whose frames are restored when indexed, so write_movie streams them to disk."""

    def __init__(self, restorer: Restorer, frames, indices: np.ndarray,
                 progress: Callable[[int, int], None] | None = None, keep: int = 0):
        self.restorer, self.frames, self.indices, self.progress = restorer, frames, np.asarray(indices), progress
        self.shape = (len(self.indices), *frames.shape[1:])
        self.ndim, self.size, self.dtype = 3, int(np.prod(self.shape)), np.dtype(np.float32)
        context = restorer.model.context
        self._inputs = RecentFrames.of(frames, 2 * context + 1 if context else 0)
        self._outputs, self._lock = RecentFrames(self._restored, keep), threading.Lock()

    def frame(self, position: int) -> np.ndarray:
        """Restore one frame (its neighbours taken from `indices` when the model uses context); the last
        `keep` frames restored are kept, so what napari shows is not restored again for a click that reads
        it (snapping a label) or for its contrast."""
        if not -len(self.indices) <= position < len(self.indices):
            raise IndexError(f"frame {position} is outside the {len(self.indices)} restored frames")
        position %= len(self.indices)
        with self._lock:  # (dask, which reads it under a lock too, and a snapping click: one at a time)
            out = self._outputs[position]
        return out.copy() if self._outputs.keep else out  # (what is kept is not handed out to be changed)

    def _restored(self, position: int) -> np.ndarray:
        context = self.restorer.model.context
        neighbours = self.indices[context_indices(int(position), len(self.indices), context)]
        # the frame's tiles reuse one another's memory; it is handed back after the frame (a lazy layer
        # may sit in napari for hours between frames)
        inputs = np.stack([self._inputs[i] for i in neighbours])
        with reusing_freed_memory(self.restorer.device.type == "cpu"):
            out = self.restorer(inputs)
        if self.progress is not None:
            self.progress(int(position) + 1, len(self.indices))
        return out

    def __getitem__(self, key) -> np.ndarray:
        """`frames[t]`, or numpy-style (time, rows, cols) slicing as dask asks for chunks."""
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self.frame(int(first))[rest] if rest else self.frame(int(first))
        positions = range(len(self.indices))[first]
        stack = np.stack([self.frame(p) for p in positions]) if len(positions) else np.empty((0, *self.shape[1:]),
                                                                                              np.float32)
        return stack[(slice(None), *rest)]


def restore_lazily(restorer: Restorer, frames, indices=None) -> "da.Array":
    """A dask array of restored frames, each computed only when it is looked at (napari, dask, numpy)."""
    import dask.array as da

    indices = np.arange(frames.shape[0]) if indices is None else np.asarray(indices)
    lazy = RestoredFrames(restorer, frames, indices, keep=4)
    name = f"restored-{uuid.uuid4().hex[:12]}"
    register_derived(name, lazy)  # so the movie it reads is never written over (napari's Save as)
    return da.from_array(lazy, chunks=(1, *lazy.shape[1:]), asarray=True, lock=True,
                         meta=np.empty((0, 0, 0), np.float32), name=name)


INTENSITY_FACTOR = 5.0  # a frame's grey-level spread beyond 5x (or under 1/5) of the training frames' is warned of


def warn_of_foreign_intensities(normalization, frame, name: str, which: str = "its first frame restored",
                                hint: str = "restore movies taken as the training ones were") -> str | None:
    """Warn (and return the warning) when a frame's grey levels lie far from the low-exposure frames the model
    was trained on: its normalisation is fixed in camera units (not each image's own, as CSBDeep's), so a
    converted copy (a float 0-3 copy of a 92-260 grey-level movie gave -146 to -112), another gain, offset or
    exposure gives wrong values with no other sign."""
    values = as_array(frame[::2, ::2], np.float64) if np.ndim(frame) == 2 else as_array(frame, np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    lo, hi = np.percentile(values, normalization.percentiles)
    trained_lo, trained_span = normalization.low_lo, normalization.low_hi - normalization.low_lo
    scale, shift = (hi - lo) / trained_span, abs(lo - trained_lo)
    # a narrow spread at the training's background is a crop of background or a sparse field, not foreign
    narrow = scale < 1 / INTENSITY_FACTOR and shift > 0.25 * trained_span
    if shift <= trained_span and scale <= INTENSITY_FACTOR and not narrow:
        return None
    low, high = normalization.percentiles
    message = (f"{name}: its grey levels ({lo:.4g} to {hi:.4g}, the {low:g}-{high:g} percentiles of {which}) "
               f"are far from those of the low-exposure frames the model was trained on "
               f"({trained_lo:.4g} to {normalization.low_hi:.4g}): another camera setting, exposure or offset, or a "
               f"converted copy? The restored values will be wrong; {hint}")
    warnings.warn(message, UserWarning, stacklevel=3)
    return message


def check_context_on_all_frames(model, movie, name: str, means: np.ndarray | None = None) -> None:
    """A model with temporal context takes the neighbouring low frames: every frame of an alternating movie
    would give it high frames for neighbours. (Reads every frame's mean when the model has context, unless
    `means` gives them.)"""
    if model.context and _alternates(movie, means):
        raise ValueError(f"{name} alternates low and high exposures, but this model takes {model.context} "
                         "neighbouring low frames on each side: restore its low frames (frames='low', --frames low)")


def _alternates(movie, means: np.ndarray | None = None) -> bool:
    from .pairs import pairs_from_means, split_alternating

    try:
        split_alternating(movie) if means is None else pairs_from_means(movie, means)
    except ValueError:  # (not alternating, or frames it cannot judge: NaN frames of an unfinished restoration)
        return False
    return True


def _size(path) -> int | None:
    """Bytes of a movie file (None for a folder store or none): with its name, it recognises a movie moved."""
    return path.stat().st_size if path is not None and path.is_file() else None


def _mtime_ns(path) -> int | None:
    """When the file was last written: a movie rewritten at the same path, even of the same size, differs."""
    return path.stat().st_mtime_ns if path is not None and path.is_file() else None


def _frames_digest(frames) -> str:
    """A short hash of the first, middle and last frame: with the size, it tells a copy of the movie (whose
    mtime changed) from another acquisition saved under the same name, which microscope software does."""
    digest = hashlib.sha256()
    for index in sorted({0, frames.shape[0] // 2, frames.shape[0] - 1}):
        digest.update(np.ascontiguousarray(as_array(frames[index])).tobytes())
    return digest.hexdigest()[:16]


def _digest(indices: np.ndarray) -> str:
    """A short hash of which frames are restored (another phase of an alternating movie takes others)."""
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()[:16]


def restore_to_file(restorer: Restorer, movie: Movie, output, frames: str = "all", low_first: bool | None = None,
                    overwrite: bool = False, protected=(), progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, resume: bool = False, rank: int = 0,
                    world: int = 1, barrier: Callable[[], None] = lambda: None) -> int:
    """Restore every frame ('all') or the low-exposure frames ('low') of a movie, streamed to a TIFF or (names
    ending .zarr) an OME-Zarr store that `resume` can continue and torchrun ranks can share; keeps the pixel
    size and never writes over the movie itself. Returns the number of frames this process wrote."""
    from .modelfile import FORMAT_VERSION
    from .pairs import frame_runs, split_alternating
    from .streaming import FileFrames, restore_to_zarr, stream_to_tiff
    from .zarr_movie import is_zarr_path

    if frames not in ("all", "low"):
        raise ValueError(f"frames must be 'all' or 'low', got {frames!r}")
    if frames == "all":
        check_context_on_all_frames(restorer.model, movie, movie.path.name if movie.path else "the movie")
    indices = (split_alternating(movie, low_first=low_first).low_index if frames == "low"
               else np.arange(movie.shape[0]))
    for position, index in enumerate(indices[:2]):  # (two: an alternating movie restored with frames 'all')
        alternating = frames == "all" and position == 1
        hint = ("an alternating movie? Restore its low frames (--frames low)" if alternating
                else "restore movies taken as the training ones were")
        if warn_of_foreign_intensities(restorer.model.normalization, movie.frames[int(index)],
                                       movie.path.name if movie.path else "the movie", f"frame {index}", hint):
            break
    sources = tuple(p for p in (movie.path, *protected) if p is not None)
    model_path = restorer.model.path
    attributes = {"model": model_path.name if model_path else None, "model_format_version": FORMAT_VERSION,
                  "model_description": restorer.model.describe(), "model_fingerprint": restorer.model.fingerprint(),
                  "frames": frames, "frame_indices": _digest(indices),
                  # which movie frame each restored frame is (after a left-out frame, frame i is not 2i)
                  "movie_frames": frame_runs(indices),
                  "source": str(movie.path.resolve()) if movie.path else None,
                  "source_bytes": _size(movie.path), "source_mtime_ns": _mtime_ns(movie.path),
                  "arithmetic": restorer.arithmetic}
    source = frames_named_on_error(movie.frames, movie.path)  # a damaged frame: named, not a codec traceback
    reader = FileFrames.wrap(source)  # (file reads: a movie cut short under a memory map killed the process)
    try:
        attributes["source_frames"] = _frames_digest(reader)
    finally:
        if reader is not source:
            reader.close()
    if is_zarr_path(output):
        written, _ = restore_to_zarr(restorer, source, indices, output, movie.pixel_size_um, attributes,
                                     overwrite, resume, sources, progress, should_stop, rank, world, barrier)
        return written
    if world > 1:
        raise ValueError("several processes can only share an OME-Zarr output (a name ending .zarr)")
    return stream_to_tiff(restorer, source, indices, output, movie.pixel_size_um, overwrite, sources,
                          progress, should_stop, description=json.dumps({"napari_pgsr": attributes}))
