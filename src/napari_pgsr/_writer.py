"""npe2 writer: save an image layer as ImageJ TIFF or OME-TIFF, keeping the pixel size."""

from __future__ import annotations

from typing import Any

from .io import write_movie


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one image layer; never writes over the file the layer was read from."""
    if attributes.get("rgb"):
        raise ValueError(f"{path}: the layer is an RGB image; this writer saves grey-scale movies (T x Y x X)")
    if attributes.get("multiscale") or isinstance(data, list):
        raise ValueError(f"{path}: the layer is a multiscale pyramid; this writer saves one grey-scale movie")
    metadata = attributes.get("metadata") or {}
    scale = attributes.get("scale")
    pixel = float(scale[-1]) if scale is not None and len(scale) else 1.0
    if pixel == 1.0 and metadata.get("pixel_size_um") != 1.0:
        pixel = None  # napari's default scale: no pixel size is known, so none is written
    protected = tuple(p for p in (metadata.get("source_path"),) if p)
    # napari's save dialog has already asked before replacing another existing file
    written = write_movie(path, data, pixel_size_um=pixel, overwrite=True, protected=protected)
    return [str(written)]
