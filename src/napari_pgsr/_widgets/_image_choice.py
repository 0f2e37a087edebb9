"""The Spots widget's 'Measure on' list: grey-scale image layers, keeping the user's picks through renames."""

from __future__ import annotations

from collections.abc import Callable

import napari
from magicgui.widgets import Select


class ImageChoice(Select):
    """Several image layers to measure on. The user's picks survive renames and other layers coming and
    going; a new image of the reference's shape (a restoration just made) is picked too."""

    def __init__(self, viewer: napari.viewer.Viewer, reference: Callable[[], object], **kwargs):
        self._viewer, self._reference = viewer, reference
        super().__init__(choices=self._image_names, allow_multiple=True, **kwargs)
        self._chosen: list = []  # (layer, its name then): names change, layers stay
        self.changed.connect(self._remember_chosen)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self.refresh)
        viewer.layers.events.inserted.connect(self._follow_renames)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)

    def _image_names(self, *_) -> list[str]:
        return [layer.name for layer in self._viewer.layers
                if isinstance(layer, napari.layers.Image) and not layer.rgb]

    def _follow_renames(self, event) -> None:
        event.value.events.name.connect(self.refresh)

    def _remember_chosen(self, *_) -> None:
        picked = set(self.value or ())
        renamed = [layer for layer, name in self._chosen if layer.name != name]  # dropped by the rename alone
        self._chosen = [(layer, layer.name) for layer in self._viewer.layers
                        if layer.name in picked or any(layer is other for other in renamed)]

    def refresh(self, event=None) -> None:
        """The layer list changed: keep the user's picks (renamed or not), and pick a new image of the
        reference's shape too (a restoration just made), but not one the user left out before."""
        reference = self._reference()
        new = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        chosen = [layer for layer, _ in self._chosen]
        if (reference is not None and isinstance(new, napari.layers.Image) and not new.rgb
                and new.data.shape == reference.data.shape):
            chosen.append(new)
        kept = [layer for layer in self._viewer.layers if any(layer is c for c in chosen)]
        self.reset_choices()
        self.value = [layer.name for layer in kept]
        self._chosen = [(layer, layer.name) for layer in kept]

    def select_same_shape(self) -> None:
        """Every grey-scale image layer of the reference layer's shape (the default selection)."""
        self.reset_choices()
        reference = self._reference()
        if reference is not None:
            self.value = [name for name in self._image_names()
                          if self._viewer.layers[name].data.shape == reference.data.shape]
