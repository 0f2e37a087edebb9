"""How a TIFF file describes its movie: pixel size, what wrote it, and whether it is whole."""

from __future__ import annotations

import logging
import re
import struct
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

# (micro as the micro sign, the Greek mu, or ImageJ's escaped spelling of either)
UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00B5m": 1.0, "\\u03BCm": 1.0, "micron": 1.0, "microns": 1.0,
              "micrometer": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def pixel_size_um(tif: tifffile.TiffFile) -> float | None:
    """Pixel size (x) from OME (PhysicalSizeX) or ImageJ (XResolution + unit) metadata; None if not recorded.
    Pixels recorded as not square are warned about: spot widths in nm then hold along x only."""
    size_x, size_y = _axis_size_um(tif, "X"), _axis_size_um(tif, "Y")
    if size_x and size_y and abs(size_y - size_x) > 0.01 * size_x:
        warnings.warn(f"{Path(tif.filehandle.path).name}: its pixels are not square ({size_x * 1000:g} nm wide, "
                      f"{size_y * 1000:g} nm high); sizes in nm use the width", stacklevel=2)
    return size_x


def _axis_size_um(tif: tifffile.TiffFile, axis: str) -> float | None:
    """The pixel's size along `axis` ('X' or 'Y') in µm, from OME or the resolution tags; None if unknown."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = None if root is None else next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
        if pixels is not None and pixels.get(f"PhysicalSize{axis}"):
            scale = UNIT_TO_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
            return None if scale is None else float(pixels.get(f"PhysicalSize{axis}")) * scale
    page = tif.pages.first
    resolution = page.tags.get(f"{axis}Resolution")
    if resolution is None:
        return None
    numerator, denominator = resolution.value
    if not numerator or not denominator:
        return None
    per_unit = numerator / denominator
    res_unit = page.tags.get("ResolutionUnit")
    res_unit = int(res_unit.value) if res_unit else 2
    unit = str((tif.imagej_metadata or {}).get("unit", "")) if tif.is_imagej else ""
    scale = UNIT_TO_UM.get(unit, UNIT_TO_UM.get(unit.lower()))
    if scale is None or res_unit == 3:
        # not ImageJ, or ImageJ without a unit it names: the resolution tag's unit, as Fiji reads it; and a tag
        # in pixels per centimetre is that whatever ImageJ's unit says (Micro-Manager writes cm with unit=um:
        # read per um, a 0.108 um pixel came out 1.08e-5 um)
        scale = {3: 1e4}.get(res_unit)  # only centimetres are physical here
    return None if scale is None else scale / per_unit


def description(tif: tifffile.TiffFile) -> str | None:
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


@contextmanager
def tifffile_log_unless_refused(replay: bool = True) -> Iterator[None]:
    """Hold back what tifffile logs while a file is opened: dropped if the file is refused (the refusal
    names the damage in one line; tifffile's 'invalid page offset' came first), passed on if it opens
    (unless `replay` is False: a look at the header before the file is read)."""
    log = logging.getLogger("tifffile")
    held: list[logging.LogRecord] = []
    holder = logging.Handler()
    holder.emit = held.append  # type: ignore[method-assign]
    propagate = log.propagate
    log.addHandler(holder)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(holder)
        log.propagate = propagate
    for record in held if replay else ():  # (only reached when the block raised nothing)
        log.handle(record)


def open_tiff(path: Path) -> tifffile.TiffFile:
    """Open a TIFF; frames appended one by one (one 2-D series each), or in blocks of frames by tifffile
    (`imwrite(..., append=True)`, how acquisition scripts stream to disk: one series per block), are opened
    as one image sequence (`appended_blocks` on the file says how many blocks there were)."""
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series
        frames = len(series) > 1 and all(s.ndim == 2 and s.shape == series[0].shape and s.dtype == series[0].dtype
                                         for s in series)
        blocks = (len(series) > 1 and tif.is_shaped and not (tif.is_ome or tif.is_imagej)
                  and all(s.shape[-2:] == series[0].shape[-2:] and s.dtype == series[0].dtype
                          and set(s.axes[:-2]) <= {"Q", "I", "T"} and s.axes[-2:] == "YX" for s in series))
        if frames or blocks:
            count = len(series)
            tif.close()
            tif = tifffile.TiffFile(path, is_shaped=False)
            tif.appended_blocks = count if blocks and not frames else 0
        return tif
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error... for broken files
        raise ValueError(f"{path} is not a readable TIFF file ({err}); expected a .tif/.ome.tif movie.") from err


def imagej_plain_stack(tif: tifffile.TiffFile) -> bool:
    """Fiji saves a plain stack as 'slices': without frames or a z-spacing it is a sequence, not a Z-stack."""
    meta = tif.imagej_metadata or {}
    return bool(tif.is_imagej and meta.get("slices", 1) > 1 and meta.get("frames", 1) == 1
                and "spacing" not in meta and "channels" not in meta)


def axes_besides_time(tif: tifffile.TiffFile) -> str:
    """What the file's header says it holds besides T x Y x X ('2 channels', '5 z-slices per time point'), or ''
    (a plain stack of Fiji's is time). Read from the header, so it holds for a file cut short too."""
    meta = (tif.imagej_metadata or {}) if tif.is_imagej else {}
    channels, slices, frames = (int(meta.get(key, 1)) for key in ("channels", "slices", "frames"))
    if channels > 1:
        return f"{channels} channels"
    if slices > 1 and not imagej_plain_stack(tif):
        return f"{slices} z-slices per time point"
    if tif.is_ome:
        try:
            series = tif.series[0]
            sizes = dict(zip(series.axes, series.shape))
        except Exception:  # noqa: BLE001 - a header too damaged to read: nothing said
            return ""
        for axis, name in (("C", "channels"), ("Z", "z-slices per time point"), ("S", "samples per pixel")):
            if sizes.get(axis, 1) > 1:
                return f"{sizes[axis]} {name}"
    return ""


def next_page_offset(tif: tifffile.TiffFile, page_offset: int) -> int:
    """Where the file says the page after the one at `page_offset` starts (0: it is the last)."""
    layout, handle = tif.tiff, tif.filehandle
    handle.seek(page_offset)
    (tags,) = struct.unpack(layout.tagnoformat, handle.read(layout.tagnosize))
    handle.seek(page_offset + layout.tagnosize + tags * layout.tagsize)
    (offset,) = struct.unpack(layout.offsetformat, handle.read(layout.offsetsize))
    return offset


def _raw_tags(tif: tifffile.TiffFile, page_offset: int) -> list[tuple[int, int, int, int | None]] | None:
    """The tag entries of the page at `page_offset` as the file holds them, whatever tifffile kept: (code,
    type, count, offset of the value, or None when it sits in the entry or its type is not TIFF's); None when
    the entries themselves are cut off."""
    layout, handle = tif.tiff, tif.filehandle
    handle.seek(page_offset)
    (tags,) = struct.unpack(layout.tagnoformat, handle.read(layout.tagnosize))
    entries = handle.read(tags * layout.tagsize)
    if len(entries) < tags * layout.tagsize:
        return None
    head = struct.calcsize(layout.byteorder + layout.tagformat1[1:])
    found = []
    for start in range(0, len(entries), layout.tagsize):
        code, kind = struct.unpack(layout.tagformat1, entries[start:start + head])
        count, value = struct.unpack(layout.tagformat2, entries[start + head:start + layout.tagsize])
        offset = None
        if kind in tifffile.TIFF.DATA_FORMATS:  # (a type TIFF does not define: tifffile skips it too)
            item = struct.calcsize("<" + tifffile.TIFF.DATA_FORMATS[kind])  # (a RATIONAL, '2I', is 8 bytes)
            if count * item > layout.tagoffsetthreshold:  # the value is elsewhere, at the offset the entry holds
                (offset,) = struct.unpack(layout.offsetformat, value[:layout.offsetsize])
                count *= item  # (in bytes from here on)
        found.append((code, kind, count, offset))
    return found


def tag_values_past_end(tif: tifffile.TiffFile, page_offset: int) -> bool:
    """Whether a tag of the page at `page_offset` has its value beyond the end of the file. tifffile leaves such
    a tag out: an OME-TIFF cut in its OME-XML (written last) read as a plain stack, channels as time."""
    tags = _raw_tags(tif, page_offset)
    return tags is None or any(offset is not None and offset + size > tif.filehandle.size
                               for _, _, size, offset in tags)


def cut_description_sizes(tif: tifffile.TiffFile) -> dict[str, int]:
    """The OME sizes (SizeC, SizeZ, SizeT) still legible in what is left of a cut file's first image
    description (its OME-XML written last and cut short): {} when none are."""
    for code, _, size, offset in _raw_tags(tif, tif.pages.first.offset) or []:
        if code == 270 and offset is not None:  # ImageDescription
            tif.filehandle.seek(offset)
            text = tif.filehandle.read(max(0, min(size, tif.filehandle.size - offset))).decode("latin-1")
            return {key: int(number) for key, number in re.findall(r'\b(Size[CZT])="(\d+)"', text)}
    return {}


def check_not_truncated(tif: tifffile.TiffFile, path: Path, shape: tuple[int, ...]) -> None:
    """A copy cut short loses the frames past the cut and, as writers put it at the end, often the index of
    all but the first: refuse it by name rather than read it as fewer frames or a single one."""
    held = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    # (ImageJ's count is of the whole file; an OME or Micro-Manager series read instead may be one position)
    imagej_count = tif.is_imagej and tif.series[0].kind not in ("ome", "mmstack")
    announced = int((tif.imagej_metadata or {}).get("images", 0)) if imagej_count else 0
    last, size = tif.pages[len(tif.pages) - 1], tif.filehandle.size
    ends = [offset + count for offset, count in zip(last.dataoffsets, last.databytecounts) if count]
    past_end = next_page_offset(tif, last.offset) >= size or (ends and max(ends) > size)
    if tag_values_past_end(tif, tif.pages[0].offset):
        raise ValueError(f"{path} is truncated or damaged: the metadata of its first page reaches past the end of the "
                         "file (a copy or download cut short?), so what its planes are (for an OME-TIFF, whose "
                         "OME-XML is written last: channels, z-slices or time points) is not known; copy the file "
                         f"again, or, if it is a plain time series, napari-pgsr-recover {path.name} -o recovered.tif "
                         "copies its complete frames")
    more = axes_besides_time(tif)
    recover = (f"napari-pgsr-recover {path.name} -o recovered.tif copies the complete frames to a new movie"
               if not more else f"it holds {more}, which recover does not take apart")
    if announced > held or past_end:
        found = (f"its ImageJ header announces {announced} images but the file indexes {held}"
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


def check_frames_present(tif: tifffile.TiffFile, path: Path) -> None:
    """A multi-file OME (or Micro-Manager) dataset whose files are not all there: tifffile would read the frames
    of the missing ones as zeros, which split and train would take for data."""
    series = tif.series[0]
    missing = [index for index, page in enumerate(series.pages) if page is None]
    if not missing or series.kind not in ("ome", "mmstack"):
        return
    named = re.findall(r'FileName="([^"]+)"', tif.ome_metadata or "") if tif.is_ome else []
    absent = sorted({name for name in named if not (path.parent / name).exists()})
    if not set(named) - {path.name}:  # a single file announcing more planes than it holds
        raise ValueError(f"{path}: its OME-XML announces {len(series.pages)} image planes, but the file holds "
                         f"{len(series.pages) - len(missing)} (none from plane {missing[0]}): an acquisition stopped "
                         "early, or a file cut short?")
    if absent:
        raise ValueError(f"{path} is one file of a multi-file dataset: {len(missing)} of its {len(series.pages)} "
                         f"image planes (from plane {missing[0]}) are in {', '.join(absent)}, which "
                         f"{'is' if len(absent) == 1 else 'are'} not beside it; put the dataset's files together in "
                         "one folder")
    # every file is there (it said to put them together all the same): one of them is cut short or damaged
    others = sorted(set(named) - {path.name})
    raise ValueError(f"{path} is one file of a multi-file dataset whose files are all beside it, but {len(missing)} "
                     f"of its {len(series.pages)} image planes (from plane {missing[0]}) could not be read from them: "
                     f"is {others[0] if len(others) == 1 else 'one of ' + (', '.join(others) or 'its files')} cut "
                     "short or damaged? Open each to see")
