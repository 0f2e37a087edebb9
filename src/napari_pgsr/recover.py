"""Recover the complete frames of a TIFF movie cut short: an acquisition that stopped before its file was
closed (the frame index is written last), or a copy or download that stopped part way."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from . import tiff_structure
from .io import lazy_frames, read_movie, write_movie


@dataclass
class Recovery:
    """The complete frames found in a damaged TIFF, and how they were found."""

    path: Path
    frames: Any  # T x Y x X array-like that reads frame by frame (from a memory map, or page by page)
    pixel_size_um: float | None
    description: str | None
    how: str  # e.g. "pixel data that follow the first page" or "pages whose data lie inside the file"

    @property
    def shape(self) -> tuple[int, ...]:
        """T, Y, X of what was recovered."""
        return tuple(self.frames.shape)


class _Pages:
    """T x Y x X reads of a list of same-shaped TIFF pages (each page one frame)."""

    def __init__(self, path: Path, offsets: list[int], shape: tuple[int, int], dtype: np.dtype):
        self.path, self.offsets = path, offsets
        self.shape, self.dtype, self.ndim = (len(offsets), *shape), dtype, 3

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        picked = np.arange(self.shape[0])[index[0]]
        # opened per read, so nothing stays open once the frames are copied
        with _quiet_tifffile(), tifffile.TiffFile(self.path) as tif:
            def read(offset: int) -> np.ndarray:
                tif.filehandle.seek(offset)
                return tifffile.TiffPage(tif, index=0).asarray()

            if np.ndim(picked) == 0:
                return read(self.offsets[int(picked)])[index[1:]]
            frames = np.stack([read(self.offsets[i]) for i in picked]) if len(picked) else np.empty(
                (0, *self.shape[1:]), self.dtype)
            return frames[(slice(None), *index[1:])]


class _Native:
    """Frames of a memory map read in this machine's byte order (a big-endian file's too)."""

    def __init__(self, frames: np.memmap):
        self.frames, self.shape, self.ndim = frames, frames.shape, frames.ndim
        self.dtype = frames.dtype.newbyteorder("=")

    def __getitem__(self, index):
        return np.asarray(self.frames[index]).astype(self.dtype)


@contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log about the broken index or tags of a damaged file: that it is damaged is known."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _readable_pages(tif: tifffile.TiffFile, size: int, shape: tuple[int, ...],
                    dtype: np.dtype) -> list[tuple[int, int]]:
    """(index entry, first pixel) offsets of the pages, in order, until the first one that is broken, of
    another kind or reaches past the end of the file."""
    pages = []
    for position in range(len(tif.pages)):
        try:
            page = tif.pages[position]
        except Exception:  # an index entry pointing past the end of the file
            break
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
        if (page.shape != shape or page.dtype != dtype or not ends or 0 in page.databytecounts
                or max(ends) > size):
            break
        pages.append((page.offset, page.dataoffsets[0]))
    return pages


def _stacked_frames(tif: tifffile.TiffFile, pages: list[tuple[int, int]], frame_bytes: int) -> int:
    """How many frames lie one after another from the first page's pixels: 0 unless those are uncompressed,
    in one piece, and every readable page's pixels follow the one before. They end at the end of the file,
    or where anything the first page points to (the next index entry, a tag's value) starts."""
    first, size = tif.pages.first, tif.filehandle.size
    start = first.dataoffsets[0]
    if not first.is_contiguous or first.compression != 1 or any(
            data != start + i * frame_bytes for i, (_, data) in enumerate(pages)):
        return 0  # compressed, or each frame stored with its own index entry: the pages tell
    pointed = [tiff_structure.next_page_offset(tif, first.offset)] + [tag.valueoffset for tag in first.tags.values()]
    end = min([size] + [offset for offset in pointed if offset > start])
    stacked = max(0, end - start) // frame_bytes
    announced = int((tif.imagej_metadata or {}).get("images", 0))
    return min(stacked, announced) if announced > 1 else stacked  # ImageJ counts the frames of the whole file


def find_complete_frames(path: str | os.PathLike) -> Recovery:
    """The frames of a damaged grey-scale TIFF movie that are wholly in the file: those of an uncompressed
    stack stored in one piece are found past its last indexed page (`_stacked_frames`); otherwise they are
    the pages that are whole. A file that reads as a movie is refused: nothing is lost."""
    path = Path(path)
    try:
        with _quiet_tifffile():
            movie = read_movie(path)
    except FileNotFoundError:
        raise
    except ValueError:  # damaged, or one frame: what follows decides
        pass
    else:
        raise ValueError(f"{path} is not damaged: it reads as a movie of {movie.shape[0]} frames of "
                         f"{movie.shape[1]} x {movie.shape[2]}; nothing to recover")
    try:
        with _quiet_tifffile():  # (its log of the broken parts: that the file is damaged is known)
            tif = tifffile.TiffFile(path)
    except Exception as err:
        raise ValueError(f"{path}: not even its first page can be read ({err}); nothing to recover") from err
    with tif, _quiet_tifffile():
        try:
            first, size = tif.pages.first, tif.filehandle.size
        except (IndexError, ValueError, struct.error) as err:  # a file holding its header alone
            raise ValueError(f"{path}: holds no readable frame (cut after {tif.filehandle.size} bytes); nothing "
                             "to recover") from err
        more = tiff_structure.axes_besides_time(tif)
        if not more and tiff_structure.tag_values_past_end(tif, first.offset):  # its OME-XML cut: what is left
            sizes = tiff_structure.cut_description_sizes(tif)
            more = next((f"{sizes[key]} {name}" for key, name in (("SizeC", "channels"), ("SizeZ", "z-slices"))
                         if sizes.get(key, 1) > 1), "")
        if more:  # its pages are not one frame each: copied in turn, channel 0 and 1 would pass for low and high
            raise ValueError(f"{path} holds {more} besides time; recover copies the frames of a single-channel "
                             "T x Y x X movie only")
        if first.ndim != 2:
            raise ValueError(f"{path}: its first page has shape {first.shape}; only grey-scale Y x X frames "
                             "are recovered")
        shape, dtype = tuple(first.shape), np.dtype(first.dtype)
        try:
            pages = _readable_pages(tif, size, shape, dtype)
            stacked = _stacked_frames(tif, pages, int(np.prod(shape)) * dtype.itemsize)
        except (IndexError, struct.error, ValueError, OSError) as err:  # cut within the first page's own index
            raise ValueError(f"{path}: cut within the index of its first frame ({type(err).__name__}: {err}); "
                             "no complete frame to recover") from err
        start = first.dataoffsets[0]
        pixel_size, description = tiff_structure.pixel_size_um(tif), tiff_structure.description(tif)
        byteorder = tif.byteorder
    if stacked > len(pages):
        frames = _Native(np.memmap(path, dtype=dtype.newbyteorder(byteorder), mode="r", offset=start,
                                   shape=(stacked, *shape)))
        how = "uncompressed frames stored one after another from the first page"
    else:
        frames = _Pages(path, [entry for entry, _ in pages], shape, dtype)
        how = "pages whose data lie wholly inside the file"
    if frames.shape[0] < 2:
        raise ValueError(f"{path}: only {frames.shape[0]} complete frame found; a movie needs at least 2")
    return Recovery(path, frames, pixel_size, description, how)


def recover_movie(path: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> Recovery:
    """Copy the complete frames of the damaged movie `path` to a new movie file `output` (ImageJ TIFF, or
    OME-TIFF for .ome.tif names), keeping the pixel size; `path` itself is never changed."""
    found = find_complete_frames(path)
    lazy = lazy_frames(found.frames, f"recover-{found.path.name}", found.path)
    description = f"recovered from the damaged file {found.path.name}"
    if found.description:
        description += f"; its description: {found.description}"
    write_movie(output, lazy, found.pixel_size_um, overwrite=overwrite, protected=(found.path,),
                description=description, progress=progress)
    return found

