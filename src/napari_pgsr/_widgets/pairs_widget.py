"""'Exposure pairs' dock widget: split an alternating-exposure movie layer into low and high layers."""

from __future__ import annotations

from collections.abc import Generator

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, create_widget
from napari.utils.notifications import show_error, show_info

from ..io import display_range
from ..pairs import Pairs, iter_frame_means, pairs_from_means
from ._workers import start

PHASES = {"detect": None, "first frame is low": True, "first frame is high": False}


def split_job(data, low_first: bool | None, name: str) -> Generator[tuple[int, int], None, Pairs]:
    """Worker body: frame means with progress, then the pairing (all in the core)."""
    means = np.empty(data.shape[0])
    yield from iter_frame_means(data, means, name)
    return pairs_from_means(data, means, low_first, name)


def describe(pairs: Pairs) -> dict[str, str]:
    """Text for the widget's result labels."""
    phase = "low first (frames 0, 2, 4, ...)" if pairs.low_first else "high first (frames 1, 3, 5, ... are low)"
    dropped = ", ".join(map(str, pairs.dropped[:8])) + (" ..." if len(pairs.dropped) > 8 else "")
    return {"phase": phase, "ratio": f"{pairs.ratio:.2f} x high/low (baseline {pairs.baseline:.0f} ADU)",
            "pairs": str(len(pairs)), "dropped": dropped or "none"}


class ExposurePairsWidget(Container):
    """Pick a movie layer, detect the low-exposure phase (or set it) and add '<name> low' / '<name> high'."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self.movie = create_widget(label="Movie", annotation="napari.layers.Image")
        self.phase = ComboBox(label="Low exposure", choices=list(PHASES), value="detect",
                              tooltip="detect it from frame brightness, or say which exposure frame 0 has")
        self.run_button = PushButton(text="Split into pairs")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Frames read", min=0, max=1, value=0)
        self.result = {key: Label(label=text, value="-") for key, text in
                       (("phase", "Phase"), ("ratio", "Ratio"), ("pairs", "Pairs"),
                        ("dropped", "Left out"))}
        self.extend([self.movie, self.phase, self.run_button, self.cancel_button, self.progress,
                     *self.result.values()])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.last_pairs: Pairs | None = None

    def run(self) -> None:
        """Start splitting the chosen layer in a worker."""
        layer = self.movie.value
        if layer is None:
            show_error("Exposure pairs: open a movie first (no image layer chosen)")
            return
        if layer.data.ndim != 3 or layer.rgb or getattr(layer, "multiscale", False):
            show_error(
                f"Exposure pairs: layer '{layer.name}' has shape {tuple(layer.data.shape)}; expected a "
                "grey-scale movie T x Y x X")
            return
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.max, self.progress.value = layer.data.shape[0], 0
        self.last_pairs = None  # a run that fails or is cancelled must not leave the last movie's result shown
        for label in self.result.values():
            label.value = "-"
        self._worker = start(split_job, layer.data, PHASES[self.phase.value], layer.name,
                             on_yield=self._on_progress, on_return=lambda p: self._show(layer, p),
                             on_finish=self._on_finish, context=f"Exposure pairs ({layer.name})", owner=self.native)

    def cancel(self) -> None:
        """Stop reading at the next chunk of frames."""
        if self._worker is not None:
            self._worker.quit()

    def _on_progress(self, value: tuple[int, int]) -> None:
        self.progress.value = value[0]

    def _on_finish(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self._worker = None

    def _show(self, layer, pairs: Pairs) -> None:
        if layer not in self._viewer.layers:  # removed while it was read: its pairs would be strays
            show_info(f"Exposure pairs: '{layer.name}' was removed while it was split; no layers added")
            return
        self.last_pairs = pairs
        for key, text in describe(pairs).items():
            self.result[key].value = text
        metadata = {**pairs.summary(), "source_layer": layer.name,
                    "low_index": pairs.low_index.tolist(), "high_index": pairs.high_index.tolist(),
                    "pixel_size_um": layer.metadata.get("pixel_size_um"),
                    "source_path": layer.metadata.get("source_path")}
        for kind, stack in (("low", pairs.low), ("high", pairs.high)):
            name = f"{layer.name} {kind}"
            if name in self._viewer.layers and self._viewer.layers[name].metadata.get("exposure") == kind:
                self._viewer.layers.remove(name)  # an earlier split's; a user's own layer of the name stays
            self._viewer.add_image(stack, name=name, scale=layer.scale, translate=layer.translate, colormap="gray",
                                   contrast_limits=display_range(stack),
                                   metadata={**metadata, "exposure": kind})
