"""Read alternating-exposure movies lazily from TIFF / OME-TIFF / ImageJ files and write them atomically."""

from __future__ import annotations

import os
import struct
import uuid
import warnings
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")
TIME_AXES = "TIQ"  # T: time; I and Q: an unlabelled image sequence, which for a movie is time
AXIS_NAMES = {"T": "time", "Z": "depth (Z)", "C": "channel", "S": "colour sample (RGB)", "Y": "height",
              "X": "width", "I": "image sequence", "Q": "unlabelled"}
_UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "micron": 1.0, "microns": 1.0,
               "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


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

    def __init__(self, frames, path: Path | None = None):
        self.frames, self.shape, self.dtype, self.ndim = frames, tuple(frames.shape), frames.dtype, frames.ndim
        self.path = path  # the file read from, which writers must not replace

    def __getitem__(self, index):
        return np.array(self.frames[index])


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


def lazy_frames(frames, name: str, path: str | os.PathLike | None = None) -> da.Array:
    """A dask array with one chunk per frame that reads from `frames` (of the file `path`) only when computed.

    `name` must change when the file changes (napari caches chunks by name); a random suffix keeps two
    arrays of the same name apart.
    """
    reader = _FrameReader(frames, None if path is None else Path(path).resolve())
    name = f"{name}-{uuid.uuid4().hex[:12]}"
    _SOURCES[name] = reader
    return da.from_array(reader, chunks=(1, *frames.shape[1:]), asarray=True, lock=False, name=name,
                         meta=np.empty((0,) * frames.ndim, frames.dtype))


def frame_source(data):
    """The memmap/zarr array behind a movie's dask array (fast crops), or `data` itself if unknown."""
    if isinstance(data, Movie):
        return data.frames
    reader = _SOURCES.get(getattr(data, "name", None) or "") if isinstance(data, da.Array) else None
    return reader.frames if reader is not None else data


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
    return files


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
        raise ValueError(f"{found}{hint}. Expected a movie T x Y x X (time, height, width); if the first "
                         "axis really is time, open it with read_movie(path, axes='TYX').")
    return "TYX", sizes


def _pixel_size_um(tif: tifffile.TiffFile) -> float | None:
    """Pixel size from OME (PhysicalSizeX) or ImageJ (XResolution + unit) metadata; None if not recorded."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = None if root is None else next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
        if pixels is not None and pixels.get("PhysicalSizeX"):
            scale = _UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
            return None if scale is None else float(pixels.get("PhysicalSizeX")) * scale
    page = tif.pages.first
    resolution = page.tags.get("XResolution")
    if resolution is None:
        return None
    numerator, denominator = resolution.value
    if not numerator or not denominator:
        return None
    per_unit = numerator / denominator
    if tif.is_imagej:
        scale = _UNIT_TO_UM.get((tif.imagej_metadata or {}).get("unit", ""))
    else:
        res_unit = page.tags.get("ResolutionUnit")
        scale = {3: 1e4}.get(int(res_unit.value) if res_unit else 2)  # only centimetres are physical here
    return None if scale is None else scale / per_unit


def _description(tif: tifffile.TiffFile) -> str | None:
    """What wrote the data, as write_movie records it: ImageJ's Info or the OME image's Description."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            return None
        image = next((e for e in root if e.tag.endswith("Image")), None)
        found = None if image is None else next((e for e in image if e.tag.endswith("Description")), None)
        return found.text if found is not None else None
    return (tif.imagej_metadata or {}).get("Info") if tif.is_imagej else None


def _open_tiff(path: Path) -> tifffile.TiffFile:
    """Open a TIFF; frames appended one by one (one 2-D series each) are opened as one image sequence."""
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series
        if len(series) > 1 and all(s.ndim == 2 and s.shape == series[0].shape and s.dtype == series[0].dtype
                                   for s in series):
            tif.close()
            tif = tifffile.TiffFile(path, is_shaped=False)
        return tif
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error... for broken files
        raise ValueError(f"{path} is not a readable TIFF file ({err}); expected a .tif/.ome.tif movie.") from err


def _imagej_plain_stack(tif: tifffile.TiffFile) -> bool:
    """Fiji saves a plain stack as 'slices': without frames or a z-spacing it is a sequence, not a Z-stack."""
    meta = tif.imagej_metadata or {}
    return bool(tif.is_imagej and meta.get("slices", 1) > 1 and meta.get("frames", 1) == 1
                and "spacing" not in meta and "channels" not in meta)


def _next_page_offset(tif: tifffile.TiffFile, page_offset: int) -> int:
    """Where the file says the page after the one at `page_offset` starts (0: it is the last)."""
    layout, handle = tif.tiff, tif.filehandle
    handle.seek(page_offset)
    (tags,) = struct.unpack(layout.tagnoformat, handle.read(layout.tagnosize))
    handle.seek(page_offset + layout.tagnosize + tags * layout.tagsize)
    (offset,) = struct.unpack(layout.offsetformat, handle.read(layout.offsetsize))
    return offset


def _check_not_truncated(tif: tifffile.TiffFile, path: Path, shape: tuple[int, ...]) -> None:
    """A copy cut short loses the frames past the cut and, as writers put it at the end, often the index of
    all but the first: refuse it by name rather than read it as fewer frames or a single one."""
    held = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    # (ImageJ's count is of the whole file; an OME or Micro-Manager series read instead may be one position)
    imagej_count = tif.is_imagej and tif.series[0].kind not in ("ome", "mmstack")
    announced = int((tif.imagej_metadata or {}).get("images", 0)) if imagej_count else 0
    last, size = tif.pages[len(tif.pages) - 1], tif.filehandle.size
    ends = [offset + count for offset, count in zip(last.dataoffsets, last.databytecounts) if count]
    past_end = _next_page_offset(tif, last.offset) >= size or (ends and max(ends) > size)
    recover = f"napari-pgsr-recover {path.name} -o recovered.tif copies the complete frames to a new movie"
    if announced > held or past_end:
        found = (f"its ImageJ header announces {announced} frames but the file indexes {held}"
                 if announced > held else "its last page (a frame, or the index of the frames) reaches past the end "
                 "of the file")
        raise ValueError(f"{path} is truncated or damaged: {found} (a copy or download cut short?); {recover}")
    frame_bytes = int(np.prod(shape[-2:])) * last.dtype.itemsize if last.dtype is not None else 0
    if held == 1 and len(tif.pages) == 1 and last.is_contiguous and last.compression == 1 and frame_bytes:
        following = (size - last.dataoffsets[0]) // frame_bytes - 1
        # (a writer storing metadata after the pixels, as Micro-Manager does, points a tag or header to it)
        metadata_after = tif.is_micromanager or any(
            tag.valueoffset > last.dataoffsets[0] for tag in last.tags.values())
        if following > 0 and not metadata_after:  # a writer storing the frame index only when it closes the file
            raise ValueError(f"{path} indexes one frame, but the pixel data of {following} more follow it: an "
                             f"acquisition that stopped before its file was closed?; {recover}")


def read_movie(path: str | os.PathLike, axes: str | None = None) -> Movie:
    """Open a T x Y x X movie (TIFF, or an OME-Zarr store) lazily; only frames that are indexed are read."""
    from .zarr_movie import is_zarr_path, read_zarr_movie

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"movie file not found: {path}")
    if is_zarr_path(path):
        return read_zarr_movie(path)
    tif = _open_tiff(path)
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
        _check_not_truncated(tif, path, shape)
        z_is_time = axes is None and _imagej_plain_stack(tif)
        movie_axes, movie_shape = _movie_axes(path, file_axes, shape, z_is_time)
        dtype = np.dtype(series.dtype)
        if dtype.kind not in "uif":
            raise ValueError(f"{path.name} holds {dtype} pixels; expected integer or floating point intensities")
        if series.dataoffset is not None:  # contiguous, uncompressed: memory-map
            frames = tifffile.memmap(path, series=0, mode="r").reshape(movie_shape)
        else:
            import zarr

            frames = zarr.open(series.aszarr(), mode="r")
            if tuple(frames.shape) != movie_shape:
                frames = da.from_zarr(frames).reshape(movie_shape)
        stat = path.stat()  # in the name, so a rewritten file is never shown from a stale cache
        data = frames if isinstance(frames, da.Array) else lazy_frames(
            frames, f"movie-{path.name}-{stat.st_mtime_ns}-{stat.st_size}", path)
        pixel_size = _pixel_size_um(tif)
        description = _description(tif)
    except tifffile.TiffFileError as err:  # (a ValueError, but one that does not name the file)
        tif.close()
        raise ValueError(f"{path} is a damaged TIFF ({err})") from err
    except ValueError:
        tif.close()
        raise
    except Exception as err:  # a structure tifffile could parse the header of, but not the rest
        tif.close()
        raise ValueError(f"{path} is a damaged TIFF ({type(err).__name__}: {err})") from err
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
    return Movie(data, frames, path, pixel_size, movie_axes, metadata, handle)


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
            return np.squeeze(tif.asarray()), _pixel_size_um(tif)
    return movie.data, movie.pixel_size_um


def as_array(data, dtype=None) -> np.ndarray:
    """A numpy array from a numpy, memmap, zarr or dask slice (dask is computed)."""
    return np.asarray(data.compute() if hasattr(data, "compute") else data, dtype=dtype)


def display_range(data, n_frames: int = 2) -> tuple[float, float]:
    """Contrast limits from the first frames (one of each exposure), so a viewer never scans a lazy movie."""
    frames = data[:n_frames]
    frames = as_array(frames, np.float64)
    if not np.isfinite(frames).any():  # frames not yet restored (NaN in a partial OME-Zarr)
        return 0.0, 1.0
    low, high = np.nanpercentile(frames, (0.1, 99.9))
    return float(low), float(max(high, low + 1))


def _frames(array, progress: Callable[[int, int], None] | None = None) -> Any:
    """Iterate over frames without loading a lazy movie into memory."""
    for index in range(array.shape[0]):
        frame = array[index]
        yield as_array(frame)
        if progress is not None:
            progress(index + 1, array.shape[0])


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
    dtype = np.dtype(array.dtype)
    ome = path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    if not ome and dtype not in (np.uint8, np.uint16, np.float32):
        warnings.warn(f"{path}: ImageJ TIFF cannot hold {dtype} pixels; saving float32 (name the file "
                      f".ome.tif to keep {dtype})", stacklevel=2)
        dtype = np.dtype(np.float32)
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


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block ends without error and
    is removed otherwise, so a crash or Ctrl-C never leaves a half-written file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a hidden name beside the target, created with the user's normal permissions (mkstemp would give 0600)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        _sync(tmp)  # on disk before it takes the name: a power cut then leaves the old file, not an empty one
        os.replace(tmp, path)
        _sync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk, where the system allows it."""
    if not path.exists() or (path.is_dir() and os.name == "nt"):
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(descriptor)
