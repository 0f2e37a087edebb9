"""Spot labels as napari Points layers: their look, their placement over an image, their coordinates in
an image's pixels, and snapping a click to the image's local maximum."""

from __future__ import annotations

import napari
import numpy as np

from ..analysis import snap_to_maximum
from ..io import as_array

LABEL_STYLE = {"size": 6, "border_width": 0.12, "border_color": "yellow", "face_color": "transparent", "symbol": "disc"}
SUGGESTION_STYLE = {**LABEL_STYLE, "border_color": "cyan", "symbol": "square"}


def to_image_coordinates(points_layer, image_layer) -> np.ndarray:
    """Points of `points_layer` with their last axes (up to the image's dimensions) in the data coordinates
    of `image_layer` (scale and translate); a leading frame axis the image lacks stays as it is."""
    data = np.asarray(points_layer.data, dtype=np.float64).reshape(len(points_layer.data), -1)
    shared = min(data.shape[1], image_layer.ndim)
    world = data[:, -shared:] * points_layer.scale[-shared:] + points_layer.translate[-shared:]
    result = data.copy()
    result[:, -shared:] = (world - image_layer.translate[-shared:]) / image_layer.scale[-shared:]
    return result


def placement(reference, ndim: int) -> dict:
    """Scale and translate for a points layer of `ndim` dimensions over `reference`: the image's own on the
    axes they share, 1 and 0 on a leading frame axis the image lacks."""
    if reference is None:
        return {}
    shared = min(ndim, reference.ndim)
    lead = ndim - shared
    return {"scale": (1.0,) * lead + tuple(reference.scale[-shared:]),
            "translate": (0.0,) * lead + tuple(reference.translate[-shared:])}


def snapped(layer, reference, point: np.ndarray, frame_shown: int) -> np.ndarray | None:
    """`point` of the Points layer `layer` (its data coordinates) moved to the local maximum of the image
    layer `reference`; 2-D labels over a movie snap on `frame_shown`. None: a frame the movie lacks."""
    probe = napari.layers.Points(point[None], scale=layer.scale, translate=layer.translate)
    at = to_image_coordinates(probe, reference)[0]
    if reference.ndim == 3:
        t = int(round(at[-3])) if len(at) >= 3 else frame_shown
        if not 0 <= t < reference.data.shape[0]:
            return None
    frame = as_array(reference.data[t] if reference.ndim == 3 else reference.data, np.float64)
    y, x = snap_to_maximum(frame, at[-2], at[-1])
    world = np.array([y, x]) * reference.scale[-2:] + reference.translate[-2:]
    moved = point.copy()
    moved[-2:] = np.round((world - layer.translate[-2:]) / layer.scale[-2:], 9)  # no 14.000000000000002
    return moved
