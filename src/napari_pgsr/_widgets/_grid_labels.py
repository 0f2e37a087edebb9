"""Spot labels on every image of napari's grid view.

napari draws each layer in one grid cell only, so side by side the labels would mark one image. Each other
visible image gets a copy of the labels layer in its cell (napari's grid `stride` 2: an image and its points
per cell), kept in step both ways: a point added (snapped), moved or deleted on any image is one on all."""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Sequence

import napari
import numpy as np

from ._grid_view import canvas_grid

COPY_SEPARATOR = " on "
POINT_STYLE = ("size", "symbol", "border_width", "border_color", "face_color")  # per point
NEXT_STYLE = ("current_size", "current_symbol", "current_border_width", "current_border_color",
              "current_face_color")  # for the next point added


def copy_source(layer) -> str | None:
    """Name of the labels layer that `layer` is a grid copy of, None for any other layer."""
    return layer.metadata.get("grid_copy_of")


class GridLabels:
    """Copies of `labels` over each of `images` but `home` (the image the labels layer itself sits on).
    `on_layout_change` is called (inside napari's event) when layers are added, removed, moved, renamed or
    hidden, as that breaks the image-and-points pairs: rebuild after the event. `show`: make the labels
    visible."""

    def __init__(self, viewer, labels: napari.layers.Points, images: Sequence[napari.layers.Image],
                 home: napari.layers.Image, on_mouse_drag: Callable | None = None,
                 on_layout_change: Callable[[], None] = lambda: None, show: bool = False):
        self._viewer, self.labels, self._syncing, self.removed = viewer, labels, False, False
        self._id, self._on_layout_change, self._images = uuid.uuid4().hex, on_layout_change, list(images)
        grid = canvas_grid(viewer)
        self._stride_before = grid.stride
        active = getattr(viewer.layers.selection.active, "name", None)  # each copy added becomes the active one
        cells = [(image, labels if image is home else self._copy_for(image, on_mouse_drag)) for image in images]
        self.copies: list[napari.layers.Points] = [points for _, points in cells if points is not labels]
        self._arrange(cells)
        if show and not labels.visible:  # grid view just switched on (Side by side hides the labels too)
            labels.visible = True
        self._push()
        self._follow_visible()
        if active in viewer.layers:
            viewer.layers.selection.active = viewer.layers[active]
        grid.stride = 2
        labels.events.data.connect(self._from_labels)
        labels.events.mode.connect(self._follow_mode)
        labels.events.visible.connect(self._follow_visible)
        for name in POINT_STYLE + NEXT_STYLE:  # restyled in the layer controls: the copies follow
            getattr(labels.events, name).connect(self._restyle)
        for event in self._layout_events():
            event.connect(self._layout_changed)

    def _layout_events(self) -> list:
        events = self._viewer.layers.events
        return [events.inserted, events.removed, events.moved, self.labels.events.name,
                *(image.events.visible for image in self._images), *(image.events.name for image in self._images)]

    def _copy_for(self, image, on_mouse_drag) -> napari.layers.Points:
        labels = self.labels
        copy = self._viewer.add_points(np.empty((0, labels.ndim)), ndim=labels.ndim,
                                       name=f"{labels.name}{COPY_SEPARATOR}{image.name}", scale=labels.scale,
                                       translate=labels.translate,
                                       metadata={"grid_copy_of": labels.name, "grid_copy_id": self._id},
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

    def _layout_changed(self, *_) -> None:
        if not self.removed:
            self._on_layout_change()

    # ---- keeping the copies in step -------------------------------------------------------------------
    def _from_labels(self, event) -> None:
        if not self._syncing and _done(event):
            self._push()

    def _from_copy(self, event) -> None:
        if self._syncing or not _done(event):
            return
        copy, action = event.source, str(event.action)
        self._syncing = True
        try:
            if action == "added":  # an add, so the Spots widget snaps it (and the copy gets the snapped point)
                indices = [i if i >= 0 else len(copy.data) + i for i in event.data_indices]
                self.labels.add(np.asarray(copy.data)[indices])
            elif action == "removed":  # by index: the labels' per-point styles stay with their points
                self.labels.remove(list(event.data_indices))
            else:  # moved: same points, new places
                self.labels.data = np.asarray(copy.data)
        finally:
            self._syncing = False
        # not back onto a copy that removed or moved points: its selection is not yet updated to its data
        self._push(skip=() if action == "added" else (copy.name,))

    def _restyle(self, *_) -> None:
        if not self._syncing:
            self._push()

    def _follow_mode(self, *_) -> None:
        """Adding on the labels means adding on every image."""
        for copy in self.copies:
            copy.mode = self.labels.mode

    def _follow_visible(self, *_) -> None:
        """Labels hidden: on every image."""
        for copy in self.copies:
            if copy.visible != self.labels.visible:  # setting it at all puts a napari layer in pan-zoom mode
                copy.visible = self.labels.visible
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

    def remove(self) -> None:
        """Take the copies away, the labels back on top of the layer list (out of grid view an image above
        would hide them) and napari's grid stride back to what it was. Again: nothing."""
        if self.removed:
            return
        self.removed = True
        self.labels.events.data.disconnect(self._from_labels)
        self.labels.events.mode.disconnect(self._follow_mode)
        self.labels.events.visible.disconnect(self._follow_visible)
        for name in POINT_STYLE + NEXT_STYLE:
            getattr(self.labels.events, name).disconnect(self._restyle)
        for event in self._layout_events():
            event.disconnect(self._layout_changed)
        layers, self.copies = self._viewer.layers, []
        # found by this instance's id: plugins get proxies of the layers, and names can be taken since
        for copy in [layer for layer in layers if layer.metadata.get("grid_copy_id") == self._id]:
            layers.remove(copy)
        if self.labels.name in layers:
            layers.move(layers.index(self.labels.name), len(layers))
        canvas_grid(self._viewer).stride = self._stride_before


class LabelsOnEveryImage:
    """While napari's grid is on: the labels that `labels_of()` gives on every visible grey-scale image, the
    labels themselves over the image named `home_of()` (else the last). Rebuilt when the grid is switched,
    `update()` is called, or after `schedule()`: layer-list events call it, and `defer(update)` must run
    `update` once napari's event is over (changing the layer list inside it is unsafe).

    One per viewer: a new one (the Spots dock closed and opened again; napari keeps the old widget alive)
    retires the one before, whose copies would otherwise be rebuilt against the new ones without end."""

    _by_viewer: dict[int, weakref.ref] = {}  # hash(viewer): a plugin's viewer proxy hashes as the viewer

    def __init__(self, viewer, labels_of: Callable, home_of: Callable[[], str | None],
                 defer: Callable[[Callable], None], on_mouse_drag: Callable | None = None):
        self._viewer, self._labels_of, self._home_of, self._on_mouse_drag = viewer, labels_of, home_of, on_mouse_drag
        self._defer = defer
        self.enabled, self.current, self._busy, self._pending, self.retired = True, None, False, False, False
        before = self._by_viewer.get(hash(viewer))
        if before is not None and before() is not None:
            before().retire()
        self._by_viewer[hash(viewer)] = weakref.ref(self)
        canvas_grid(viewer).events.enabled.connect(self._grid_switched)

    def _grid_switched(self, *_) -> None:
        self.update(show=True)

    def update(self, *_, show: bool = False) -> None:
        if self._busy or self.retired:  # our own layer changes, or a combobox that follows them
            return
        self._busy, self._pending = True, False
        try:
            if self.current is not None:
                self.current.remove()
                self.current = None
            labels = self._labels_of()
            images = [layer for layer in self._viewer.layers
                      if isinstance(layer, napari.layers.Image) and layer.visible and not layer.rgb]
            if not (self.enabled and canvas_grid(self._viewer).enabled and labels is not None
                    and copy_source(labels) is None and len(images) > 1):
                return
            home = next((image for image in images if image.name == self._home_of()), images[-1])
            self.current = GridLabels(self._viewer, labels, images, home, self._on_mouse_drag, self.schedule, show)
        finally:
            self._busy = False

    def schedule(self) -> None:
        """`update` once the current event is over (once, however many events ask for it)."""
        if not self._busy and not self._pending and not self.retired:
            self._pending = True
            self._defer(self.update)

    def retire(self) -> None:
        """Remove the copies and stop following the grid and the layers."""
        if self.current is not None:
            self.current.remove()
            self.current = None
        self.retired = True
        canvas_grid(self._viewer).events.enabled.disconnect(self._grid_switched)


def _done(event) -> bool:
    """A finished edit, not napari's announcement before it ('adding', 'removing', 'changing')."""
    return str(getattr(event, "action", "changed")) in {"added", "removed", "changed"}
