"""Read alternating-exposure movies lazily from TIFF / OME-TIFF / ImageJ files and write them atomically."""

from __future__ import annotations

import mmap
import os
import uuid
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from . import tiff_structure
from .atomic import atomic_path

TIFF_SUFFIXES = (".tif", ".tiff")
TIME_AXES = "TIQ"  # T: time; I and Q: an unlabelled image sequence, which for a movie is time
AXIS_NAMES = {"T": "time", "Z": "depth (Z)", "C": "channel", "S": "colour sample (RGB)", "Y": "height",
              "X": "width", "I": "image sequence", "Q": "unlabelled"}



@dataclass
class Movie:
    """A lazily read movie: `data` is a dask array T x Y x X; `frames` reads frames straight from the file."""

    data: da.Array
    frames: Any  # numpy.memmap or zarr array: fast random access for patch sampling
    path: Path | None
    pixel_size_um: float | None
    axes: str = "TYX"
    metadata: dict = field(default_factory=dict)
    handle: Any = field(default=None, repr=False)  # open TiffFile behind `frames` when not memory-mapped

    @property
    def shape(self) -> tuple[int, ...]:
        """T, Y, X."""
        return tuple(self.data.shape)


class _FrameReader:
    """Array-like view of a memmap/zarr array. dask slices real numpy arrays (memmaps too) into chunks
    when the graph is built, which would read the whole movie; through this wrapper it reads on demand."""

    def __init__(self, frames, path: Path | None = None, other_files: frozenset[Path] = frozenset()):
        self.frames, self.shape, self.dtype, self.ndim = frames, tuple(frames.shape), frames.dtype, frames.ndim
        self.path = path  # the file read from, which writers must not replace
        self.other_files = other_files  # nor the other files of a multi-file dataset

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        try:
            return np.array(self.frames[index])
        except (IndexError, TypeError, MemoryError, OSError):  # asked wrongly, out of memory, the disk gone
            raise
        except Exception as err:  # a compressed frame that does not decode (imagecodecs' errors are RuntimeErrors)
            where = self.path.name if self.path is not None else "the movie"
            raise ValueError(f"{where}: {_describe_index(index)} cannot be read ({type(err).__name__}: "
                             f"{err}); the file is damaged there") from err


def frames_named_on_error(frames, path: Path | None):
    """`frames` (a memmap, zarr array...) read so that a frame that does not decode raises a ValueError
    naming the file and frame; memory maps as they are (nothing to decode, and streaming reads them fast)."""
    return frames if isinstance(frames, (np.memmap, _FrameReader)) else _FrameReader(frames, path)


def _describe_index(index) -> str:
    """The frames an index of a T x Y x X array asks for, in words ('frame 9', 'frames 8 to 15')."""
    first = index[0] if isinstance(index, tuple) else index
    if isinstance(first, slice):
        start = first.start or 0
        if first.stop is not None and first.stop - start == 1:
            return f"frame {start}"
        return f"frames {start} to {'the end' if first.stop is None else first.stop - 1}"
    return f"frame {first}"


_SOURCES: weakref.WeakValueDictionary[str, _FrameReader] = weakref.WeakValueDictionary()


_OPEN_TIFFS: weakref.WeakSet[tifffile.TiffFile] = weakref.WeakSet()  # compressed movies read through them


def _reopen_tiffs_in_child() -> None:
    """A forked process (a DataLoader worker) shares the parent's file offsets: reads of compressed frames
    through the shared handle would interleave and garble; give the child handles of its own. A file no
    longer at its path (deleted, replaced) keeps the shared handle, as before."""
    for tif in list(_OPEN_TIFFS):
        handle = tif.filehandle
        try:
            if handle.closed or os.stat(handle.path).st_ino != os.fstat(handle.fileno()).st_ino:
                continue
            handle.close()
            handle.open()
        except (OSError, ValueError):
            continue


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_tiffs_in_child)


def lazy_frames(frames, name: str, path: str | os.PathLike | None = None, other_files=()) -> da.Array:
    """A dask array with one chunk per frame that reads from `frames` (of the file `path`, and `other_files` of
    its dataset) only when computed.

    `name` must change when the file changes (napari caches chunks by name); a random suffix keeps two
    arrays of the same name apart.
    """
    reader = _FrameReader(frames, None if path is None else Path(path).resolve(),
                          frozenset(Path(p).resolve() for p in other_files))
    name = f"{name}-{uuid.uuid4().hex[:12]}"
    _SOURCES[name] = reader
    return da.from_array(reader, chunks=(1, *frames.shape[1:]), asarray=True, lock=False, name=name,
                         meta=np.empty((0,) * frames.ndim, frames.dtype))


_DERIVED: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register_derived(name: str, computed) -> None:
    """Note that the dask layer `name` computes its frames from `computed.frames` (restored frames, say), so
    `source_files` finds the files behind those."""
    _DERIVED[name] = computed


def frame_source(data):
    """The memmap/zarr array behind a movie's dask array (fast crops), or `data` itself if unknown."""
    if isinstance(data, Movie):
        return data.frames
    reader = _SOURCES.get(getattr(data, "name", None) or "") if isinstance(data, da.Array) else None
    return reader.frames if reader is not None else data


def release_mapped_pages(source) -> None:
    """Let go of the pages of a memory-mapped movie this process has touched: each stays in its resident
    memory otherwise (reading every frame's mean of a 5,000-frame 1200² movie would count 14 GB). The
    kernel keeps them in its page cache; a read-only mapping loses nothing."""
    mapped = getattr(source, "_mmap", None) if isinstance(source, np.memmap) else None
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def source_files(array) -> set[Path]:
    """The files a lazily read array, or one computed from it, reads from (so none is written over)."""
    files = set()
    if getattr(array, "filename", None):  # a memmap
        files.add(Path(array.filename).resolve())
    if isinstance(array, da.Array):
        for layer in array.dask.layers:  # the lazy reads this array's graph starts from
            reader = _SOURCES.get(layer)
            if reader is not None and reader.path is not None:
                files.add(reader.path)
            if reader is not None:
                files |= reader.other_files
            computed = _DERIVED.get(layer)
            if computed is not None:
                files |= source_files(computed.frames)
    return files


def movie_stem(path: str | os.PathLike) -> str:
    """A movie's name without .tif/.tiff/.ome/.zarr, in any case: 'Cells.OME.TIF' -> 'Cells'."""
    stem = Path(path).name
    for suffix in (".tiff", ".tif", ".zarr", ".ome"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem


def is_tiff_path(path: str | os.PathLike) -> bool:
    """True for names ending in .tif / .tiff (including .ome.tif)."""
    return str(path).lower().endswith(TIFF_SUFFIXES)


class SingleFrameError(ValueError):
    """The file holds one Y x X frame where a movie was expected."""


def _describe_axes(axes: str, shape: tuple[int, ...]) -> str:
    return " x ".join(f"{a}={n} ({AXIS_NAMES.get(a, a)})" for a, n in zip(axes, shape))


def _movie_axes(path: Path, axes: str, shape: tuple[int, ...],
                z_is_time: bool = False) -> tuple[str, tuple[int, ...]]:
    """Drop singleton axes and check that what is left is time x Y x X, else explain what the file holds."""
    if z_is_time:
        axes = axes.replace("Z", "T")
    kept = [(a, n) for a, n in zip(axes, shape) if n > 1 or a in "YX"]
    names = "".join(a for a, _ in kept)
    sizes = tuple(n for _, n in kept)
    found = f"{path.name} has axes {axes} with shape {shape}: {_describe_axes(axes, shape)}"
    if len(names) == 2 and names == "YX":
        raise SingleFrameError(f"{found}. It is a single frame; a movie of alternating exposures needs at least "
                         "2 frames (expected T x Y x X).")
    if "S" in names:
        raise ValueError(f"{found}. It is an RGB/colour image; expected a grey-scale movie T x Y x X.")
    if len(names) != 3 or names[1:] != "YX" or names[0] not in TIME_AXES:
        hint = " (a Z-stack)" if "Z" in names else ""
        if len(names) == 3 and names[1:] == "YX":  # one axis of frames: say how to read it as time
            as_time = "".join("T" if a == names[0] and n > 1 else "Q" if a == "T" else a for a, n in zip(axes, shape))
            # (the command-line tools take no axes: say how to re-save it, too)
            advice = (f"if its first axis really is time, save it as a time series (Fiji: Image > Properties..., "
                      f"Channels = Slices = 1, Frames = {sizes[0]}; Python: tifffile.imwrite(path, frames, "
                      f"imagej=True, metadata={{'axes': 'TYX'}})), or read it with read_movie(path, axes='{as_time}')")
        else:  # channels and time (or z and time): one of them has to go first
            advice = ("save one channel or z-plane of it as a T x Y x X movie (Fiji: Image > Hyperstacks > "
                      "Reduce Dimensionality)")
            if names in ("TCYX", "CTYX") and dict(kept)["C"] == 2:  # (Micro-Manager: one channel per exposure)
                advice += ("; if its 2 channels are a low and a high exposure of the same field, save each as a "
                           "movie and train on them as stacks (napari-pgsr-train --low c0.tif --high c1.tif)")
        raise ValueError(f"{found}{hint}. Expected a movie T x Y x X (time, height, width); {advice}.")
    return "TYX", sizes


def read_movie(path: str | os.PathLike, axes: str | None = None) -> Movie:
    """Open a T x Y x X movie (TIFF, or an OME-Zarr store) lazily; only frames that are indexed are read."""
    from .zarr_movie import is_zarr_path, read_zarr_movie

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"movie file not found: {path}")
    if is_zarr_path(path):
        return read_zarr_movie(path)
    with tiff_structure.tifffile_log_unless_refused():
        return _read_tiff_movie(path, axes)


_RECOVER_HINT = "if it is a movie cut short, napari-pgsr-recover {name} -o recovered.tif copies its complete frames"


def _read_tiff_movie(path: Path, axes: str | None) -> Movie:
    tif = tiff_structure.open_tiff(path)
    try:
        if not tif.series or not tif.pages:
            raise ValueError(f"{path} is a damaged TIFF: it holds no image; expected a .tif/.ome.tif movie")
        series = tif.series[0]
        file_axes, shape = series.axes, tuple(series.shape)
        if axes is not None:
            if len(axes) != len(shape):
                raise ValueError(f"{path.name}: axes={axes!r} given but the file's image has {len(shape)} "
                                 f"dimensions {shape} (axes {file_axes})")
            file_axes = axes.upper()
        tiff_structure.check_not_truncated(tif, path, shape)
        tiff_structure.check_frames_present(tif, path)
        z_is_time = axes is None and tiff_structure.imagej_plain_stack(tif)
        movie_axes, movie_shape = _movie_axes(path, file_axes, shape, z_is_time)
        dtype = np.dtype(series.dtype)
        if dtype.kind not in "uif":
            raise ValueError(f"{path.name} holds {dtype} pixels; expected integer or floating point intensities")
        if series.dataoffset is not None:  # contiguous, uncompressed: memory-map
            frames = tifffile.memmap(path, series=0, mode="r").reshape(movie_shape)
        else:
            import zarr

            frames = zarr.open(series.aszarr(level=0), mode="r")  # (a pyramid: its full resolution)
            if tuple(frames.shape) != movie_shape:
                frames = da.from_zarr(frames).reshape(movie_shape)
        stat = path.stat()  # in the name, so a rewritten file is never shown from a stale cache
        # a multi-file OME or Micro-Manager dataset: its other files are read too, and never written over
        dataset = {page.parent.filehandle.path for page in series.pages if page is not None} if series.kind in (
            "ome", "mmstack") else set()
        data = frames if isinstance(frames, da.Array) else lazy_frames(
            frames, f"movie-{path.name}-{stat.st_mtime_ns}-{stat.st_size}", path, dataset)
        pixel_size = tiff_structure.pixel_size_um(tif)
        description = tiff_structure.description(tif)
    except tifffile.TiffFileError as err:  # (a ValueError, but one that does not name the file)
        tif.close()
        raise ValueError(f"{path} is a damaged TIFF ({err}); {_RECOVER_HINT.format(name=path.name)}") from err
    except ValueError:
        tif.close()
        raise
    except Exception as err:  # a structure tifffile could parse the header of, but not the rest
        tif.close()  # (a copy cut within an index entry: recover found all its frames whole)
        raise ValueError(f"{path} is a damaged TIFF ({type(err).__name__}: {err}); "
                         f"{_RECOVER_HINT.format(name=path.name)}") from err
    handle = None
    if isinstance(frames, np.memmap):
        tif.close()
    else:
        handle = tif  # the zarr store reads through this open file
        _OPEN_TIFFS.add(tif)
        if series.kind in ("ome", "mmstack"):  # a dataset of several files reads through each one's handle
            _OPEN_TIFFS.update(page.parent for page in series.pages if page is not None)
    metadata = {"source_path": str(path.resolve()), "file_axes": series.axes, "pixel_size_um": pixel_size}
    if description:
        metadata["description"] = description
    if z_is_time:
        metadata["axes_note"] = "ImageJ stack of slices without frames or z-spacing: slices read as time points"
    if pixel_size is None:
        metadata["note"] = "pixel size not recorded in the file; scale left at 1 pixel"
    if getattr(tif, "appended_blocks", 0):
        metadata["series_note"] = (f"the file holds {tif.appended_blocks} blocks of frames of one size (appended by "
                                   "tifffile): read as one movie, in file order")
    others = [tuple(other.shape) for other in tif.series[1:] if tuple(other.shape[-2:]) == movie_shape[-2:]]
    if others:  # several positions (or acquisitions) in one file: only the first is read, which must be said
        metadata["series_note"] = (f"the file holds {1 + len(others)} image series of this frame size (positions?); "
                                   f"this is the first, {tuple(shape)}; the others {others} are not read")
        warnings.warn(f"{path.name}: {metadata['series_note']}", stacklevel=3)
    return Movie(data, frames, path, pixel_size, movie_axes, metadata, handle)


def tiff_layout_readable(path: str | os.PathLike) -> bool:
    """Whether the TIFF's first series is a movie (T x Y x X) or one frame, from its header alone: False for
    colour images, z-stacks and hyperstacks, which the reader would refuse. A damaged or unreadable file
    counts as readable, so the reader's error names what is wrong with it."""
    path = Path(path)
    try:
        with tiff_structure.tifffile_log_unless_refused(replay=False), tifffile.TiffFile(path) as tif:
            if not tif.series:
                return True
            series = tif.series[0]
            _movie_axes(path, series.axes, tuple(series.shape), tiff_structure.imagej_plain_stack(tif))
    except SingleFrameError:
        return True
    except ValueError as err:
        return isinstance(err, tifffile.TiffFileError)
    except Exception:  # noqa: BLE001 - left to the reader, which explains it
        return True
    return True


def read_movie_or_frame(path: str | os.PathLike) -> Movie:
    """`read_movie`, or a movie of its one frame for a file that holds a single frame (a snapshot)."""
    try:
        return read_movie(path)
    except SingleFrameError:
        frame, pixel_size = read_image(path)
        frames = np.asarray(frame)[None]
        path = Path(path)
        return Movie(lazy_frames(frames, f"frame-{path.name}", path), frames, path, pixel_size, "TYX",
                     {"source_path": str(path.resolve()), "pixel_size_um": pixel_size})


def read_image(path: str | os.PathLike) -> tuple[Any, float | None]:
    """A lazy T x Y x X movie or a single Y x X frame (read into memory), with the pixel size in µm."""
    try:
        movie = read_movie(path)
    except SingleFrameError:
        from .zarr_movie import is_zarr_path, read_zarr_movie

        if is_zarr_path(path):  # e.g. the low frame of one exposure pair, restored
            movie = read_zarr_movie(Path(path), single_frame=True)
            return movie.data[0], movie.pixel_size_um
        with tifffile.TiffFile(path) as tif:
            return np.squeeze(tif.asarray()), tiff_structure.pixel_size_um(tif)
    return movie.data, movie.pixel_size_um


def as_array(data, dtype=None) -> np.ndarray:
    """A numpy array from a numpy, memmap, zarr or dask slice (dask is computed)."""
    return np.asarray(data.compute() if hasattr(data, "compute") else data, dtype=dtype)


class RecentFrames:
    """`read(index)` for frame indices, the last `keep` results kept: consecutive frames restored by a model
    with temporal context share their neighbours, which were read (a compressed frame decoded) 2c+1 times;
    a lazily restored frame napari shows is read again by a click that snaps a label on it."""

    def __init__(self, read: Callable[[int], np.ndarray], keep: int):
        self.read, self.keep, self._kept = read, keep, OrderedDict()

    @classmethod
    def of(cls, frames, keep: int, dtype=None) -> "RecentFrames":
        """Frames of the array `frames`, as numpy arrays of `dtype`."""
        return cls(lambda index: as_array(frames[index], dtype), keep)

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if index in self._kept:
            self._kept.move_to_end(index)
            return self._kept[index]
        frame = self.read(index)
        if self.keep:
            self._kept[index] = frame
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)
        return frame


def display_range(data, n_frames: int = 2) -> tuple[float, float]:
    """Contrast limits from the first frames (one of each exposure), so a viewer never scans a lazy movie."""
    frames = data[:n_frames]
    frames = as_array(frames, np.float64)
    if not np.isfinite(frames).any():  # frames not yet restored (NaN in a partial OME-Zarr)
        return 0.0, 1.0
    low, high = np.nanpercentile(frames, (0.1, 99.9))
    return float(low), float(max(high, low + 1))


def clipping_level(dtype) -> float | None:
    """The grey level a camera's integer image clips at (65535 for 16 bits); None for floating point."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else None


def _mapped_sources(array) -> list[np.memmap]:
    """The memory-mapped movies `array` reads from: itself, or those behind a lazily read one."""
    if isinstance(array, np.memmap):
        return [array]
    if not isinstance(array, da.Array):
        return []
    readers = (_SOURCES.get(layer) for layer in array.dask.layers)
    # (a wrapper of a memory map, as recover's byte-order view, is one too: its pages stayed resident)
    sources = [getattr(reader.frames, "frames", reader.frames) for reader in readers if reader is not None]
    return [source for source in sources if isinstance(source, np.memmap)]


def _frames(array, progress: Callable[[int, int], None] | None = None) -> Any:
    """Iterate over frames without loading a lazy movie into memory; the pages of a memory-mapped source are
    let go of as it goes (writing a 412 MiB movie's low frames kept 265 MiB of it resident)."""
    mapped = _mapped_sources(array)
    for index in range(array.shape[0]):
        frame = array[index]
        yield as_array(frame)
        if mapped and index % 16 == 15:
            for source in mapped:
                release_mapped_pages(source)
        if progress is not None:
            progress(index + 1, array.shape[0])
    for source in mapped:
        release_mapped_pages(source)


def write_movie(
    path: str | os.PathLike,
    array,
    pixel_size_um: float | None = None,
    overwrite: bool = False,
    protected: tuple[str | os.PathLike, ...] = (),
    description: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a T x Y x X (or Y x X) array as ImageJ TIFF, or OME-TIFF for names ending .ome.tif, atomically.

    Frames are written one by one (lazy arrays are never loaded whole). Existing files are kept unless
    `overwrite`; files in `protected` (the movie being shown, say) and the memory-mapped source of `array`
    are never written to. `description` (how the data was made) goes to ImageJ's Info or OME's Description;
    `progress(done, total)` is called after each frame.
    """
    path = Path(path)
    if not is_tiff_path(path):
        raise ValueError(f"{path}: expected a file name ending in .tif, .tiff or .ome.tif")
    sources = {Path(p).resolve() for p in protected} | source_files(array)
    if path.resolve() in sources:
        raise ValueError(f"refusing to write {path}: it is the file the data was read from")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass overwrite=True")
    if array.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a T x Y x X movie or a Y x X frame, got shape {tuple(array.shape)}")
    # in this machine's byte order: a big-endian movie's >u2 pixels are uint16 all the same
    dtype = np.dtype(array.dtype).newbyteorder("=")
    ome = path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    if not ome and dtype not in (np.uint8, np.uint16, np.int16, np.float32):  # (Fiji reads int16 as calibrated)
        warnings.warn(f"{path}: ImageJ TIFF cannot hold {dtype} pixels; saving float32 (name the file "
                      f".ome.tif to keep {dtype})", stacklevel=2)
        dtype = np.dtype(np.float32)
    if not ome and array.shape[-1] == 1:  # tifffile writes them as one image of T x Y: the movie is lost
        raise ValueError(f"{path}: ImageJ TIFF cannot hold frames 1 pixel wide (shape {tuple(array.shape)}); "
                         f"name the file .ome.tif")
    stack = array if array.ndim == 3 else array[None]
    # minisblack: otherwise tifffile takes a last axis of 3 or 4 pixels for colour samples
    kwargs: dict[str, Any] = {"shape": tuple(stack.shape), "dtype": dtype, "photometric": "minisblack"}
    if ome:
        meta: dict[str, Any] = {"axes": "TYX"}
        if pixel_size_um:
            meta.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um,
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
        if description:
            meta["Description"] = description
        kwargs.update(ome=True, metadata=meta, bigtiff=stack.size * dtype.itemsize > 2**31)
    else:
        meta = {"axes": "TYX", "unit": "um"} if pixel_size_um else {"axes": "TYX"}
        if description:
            meta["Info"] = description  # shown by Fiji's Image > Show Info
        kwargs.update(imagej=True, metadata=meta)
        if pixel_size_um:
            kwargs["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
    with atomic_path(path) as tmp:
        frames = (f.astype(dtype, copy=False) for f in _frames(stack, progress))
        tifffile.imwrite(tmp, data=frames, **kwargs)
    return path
