"""Restore movies of any length with bounded memory: input frames are read ahead in a background thread,
batched through the model and written as they finish, to an OME-Zarr store (one chunk per frame: resumable,
and several torchrun ranks can write disjoint frames at once) or to a TIFF."""

from __future__ import annotations

import mmap
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .data import context_indices
from .heap import reusing_freed_memory, share_one_arena
from .io import RecentFrames

DONE_FOLDER = ".napari_pgsr_done"  # per-rank lists of frames written, so a resumed run redoes no frame


def _check_begun_here(path: Path) -> None:
    """A store to continue must be one that napari-pgsr-predict began; zarr's own errors ("No group found in
    store", "Not a directory") do not say that the folder is empty or a file."""
    import zarr

    what = "a file" if path.is_file() else "an empty folder" if path.is_dir() and not any(path.iterdir()) else None
    if what is None:
        try:
            group = zarr.open_group(str(path), mode="r")
            what = None if "napari_pgsr" in group.attrs and "0" in group else "a store that napari-pgsr did not write"
        except Exception:  # noqa: BLE001 - zarr raises several kinds for a folder that is not a store
            what = "a folder that is not a Zarr store"
    if what:
        raise ValueError(f"{path} is {what}, not a restoration begun by napari-pgsr-predict: nothing to resume; "
                         "leave out --resume, and pass --overwrite to replace it")


class ZarrMovieWriter:
    """A T x Y x X float32 OME-Zarr (NGFF 0.4) image, one chunk per frame; unwritten frames read as NaN."""

    def __init__(self, path, shape: tuple[int, int, int], pixel_size_um: float | None = None,
                 attributes: dict | None = None, create: bool = True, rank: int = 0):
        import zarr

        self.path, self.rank = Path(path), rank
        if create:
            group = zarr.open_group(str(self.path), mode="w-", zarr_format=2)
            # chunks in nested folders: NGFF requires '/' (readers that assume it read '.'-keyed chunks as empty)
            group.create_array("0", shape=shape, chunks=(1, *shape[1:]), dtype="f4", fill_value=np.nan,
                               chunk_key_encoding={"name": "v2", "separator": "/"})
            scale = pixel_size_um or 1.0
            unit = {"unit": "micrometer"} if pixel_size_um else {}  # none known: no claim of 1 um pixels
            group.attrs.update({"multiscales": [{
                "version": "0.4", "name": self.path.stem,
                "axes": [{"name": "t", "type": "time"}, {"name": "y", "type": "space", **unit},
                         {"name": "x", "type": "space", **unit}],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                          "scale": [1.0, scale, scale]}]}]}],
                "napari_pgsr": {**(attributes or {}), "complete": False, "pixel_size_um": pixel_size_um}})
        else:
            _check_begun_here(self.path)
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=2)
        self.array = self.group["0"]
        if tuple(self.array.shape) != tuple(shape):
            frames = self.attributes.get("frames")  # (resumed with another --frames, it blamed the movie or model)
            asked = (attributes or {}).get("frames")
            which = f" (its frames: {frames!r}; give the same --frames)" if frames and asked and frames != asked else ""
            raise ValueError(f"{self.path} holds a movie of shape {tuple(self.array.shape)}, not {tuple(shape)}: "
                             f"it is the output of another movie, model or frame selection{which}")
        (self.path / DONE_FOLDER).mkdir(exist_ok=True)
        self._log = open(self.path / DONE_FOLDER / f"rank{rank}.txt", "a")  # noqa: SIM115 - closed in close()

    @property
    def attributes(self) -> dict:
        """The napari_pgsr attributes (model, source, completeness)."""
        return dict(self.group.attrs.get("napari_pgsr", {}))

    def done(self) -> set[int]:
        """Frames written by any rank of any earlier run."""
        frames: set[int] = set()
        for log in (self.path / DONE_FOLDER).glob("rank*.txt"):
            frames.update(int(line) for line in log.read_text().split() if line.strip())
        return frames

    def write(self, position: int, frame: np.ndarray) -> None:
        """Store one frame, then record it as done (a crash in between only means redoing it)."""
        self.array[position] = np.asarray(frame, np.float32)
        self._log.write(f"{position}\n")
        self._log.flush()

    def finish(self) -> bool:
        """Mark the store complete when every frame is written; returns whether it is."""
        complete = len(self.done()) == self.array.shape[0]
        self.group.attrs["napari_pgsr"] = {**self.attributes, "complete": complete}
        return complete

    def close(self) -> None:
        self._log.close()


class MovieReadError(OSError):
    """Reading the input movie failed (a truncated file, a lost network share): not the output's fault."""


class FileFrames:
    """The frames of a memory-mapped movie, read with plain file reads. Every page of a memory map
    that is touched stays in the process's resident memory, so streaming a 5,000-frame 1200² movie through
    one would count 14 GB; file reads go through the page cache, which the kernel frees as it needs."""

    def __init__(self, frames: np.memmap):
        mapped = np.frombuffer(frames._mmap, np.uint8)  # the mapping starts at the offset rounded down
        start = frames.offset - frames.offset % mmap.ALLOCATIONGRANULARITY
        self.offset = start + (frames.ctypes.data - mapped.ctypes.data)
        self.shape, self.dtype, self.ndim = tuple(frames.shape), frames.dtype, frames.ndim
        self.frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._file = open(frames.filename, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    @classmethod
    def wrap(cls, frames):
        """FileFrames for a C-contiguous memory map; any other array as it is."""
        if isinstance(frames, np.memmap) and getattr(frames, "_mmap", None) is not None \
                and frames.filename and frames.flags.c_contiguous:
            return cls(frames)
        return frames

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index) + (self.shape[0] if int(index) < 0 else 0)
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"frame {index} of {self.shape[0]}")
        out = np.empty(self.shape[1:], self.dtype)
        view, done = memoryview(out).cast("B"), 0
        with self._lock:  # seek + read: portable (os.pread is not on Windows)
            try:
                self._file.seek(self.offset + index * self.frame_bytes)
                while done < self.frame_bytes:
                    read = self._file.readinto(view[done:])
                    if not read:
                        raise MovieReadError(f"{self._file.name} ends inside frame {index}: the file was truncated")
                    done += read
            except MovieReadError:
                raise
            except OSError as err:  # (a plain OSError here read as a failure to write the output)
                raise MovieReadError(f"could not read frame {index} of {self._file.name}: "
                                     f"{err.strerror or err}") from err
        return out

    def close(self) -> None:
        self._file.close()


def _put(out: queue.Queue, item, stop: threading.Event) -> None:
    """Hand `item` to the consumer, giving up once it has stopped (it no longer empties the queue)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _reader(frames, indices: np.ndarray, positions: Sequence[int], context: int, out: queue.Queue,
            stop: threading.Event) -> None:
    """Background thread: put (position, C x Y x X input stack) for each position, then None."""
    try:
        recent = RecentFrames.of(frames, 2 * context + 1 if context else 0, np.float32)
        for position in positions:
            if stop.is_set():
                return
            neighbours = indices[context_indices(int(position), len(indices), context)]
            _put(out, (int(position), np.stack([recent[i] for i in neighbours])), stop)
    except BaseException as err:  # handed to the consumer, which raises it
        _put(out, err, stop)
        return
    _put(out, None, stop)


def _on_cpu(restorer) -> bool:
    device = getattr(restorer, "device", None)
    return device is not None and device.type == "cpu"


def stream_restore(restorer, frames, write: Callable[[int, np.ndarray], None], indices=None,
                   positions: Sequence[int] | None = None, prefetch: int = 4, frames_per_batch: int | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> int:
    """Restore frames[indices[p]] for every p in `positions` (default: all) and hand each result to
    `write(p, frame)` as soon as it is ready. Reading runs `prefetch` frames ahead in a thread; frames that
    fit in one tile go through the network `frames_per_batch` at a time. Memory stays that of a few frames,
    whatever the movie's length. Stops after the current batch when `should_stop()`; returns frames written.
    `frames_per_batch` defaults to the restorer's choice for its device."""
    frames_per_batch = frames_per_batch or restorer.frames_per_batch
    indices = np.arange(frames.shape[0]) if indices is None else np.asarray(indices)
    positions = list(range(len(indices)) if positions is None else positions)
    loaded: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    frames = FileFrames.wrap(frames)
    cpu = _on_cpu(restorer)
    if cpu:
        share_one_arena()  # for the prefetch thread's frames (heap.py)
    thread = threading.Thread(target=_reader, args=(frames, indices, positions, restorer.model.context, loaded, stop),
                              daemon=True, name="napari-pgsr-prefetch")
    thread.start()
    written, finished = 0, False
    try:
        # kept allocations: no page faults for every forward pass on a CPU (see heap.py)
        with reusing_freed_memory(cpu):
            while not finished:
                batch: list[tuple[int, np.ndarray]] = []
                while len(batch) < max(1, frames_per_batch):
                    item = loaded.get()
                    if isinstance(item, BaseException):
                        raise item
                    if item is None:
                        finished = True
                        break
                    batch.append(item)
                if not batch:
                    break
                for (position, _), out in zip(batch, restorer.restore_many([stack for _, stack in batch])):
                    write(position, out)
                    written += 1
                    if progress is not None:
                        progress(written, len(positions))
                if should_stop is not None and should_stop():
                    break
    finally:
        stop.set()
        thread.join(timeout=10)
        if isinstance(frames, FileFrames) and not thread.is_alive():
            frames.close()
    return written


class _InOrder:
    """What write_movie reads frame by frame: frames a producer thread restores, taken in order, so a TIFF
    is streamed to disk while restoration runs ahead."""

    def __init__(self, shape: tuple[int, ...], produced: queue.Queue):
        self.shape, self.ndim, self.dtype = shape, 3, np.dtype(np.float32)
        self.size = int(np.prod(shape))
        self._produced = produced

    def __getitem__(self, index: int) -> np.ndarray:
        item = self._produced.get()
        if isinstance(item, BaseException):
            raise item
        position, frame = item
        if position != index:
            raise RuntimeError(f"frame {position} arrived where frame {index} was expected")
        return frame


def stream_to_tiff(restorer, frames, indices: np.ndarray, output, pixel_size_um: float | None, overwrite: bool,
                   protected: Sequence, progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, prefetch: int = 4,
                   frames_per_batch: int | None = None, description: str | None = None) -> int:
    """Restore frames[indices] into a TIFF written frame by frame (atomically: a stopped or failed run leaves
    no file; OME-Zarr outputs keep partial results); `description` is stored in its metadata."""
    from .io import write_movie

    produced: queue.Queue = queue.Queue(maxsize=max(2, prefetch))
    stopped = threading.Event()

    class Stopped(Exception):
        pass

    def produce() -> None:
        try:
            def stop_requested() -> bool:
                if should_stop is not None and should_stop():
                    stopped.set()
                return stopped.is_set()

            stream_restore(restorer, frames, lambda p, f: produced.put((p, f)), indices, prefetch=prefetch,
                           frames_per_batch=frames_per_batch, progress=progress, should_stop=stop_requested)
            if stopped.is_set():
                produced.put(Stopped(f"stopped; {output} was not written (TIFFs are written whole: restore to "
                                     "a .zarr output to keep partial results and resume)"))
        except BaseException as err:
            produced.put(err)

    shape = (len(indices), *frames.shape[1:])
    if _on_cpu(restorer):
        share_one_arena()  # the restoring thread can then keep freed memory (heap.py)
    thread = threading.Thread(target=produce, daemon=True, name="napari-pgsr-restore")
    thread.start()
    try:
        write_movie(output, _InOrder(shape, produced), pixel_size_um=pixel_size_um, overwrite=overwrite,
                    protected=tuple(protected), description=description)
    except Stopped as err:
        raise InterruptedError(str(err)) from None
    finally:
        stopped.set()
        while thread.is_alive():  # let a producer blocked on a full queue finish
            try:
                produced.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
    return len(indices)


RESUME_KEYS = {"model": "model file", "model_fingerprint": "model weights (trained further since?)",
               "source": "movie", "frames": "frames", "frame_indices": "frame selection (another exposure phase?)"}


def _check_same_run(output, stored: dict, attributes: dict) -> None:
    """Refuse to continue a store begun with another model, movie or frame selection: it would mix them.
    (Keys that a store of an older version lacks are not compared.)"""
    def same(key):
        if key not in stored:
            return True
        if key == "source" and not (stored[key] and attributes.get(key)):  # a layer with no file behind it:
            return stored.get("source_frames") in (None, attributes.get("source_frames"))  # its frames tell
        if key == "source" and stored[key] and attributes.get(key):
            before, now = Path(stored[key]), Path(attributes[key])
            if stored.get("source_frames") not in (None, attributes.get("source_frames")):
                return False
            same_size = stored.get("source_bytes") in (None, attributes.get("source_bytes"))
            if before.resolve() == now.resolve():  # another spelling of the same path, if the file is unchanged
                # a copy at the same path (its mtime changed) is the same movie if its frames are; stores
                # without that hash go by the mtime
                unchanged = ("source_frames" in stored or
                             stored.get("source_mtime_ns") in (None, attributes.get("source_mtime_ns")))
                return same_size and unchanged
            # moved together with its output (to a cluster, say): the same name and size
            size = attributes.get("source_bytes")
            return before.name == now.name and size is not None and stored.get("source_bytes") == size
        return stored[key] == attributes.get(key)

    def change(key) -> str:
        if key == "source" and stored[key] and attributes.get(key) and \
                Path(stored[key]).resolve() == Path(attributes[key]).resolve():
            return f"movie saved at the same path ({Path(stored[key]).name} has been written over since)"
        return f"{RESUME_KEYS[key]} ({stored.get(key)!r}, now {attributes.get(key)!r})"

    changed = [key for key in RESUME_KEYS if not same(key)]
    if changed:
        raise ValueError(f"{output} was begun with another " + ", ".join(change(key) for key in changed)
                         + "; resume with the same, or --overwrite to start again")


def _arithmetic_resumed(output, stored: dict, attributes: dict) -> str | None:
    """The store's record of what its frames were computed in once this run adds its own ('fp32, then bf16':
    a run begun on a GPU, resumed on a CPU), warning of a change; None when nothing changes."""
    before, now = stored.get("arithmetic"), attributes.get("arithmetic")
    if before is None or now is None or before.split(", then ")[-1] == now:
        return None
    warnings.warn(f"{output}: its frames so far were computed in {before}, these in {now}: they differ in the last "
                  "digits (bf16 keeps about three); --precision makes them alike", RuntimeWarning, stacklevel=4)
    return f"{before}, then {now}"


def restore_to_zarr(restorer, frames, indices: np.ndarray, output, pixel_size_um: float | None,
                    attributes: dict, overwrite: bool = False, resume: bool = False, protected: Sequence = (),
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, rank: int = 0, world: int = 1,
                    barrier: Callable[[], None] = lambda: None) -> tuple[int, bool | None]:
    """Restore frames[indices] into an OME-Zarr store, rank `rank` of `world` taking every world-th frame.
    `resume` continues a store where earlier runs stopped (same movie and model, checked). Returns frames
    written by this rank and, on rank 0, whether the store is complete."""
    import shutil

    output = Path(output)
    inputs = [Path(p).resolve() for p in protected]
    if output.resolve() in inputs:
        raise ValueError(f"refusing to write {output}: it is one of the inputs")
    inside = [str(p) for p in inputs if output.resolve() in p.parents]
    if inside and not resume:  # (--overwrite deletes the folder first: the inputs went with it)
        raise ValueError(f"refusing to write {output}: it holds an input ({inside[0]}); choose another output")
    shape = (len(indices), *frames.shape[1:])
    if rank == 0:
        if output.exists() and not resume:
            if not overwrite:
                raise FileExistsError(f"{output} exists; pass --resume to continue it or --overwrite to replace it")
            if output.is_dir() and not any((output / name).is_file() for name in (".zgroup", ".zattrs",
                                                                                  "zarr.json")):
                raise ValueError(f"{output} is a folder but no Zarr store; --overwrite replaces a store only, so "
                                 "it was left as it is: choose another output, or remove the folder yourself")
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        if resume and not output.exists():
            raise FileNotFoundError(f"nothing to resume: {output} does not exist")
        writer = ZarrMovieWriter(output, shape, pixel_size_um, attributes, create=not resume, rank=0)
    barrier()
    if rank != 0:
        writer = ZarrMovieWriter(output, shape, rank=rank, create=False)
    try:
        if resume:
            _check_same_run(output, writer.attributes, attributes)
            mixed = _arithmetic_resumed(output, writer.attributes, attributes)
            if mixed and rank == 0:
                writer.group.attrs["napari_pgsr"] = {**writer.attributes, "arithmetic": mixed}
        done = writer.done()
        positions = [p for p in range(shape[0]) if p % world == rank and p not in done]
        written = stream_restore(restorer, frames, writer.write, indices, positions, progress=progress,
                                 should_stop=should_stop)
    finally:
        writer.close()
    barrier()
    return written, writer.finish() if rank == 0 else None
