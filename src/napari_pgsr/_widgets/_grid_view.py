"""napari's grid view for side-by-side comparison: a grid shape that fits the canvas, and spot labels on
every image.

napari draws each layer in one grid cell only, so side by side the labels would mark one image. Each other
image gets a copy of the labels layer in its cell (napari's grid `stride` 2: an image and its labels per
cell), kept in step both ways: a point added, moved or deleted on any image is one on all of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import napari
import numpy as np

COPY_SEPARATOR = " on "
POINT_STYLE = ("size", "symbol", "border_width", "border_color", "face_color")  # per point
NEXT_STYLE = ("current_size", "current_symbol", "current_border_width", "current_border_color",
              "current_face_color")  # for the next point added


def canvas_grid(viewer):
    """The viewer's grid settings (napari >= 0.6 moved them to `viewer.canvas`)."""
    return viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid


def best_grid_shape(cells: int, canvas_size: Sequence[float], image_size: Sequence[float]) -> tuple[int, int]:
    """(rows, columns) that show `cells` images of `image_size` (height, width) largest on a canvas of
    `canvas_size` (height, width); on a tie, fewer rows."""
    def zoom(rows: int) -> float:
        columns = -(-cells // rows)
        return min(canvas_size[0] / rows / image_size[0], canvas_size[1] / columns / image_size[1])

    rows = max(range(1, cells + 1), key=lambda r: (zoom(r), -r))
    return rows, -(-cells // rows)


class FitGridToCanvas:
    """Keep napari's grid shape the best for the canvas as it is resized (docks opened, window dragged)
    while the grid is on and nobody else has changed the shape; then stop."""

    def __init__(self, viewer, image_size: Sequence[float]):
        self._viewer, self._image_size, self._shape, self._stopped = viewer, tuple(image_size), None, False
        self.fit()
        viewer.canvas.events.size.connect(self.fit)

    def fit(self, *_) -> None:
        grid = canvas_grid(self._viewer)
        if self._stopped:
            return
        if self._shape is not None and (tuple(grid.shape) != self._shape or not grid.enabled):
            self.stop()
            return
        visible = [layer for layer in self._viewer.layers if layer.visible]
        cells = -(-len(visible) // abs(grid.stride))
        self._shape = best_grid_shape(max(cells, 1), self._viewer.canvas.size, self._image_size)
        grid.shape = self._shape
        self._viewer.reset_view()

    def stop(self) -> None:
        """Leave the grid shape alone from now on (again: nothing)."""
        self._viewer.canvas.events.size.disconnect(self.fit)
        self._shape = self._stopped = True


def is_copy(layer) -> bool:
    return bool(layer.metadata.get("grid_copy_of"))


class GridLabels:
    """Copies of `labels` over each of `images` but `home` (the image the labels layer itself sits on)."""

    def __init__(self, viewer, labels: napari.layers.Points, images: Sequence[napari.layers.Image],
                 home: napari.layers.Image, on_mouse_drag: Callable | None = None):
        self._viewer, self.labels, self._syncing, self.removed = viewer, labels, False, False
        cells = [(image, labels if image is home else self._copy_for(image, on_mouse_drag)) for image in images]
        self.copies: list[napari.layers.Points] = [points for _, points in cells if points is not labels]
        self._arrange(cells)
        self._push()
        labels.visible = True
        labels.events.data.connect(self._from_labels)
        labels.events.mode.connect(self._follow_mode)
        for name in POINT_STYLE + NEXT_STYLE:  # restyled in the layer controls: the copies follow
            getattr(labels.events, name).connect(self._restyle)
        viewer.layers.events.removed.connect(self._on_removed)
        canvas_grid(viewer).stride = 2

    def _copy_for(self, image, on_mouse_drag) -> napari.layers.Points:
        labels = self.labels
        copy = self._viewer.add_points(np.empty((0, labels.ndim)), ndim=labels.ndim,
                                       name=f"{labels.name}{COPY_SEPARATOR}{image.name}", scale=labels.scale,
                                       translate=labels.translate, metadata={"grid_copy_of": labels.name},
                                       border_width_is_relative=labels.border_width_is_relative)
        copy.mode = labels.mode
        copy.events.data.connect(self._from_copy)
        if on_mouse_drag is not None:
            copy.mouse_drag_callbacks.insert(0, on_mouse_drag)
        return copy

    def _arrange(self, cells: list[tuple]) -> None:
        """Each (image, points) pair one after the other at the bottom of the layer list: napari's grid with
        stride 2 then puts the pair in one cell, the images left to right in their order."""
        layers = self._viewer.layers
        for position, layer in enumerate(layer for pair in cells for layer in pair):
            layers.move(layers.index(layer), position)

    # ---- keeping the copies in step -------------------------------------------------------------------
    def _from_labels(self, event) -> None:
        if not self._syncing and _done(event):
            self._push()

    def _from_copy(self, event) -> None:
        if self._syncing or not _done(event):
            return
        copy = event.source
        self._syncing = True
        try:
            added = str(event.action) == "added"
            if added:  # an add, so the Spots widget snaps it (and the copy gets the snapped point back)
                indices = [i if i >= 0 else len(copy.data) + i for i in event.data_indices]
                self.labels.add(np.asarray(copy.data)[indices])
            else:
                self.labels.data = np.asarray(copy.data)
        finally:
            self._syncing = False
        # not back onto a copy that removed or moved points: its selection is not yet updated to its data
        self._push(skip=() if added else (copy.name,))

    def _restyle(self, *_) -> None:
        if not self._syncing:
            self._push()

    def _follow_mode(self, *_) -> None:
        """Adding on the labels means adding on every image."""
        for copy in self.copies:
            copy.mode = self.labels.mode

    def _push(self, skip: Sequence[str] = ()) -> None:
        """The labels' points, and how they look, onto every copy (but those named in `skip`)."""
        labels, self._syncing = self.labels, True
        try:
            for copy in (copy for copy in self.copies if copy.name not in skip):
                copy.selected_data = set()  # napari would apply the style below to selected points
                copy.data = np.asarray(labels.data)
                for name in POINT_STYLE if len(labels.data) else ():
                    setattr(copy, name, getattr(labels, name))
                for name in NEXT_STYLE:  # only when it differs: napari also applies it to the selected points
                    value = getattr(labels, name)
                    if not np.array_equal(np.asarray(value), np.asarray(getattr(copy, name))):
                        # the `current_size` setter takes a number, not the 0-d array its getter returns
                        setattr(copy, name, value.item() if np.ndim(value) == 0 and hasattr(value, "item") else value)
        finally:
            self._syncing = False

    def _on_removed(self, event) -> None:
        # by name: a plugin's viewer hands out proxies of the layers, not the layers themselves
        if event.value.name == self.labels.name:
            self.remove()
        else:
            self.copies = [copy for copy in self.copies if copy.name != event.value.name]

    def remove(self) -> None:
        """Take the copies away, the labels back on top of the layer list (out of grid view an image above
        would hide them) and napari's grid back to one layer per cell. Again: nothing."""
        if self.removed:
            return
        self.removed = True
        self.labels.events.data.disconnect(self._from_labels)
        self.labels.events.mode.disconnect(self._follow_mode)
        for name in POINT_STYLE + NEXT_STYLE:
            getattr(self.labels.events, name).disconnect(self._restyle)
        self._viewer.layers.events.removed.disconnect(self._on_removed)
        copies, self.copies = self.copies, []
        for copy in copies:
            if copy.name in self._viewer.layers:
                self._viewer.layers.remove(copy.name)
        layers = self._viewer.layers
        if self.labels.name in layers:
            layers.move(layers.index(self.labels.name), len(layers))
        canvas_grid(self._viewer).stride = 1


def _done(event) -> bool:
    """A finished edit, not napari's announcement before it ('adding', 'removing', 'changing')."""
    return str(getattr(event, "action", "changed")) in {"added", "removed", "changed"}
