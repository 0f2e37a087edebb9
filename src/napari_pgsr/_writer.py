"""npe2 writer: save an image layer as ImageJ TIFF or OME-TIFF, keeping the pixel size."""

from __future__ import annotations

import warnings
from typing import Any

from .io import write_movie


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one image layer; never writes over the file the layer was read from."""
    try:
        return _write_image(path, data, attributes)
    except (ValueError, OSError) as err:
        # napari turns a writer's ValueError into "not a valid writer for <path>"; its Save dialog shows the
        # warnings raised while saving, so the reason is said as one too
        warnings.warn(f"napari-pgsr did not save {path}: {err}", UserWarning, stacklevel=2)
        raise


def _write_image(path: str, data: Any, attributes: dict) -> list[str]:
    if attributes.get("rgb"):
        raise ValueError(f"{path}: the layer is an RGB image; this writer saves grey-scale movies (T x Y x X)")
    if attributes.get("multiscale") or isinstance(data, list):
        raise ValueError(f"{path}: the layer is a multiscale pyramid; this writer saves one grey-scale movie")
    metadata = attributes.get("metadata") or {}
    pixel = pixel_size_um(path, attributes.get("scale"), attributes.get("units"), metadata)
    protected = tuple(p for p in (metadata.get("source_path"),) if p)
    # napari's save dialog has already asked before replacing another existing file
    written = write_movie(path, data, pixel_size_um=pixel, overwrite=True, protected=protected)
    return [str(written)]


def pixel_size_um(path: str, scale, units, metadata: dict) -> float | None:
    """The layer's pixel width in micrometres: its scale in its unit (napari >= 0.6 layers carry units: a
    scale of 108 nm was written as a 108 um pixel), µm when the unit is napari's default 'pixel' (this
    plugin's reader gives scales in µm); None for napari's default scale of 1 pixel."""
    pixel = float(scale[-1]) if scale is not None and len(scale) else 1.0
    unit = str(units[-1]) if units is not None and len(units) else "pixel"
    if unit in ("pixel", "", "None"):
        return None if pixel == 1.0 and metadata.get("pixel_size_um") != 1.0 else pixel
    import pint

    registry = pint.get_application_registry()
    try:
        return float((pixel * registry.Unit(unit)).to(registry.micrometer).magnitude)
    except (pint.errors.DimensionalityError, pint.errors.UndefinedUnitError, ValueError) as err:
        raise ValueError(f"{path}: the layer's x unit is {unit!r}, not a length; the pixel size is written in "
                         "micrometres") from err
