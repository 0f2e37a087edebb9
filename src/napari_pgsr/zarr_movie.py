"""Open OME-Zarr movies (NGFF 0.4, as napari-pgsr-predict writes them) lazily, like TIFF movies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_UNIT_TO_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "um": 1.0, "µm": 1.0, "nm": 1e-3}


def is_zarr_path(path) -> bool:
    """Names ending .zarr are (OME-)Zarr stores, and so is a folder holding a Zarr group's metadata (the
    image '0' of a bioformats2raw store: store.zarr/0)."""
    if str(path).rstrip("/").lower().endswith(".zarr"):
        return True
    folder = Path(path)
    return folder.is_dir() and any((folder / name).is_file() for name in (".zgroup", ".zattrs", "zarr.json"))


def open_image_group(path):
    """The Zarr group of the image at `path`: bioformats2raw (the usual converter of vendor files) puts it in
    '0' under a root that only says so ('bioformats2raw.layout')."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attributes = group.attrs.get("ome", group.attrs)
    if "multiscales" not in attributes and "bioformats2raw.layout" in attributes and "0" in group:
        return group["0"]
    return group


def _multiscale(group) -> dict:
    """The first multiscale image of a group: NGFF 0.4 keeps it in the attributes, 0.5 under 'ome'."""
    attributes = group.attrs.get("ome", group.attrs)
    return attributes["multiscales"][0]


def _axis_names(multiscale: dict, ndim: int) -> list[str]:
    """Axis names in lower case; stores older than NGFF 0.3 name none (then t, c, z, y, x from the end)."""
    by_type = {"time": "t", "channel": "c"}  # NGFF marks an axis by its type; its name may be 'time', say
    names = []
    for axis in multiscale.get("axes", []):
        name = str(axis.get("name", "") if isinstance(axis, dict) else axis).lower()
        kind = str(axis.get("type", "")).lower() if isinstance(axis, dict) else ""
        names.append(name if name in ("t", "c", "z", "y", "x") else by_type.get(kind, name))
    return names if len(names) == ndim else list("tczyx"[5 - ndim:])


def is_zarr_movie(path) -> bool:
    """Whether `path` is an OME-Zarr image with a time axis (what read_movie opens), read cheaply."""
    if not is_zarr_path(path):
        return False
    try:
        group = open_image_group(path)
        multiscale = _multiscale(group)
        names = _axis_names(multiscale, group[multiscale["datasets"][0]["path"]].ndim)
    except Exception:  # noqa: BLE001 - not a store, not an image: not ours to open
        return False
    return "t" in names


def read_zarr_movie(path: Path, single_frame: bool = False):
    """A Movie from the full-resolution level of an OME-Zarr image; frames not yet written read as NaN.
    A store of one frame is refused unless `single_frame` (then a movie of that one frame)."""
    import dask.array as da

    from .io import Movie, SingleFrameError, lazy_frames

    try:
        group = open_image_group(path)
        multiscale = _multiscale(group)
        dataset = multiscale["datasets"][0]
        array = group[dataset["path"]]
    except Exception as err:  # zarr raises several kinds for a folder that is not a store
        raise ValueError(f"{path} is not an OME-Zarr image ({type(err).__name__}: {err}); expected a .zarr store "
                         "with NGFF 'multiscales' metadata, as napari-pgsr-predict writes") from err
    names = _axis_names(multiscale, array.ndim)
    kept = [i for i, n in enumerate(array.shape) if n > 1 or names[i] in ("y", "x")]
    found = f"{path.name} holds axes {''.join(names)} of shape {tuple(array.shape)}"
    one_frame = [names[i] for i in kept] == ["y", "x"]
    if one_frame and not single_frame:
        raise SingleFrameError(f"{found}: a single frame; expected a movie T x Y x X")
    if not one_frame and [names[i] for i in kept] != ["t", "y", "x"]:
        raise ValueError(f"{found}; expected a movie T x Y x X (time, height, width; other axes of length 1)")
    shape = (1,) * one_frame + tuple(array.shape[i] for i in kept)
    frames = array if tuple(array.shape) == shape else da.from_zarr(array).reshape(shape)
    if np.dtype(frames.dtype).kind not in "uif":
        raise ValueError(f"{path.name} holds {frames.dtype} pixels; expected integer or floating point intensities")
    pixel_size, unit_note = None, ""
    x_axis = names.index("x")
    # NGFF: a multiscale's own scale applies on top of its dataset's
    transforms = [*dataset.get("coordinateTransformations", []), *multiscale.get("coordinateTransformations", [])]
    scales = [t["scale"] for t in transforms if t.get("type") == "scale" and len(t.get("scale", [])) == array.ndim]
    if scales:
        axes = multiscale.get("axes") or []
        axis = axes[x_axis] if len(axes) == array.ndim else {}  # (unnamed axes: no unit either)
        unit = str(axis.get("unit", "") if isinstance(axis, dict) else "")
        factor = _UNIT_TO_UM.get(unit.lower())  # no unit: the scale is not a physical size
        pixel_size = float(np.prod([scale[x_axis] for scale in scales])) * factor if factor else None
        if unit and not factor:
            unit_note = f" (its scale's unit {unit!r} is not one of {', '.join(_UNIT_TO_UM)})"
    written = dict(group.attrs.get("napari_pgsr", {}))
    if "pixel_size_um" in written:  # ours: None where the source had none (the scale then says 1.0)
        pixel_size = written["pixel_size_um"]
    metadata = {"source_path": str(Path(path).resolve()), "file_axes": "".join(names), "pixel_size_um": pixel_size}
    if written:
        metadata["napari_pgsr"] = written
    if pixel_size is None:
        metadata["note"] = f"pixel size not recorded in the store{unit_note}; scale left at 1 pixel"
    if written.get("complete") is False:
        metadata["incomplete"] = ("the restoration was stopped before every frame was written: the missing "
                                  "frames read as NaN (napari-pgsr-predict --resume completes it)")
    data = frames if isinstance(frames, da.Array) else lazy_frames(frames, f"zarr-{path.name}", path)
    return Movie(data, frames, Path(path), pixel_size, "TYX", metadata)
