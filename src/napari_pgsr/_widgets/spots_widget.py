"""'Spots' dock widget: hand-label spots (clicks snap to the local maximum), take suggestions, load and save
labels as CSV, and measure PSF width, SNR and precision on several image layers in a worker."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (CheckBox, Container, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox,
                              create_widget)
from napari.utils.notifications import show_error, show_info, show_warning

from ..analysis import CameraCalibration, new_points, read_points_csv, suggest_spots, write_points_csv
from ..analysis.across import SpotReport, iter_measure_across
from ..io import as_array
from ._grid_labels import LabelsOnEveryImage, copy_source
from ._image_choice import ImageChoice
from ._label_points import LABEL_STYLE, SUGGESTION_STYLE, placement, snapped, to_image_coordinates
from ._spot_results import SpotResults
from ._workers import start

LABELS_NAME, SUGGESTIONS_NAME, RESULTS_NAME = "spot labels", "suggested spots", "Spot measurements"


class SpotsWidget(Container):
    """Labels layer and reference image; suggest / accept; CSV in and out; measure across image layers."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer, self._worker, self._snapping, self._shift_held = viewer, None, False, False
        self._suggestions = None  # the layer of the last suggestions
        self._cancelled = False  # Cancel pressed during the current measurement
        self.reference = create_widget(label="Snap / suggest on", annotation="napari.layers.Image")
        self.labels_layer = create_widget(label="Labels", annotation="napari.layers.Points")
        self.new_labels_button = PushButton(text="New labels layer")
        self.snap = CheckBox(text="Clicks snap to the brightest pixel within 2 px (hold Shift: exact)", value=True)
        self.on_every_image = CheckBox(text="Grid view: labels on every image", value=True)
        self.load_button, self.save_button = PushButton(text="Load labels CSV"), PushButton(text="Save labels CSV")
        self.suggest_sigma = FloatSpinBox(label="Spot sigma (px)", value=1.0, min=0.3, max=10, step=0.1,
                                          tooltip="LoG scale of the suggestions")
        self.suggest_threshold = FloatSpinBox(label="Threshold (SD)", value=10.0, min=1, max=100,
                                              tooltip="suggest spots this many local noise SDs above background")
        self.suggest_button = PushButton(text="Suggest spots on this frame")
        self.accept_button = PushButton(text="Accept suggestions as labels")
        self.images = ImageChoice(viewer, lambda: self.reference.value, label="Measure on")
        self.images.native.setMaximumHeight(100)
        self.pixel_size = FloatSpinBox(label="Pixel size (nm)", value=0.0, min=0, max=10_000, step=1,
                                       tooltip="0: unknown (nm columns stay empty)")
        self.radius = SpinBox(label="Fit radius (px)", value=3, min=2, max=15)
        self.baseline = FloatSpinBox(label="Camera baseline", value=0.0, min=-1e6, max=1e6)
        self.electrons = FloatSpinBox(label="e- per grey level", value=1.0, min=1e-6, max=1e6, step=0.01,
                                      tooltip="photoelectrons (before EM gain) per grey level: the camera's e-/ADU "
                                      "divided by its EM gain; 1: image in photons")
        # (an EMCCD's value is small: 10 e-/ADU at EM gain 300 is 0.0333; two decimals made it 0.03, or 0.0)
        self.electrons.native.setDecimals(6)
        self.saturation = SpinBox(label="Saturation (grey level)", value=0, min=0, max=2**31 - 1,
                                  tooltip="the grey level the camera clips at (a 12-bit camera: 4095); spots "
                                  "reaching it are flagged 'saturated'. 0: the image type's maximum (65535 for 16 "
                                  "bits)")
        self.emccd = CheckBox(text="EMCCD (excess noise 2)", value=True)
        self.read_noise = FloatSpinBox(label="Read noise (e- rms)", value=0.0, min=0.0, max=1e3, step=0.1,
                                       tooltip="the camera's read noise in photoelectrons, for the precision: an "
                                       "sCMOS's 1-2; an EMCCD's divided by its EM gain is about 0")
        self.measure_button = PushButton(text="Measure")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Spots fitted", min=0, max=1, value=0)
        self.note = Label(value="")
        self.results: SpotResults | None = None  # made with its dock on the first measurement
        self.extend([self.reference, self.labels_layer, self.new_labels_button, self.snap, self.on_every_image,
                     self.load_button, self.save_button, self.suggest_sigma, self.suggest_threshold,
                     self.suggest_button, self.accept_button, self.images, self.pixel_size, self.radius,
                     self.baseline, self.electrons, self.saturation, self.emccd, self.read_noise, self.measure_button,
                     self.cancel_button, self.progress, self.note])
        self.new_labels_button.changed.connect(self.new_labels)
        self.load_button.changed.connect(lambda: self.load_labels())
        self.save_button.changed.connect(lambda: self.save_labels())
        self.suggest_button.changed.connect(self.suggest)
        self.accept_button.changed.connect(self.accept_suggestions)
        self.measure_button.changed.connect(self.measure)
        self.cancel_button.changed.connect(self.cancel)
        self.reference.changed.connect(self._reference_changed)
        self.labels_layer.changed.connect(self._watch_labels)
        self.labels_layer.changed.connect(self._labels_chosen)
        self.on_every_image.changed.connect(self._on_every_image_toggled)
        self._watched = self._results_dock = None
        self.grid_labels = LabelsOnEveryImage(viewer, lambda: self.labels_layer.value,
                                              lambda: getattr(self.reference.value, "name", None),
                                              defer=self._after_event, on_mouse_drag=self._record_modifiers)
        self._reference_changed()
        self._watch_labels()
        self.grid_labels.update()

    # ---- layers ---------------------------------------------------------------------------------------
    def _reference_changed(self, *_) -> None:
        reference = self.reference.value
        if reference is not None and reference.metadata.get("pixel_size_um"):
            self.pixel_size.value = round(float(reference.metadata["pixel_size_um"]) * 1000, 3)
            self._pixel_size_shown = self.pixel_size.value
        elif self.pixel_size.value == getattr(self, "_pixel_size_shown", None):
            # the last image's pixel size, not this one's: unknown (a value typed by hand stays)
            self.pixel_size.value = self._pixel_size_shown = 0.0
        if reference is not getattr(self, "_reference", None):  # (not when the same layer is renamed)
            self._reference = reference
            self.images.select_same_shape()
        self.grid_labels.schedule()  # the labels themselves go over the reference

    def new_labels(self) -> napari.layers.Points:
        """Add an empty Points layer for labels (the reference image's dimensions and scale), in add mode."""
        reference = self.reference.value
        ndim = reference.ndim if reference is not None else 2
        layer = self._viewer.add_points(np.empty((0, ndim)), ndim=ndim, name=LABELS_NAME,
                                        **placement(reference, ndim), **LABEL_STYLE)
        layer.mode = "add"
        self.labels_layer.value = layer
        self.grid_labels.update()  # now, not after the event: a caller may label on a copy at once
        return layer

    def _watch_labels(self, *_) -> None:
        """Snap points added to the chosen labels layer; remember Shift from the click that adds them."""
        if self._watched is not None:
            self._watched.events.data.disconnect(self._on_points_changed)
            if self._record_modifiers in self._watched.mouse_drag_callbacks:
                self._watched.mouse_drag_callbacks.remove(self._record_modifiers)
        self._watched = self.labels_layer.value
        if self._watched is not None:
            self._watched.events.data.connect(self._on_points_changed)
            self._watched.mouse_drag_callbacks.insert(0, self._record_modifiers)

    def _labels_chosen(self, *_) -> None:
        """A grid copy chosen in the combobox means its labels layer; then the copies follow the choice."""
        chosen = self.labels_layer.value
        source = copy_source(chosen) if chosen is not None else None
        if source is not None and source in self._viewer.layers:
            self.labels_layer.value = self._viewer.layers[source]  # back in here, with the source
            return
        self.grid_labels.schedule()  # after the event: the choice may follow a layer's removal

    def _after_event(self, function) -> None:
        """`function` from Qt's event loop, unless this widget is gone by then."""
        from qtpy.QtCore import QTimer

        timer = QTimer(self.native)  # a child: deleted with the widget, never firing after it
        timer.setSingleShot(True)
        timer.timeout.connect(function)
        timer.timeout.connect(timer.deleteLater)
        timer.start(0)

    def _on_every_image_toggled(self, on: bool) -> None:
        self.grid_labels.enabled = on
        self.grid_labels.update()

    def _record_modifiers(self, layer, event) -> None:
        self._shift_held = "Shift" in event.modifiers

    def _on_points_changed(self, event) -> None:
        if self._snapping or not self.snap.value or self._shift_held or str(getattr(event, "action", "")) != "added":
            return
        layer, reference = self.labels_layer.value, self.reference.value
        indices = sorted(getattr(event, "data_indices", ()) or ())
        if reference is None or layer is None or not indices:
            return
        indices = [i if i >= 0 else len(layer.data) + i for i in indices]
        data = np.array(layer.data, dtype=np.float64)
        for i in indices:
            point = self._snap_one(layer, reference, data[i])
            if point is not None:
                data[i] = point
        self._snapping = True
        try:
            layer.data = data
        finally:
            self._snapping = False

    def _snap_one(self, layer, reference, point: np.ndarray) -> np.ndarray | None:
        """`point` (in the labels layer's coordinates) moved to the reference image's local maximum."""
        return snapped(layer, reference, point, self._current_frame())

    # ---- CSV --------------------------------------------------------------------------------------------
    def load_labels(self, path: str | Path | None = None) -> None:
        """Read labels from a CSV (napari points, 'y,x' or 'frame,y,x') into a new labels layer."""
        path = path or _file_dialog(self.native, "Load spot labels", save=False)
        if not path:
            return
        try:
            points = read_points_csv(path)
        except (ValueError, OSError) as err:  # OSError: unreadable, a folder...
            show_error(f"Spots: {err}")
            return
        layer = self._viewer.add_points(points, ndim=points.shape[1], name=Path(path).stem,
                                        metadata={"source_path": str(Path(path).resolve())},
                                        **placement(self.reference.value, points.shape[1]), **LABEL_STYLE)
        self.labels_layer.value = layer
        self.grid_labels.update()
        show_info(f"Spots: {len(points)} labels read from {path}")

    def save_labels(self, path: str | Path | None = None) -> None:
        """Write the chosen labels layer in napari's points CSV format."""
        layer = self.labels_layer.value
        if layer is None:
            show_error("Spots: choose or create a labels layer first")
            return
        path = path or _file_dialog(self.native, "Save spot labels", save=True)
        if not path:
            return
        try:
            write_points_csv(path, layer.data)
        except OSError as err:  # a read-only folder, a full disk...
            show_error(f"Spots: labels not saved: {err}")
            return
        show_info(f"Spots: {len(layer.data)} labels written to {path}")

    # ---- suggestions ------------------------------------------------------------------------------------
    def _current_frame(self, layer=None) -> int:
        """The frame shown, in `layer`'s data coordinates (the reference image's by default)."""
        layer = layer or self.reference.value
        if layer is None or layer.ndim < 3:
            return int(self._viewer.dims.current_step[0]) if self._viewer.dims.ndim >= 3 else 0
        return int(round(layer.world_to_data(self._viewer.dims.point)[-3]))

    def suggest(self) -> None:
        """Fill the 'suggested spots' layer from `suggest_spots` on the reference image's current frame."""
        reference = self.reference.value
        if reference is None:
            show_error("Spots: choose an image to suggest spots on")
            return
        frame = self._current_frame(reference) if reference.ndim == 3 else None
        if frame is not None and not 0 <= frame < reference.data.shape[0]:
            show_error(f"Spots: the frame shown ({frame}) is outside '{reference.name}' ({reference.data.shape[0]} "
                       "frames); move the time slider onto it")
            return
        plane = reference.data[frame] if frame is not None else reference.data
        sigma, threshold = self.suggest_sigma.value, self.suggest_threshold.value  # read here, not in the worker

        def job():
            yield 0, 1
            return suggest_spots(as_array(plane, np.float64), sigma, threshold)

        def show(found: np.ndarray) -> None:
            data = np.column_stack([np.full(len(found), frame), found]) if frame is not None else found
            if self._suggestions in self._viewer.layers:  # the last ones; a user's own layer of the name stays
                self._viewer.layers.remove(self._suggestions)
            self._suggestions = self._viewer.add_points(
                data.reshape(-1, reference.ndim), ndim=reference.ndim, name=SUGGESTIONS_NAME,
                **placement(reference, reference.ndim), **SUGGESTION_STYLE)
            where = f", frame {frame}" if frame is not None else ""
            show_info(f"Spots: {len(found)} suggestions on {reference.name}{where}")

        start(job, on_yield=lambda _: None, on_return=show, on_finish=lambda: None, context="Suggest spots",
              owner=self.native)

    def accept_suggestions(self) -> None:
        """Add the suggestions that are not already labelled (within 1 px) to the labels layer."""
        suggestions = self._suggestions
        if suggestions not in self._viewer.layers:
            show_error("Spots: there are no suggestions; press 'Suggest spots' first")
            return
        layer = self.labels_layer.value
        # the combo picks the suggestions when they are alone (compared by name: napari hands plugins proxies),
        # or a sample's hidden true spots as the first points layer: neither takes the suggestions
        if layer is None or layer.name == suggestions.name or layer.metadata.get("ground_truth"):
            layer = self.new_labels()
        new = to_image_coordinates(suggestions, layer) if len(suggestions.data) else np.empty((0, layer.ndim))
        if new.shape[1] != layer.ndim:
            show_error(f"Spots: suggestions have {new.shape[1]} coordinates, labels layer '{layer.name}' {layer.ndim}")
            return
        old = np.asarray(layer.data, dtype=np.float64).reshape(-1, layer.ndim)
        new = new_points(old, new, min_distance=1.0)
        self._snapping = True  # suggestions are already maxima
        try:
            layer.data = np.concatenate([old, new])
        finally:
            self._snapping = False
        self._viewer.layers.remove(suggestions)
        show_info(f"Spots: {len(new)} suggestions added to '{layer.name}'")

    # ---- measuring --------------------------------------------------------------------------------------
    def measure(self) -> None:
        """Measure the labels on every chosen image layer in a worker; show table, summary and plots."""
        try:
            images, points, frame = self._measure_inputs()
        except ValueError as err:
            show_error(f"Spots: {err}")
            return
        camera = CameraCalibration(self.baseline.value, self.electrons.value, 2.0 if self.emccd.value else 1.0,
                                   self.saturation.value or None, self.read_noise.value)
        options = {"pixel_size_nm": self.pixel_size.value or None, "radius": self.radius.value, "camera": camera,
                   "frame": frame, "suggest_sigma": self.suggest_sigma.value,
                   "suggest_threshold": self.suggest_threshold.value}
        self.measure_button.enabled, self.cancel_button.enabled = False, True
        self._cancelled = False
        self._worker = start(partial(iter_measure_across, **options), images, points, on_yield=self._on_progress,
                             on_return=self._show_report, on_finish=self._on_finish, context="Measure spots",
                             owner=self.native)

    def _measure_inputs(self) -> tuple[dict, np.ndarray, int | None]:
        layer = self.labels_layer.value
        if layer is None:
            raise ValueError("choose or create a labels layer")
        if len(layer.data) == 0:
            raise ValueError(f"labels layer '{layer.name}' is empty: click on spots to label them, or accept "
                             "suggestions")
        names = list(self.images.value)
        if not names:
            raise ValueError("choose at least one image layer to measure on")
        missing = [name for name in names if name not in self._viewer.layers]
        if missing:
            raise ValueError(f"image layer(s) {missing} are gone; choose the images again")
        layers = [self._viewer.layers[name] for name in names]
        # one set of pixel positions serves every image: each must lie where the first does
        # (images of another shape are refused by the measurement itself, with their shapes)
        # (in time too: a movie placed later would be measured on other frames)
        moved = [other.name for other in layers[1:] if other.data.shape == layers[0].data.shape and not (
            np.allclose(other.scale, layers[0].scale) and np.allclose(other.translate, layers[0].translate))]
        if moved:
            raise ValueError(f"image layer(s) {moved} are placed differently from '{layers[0].name}' (scale or "
                             "translate, in space or time): the labels would fall on other pixels or frames; "
                             "measure them separately")
        points = to_image_coordinates(layer, layers[0])
        frame = None
        if points.shape[1] != layers[0].ndim:
            frame = self._current_frame(layers[0] if layers[0].ndim == 3 else None)
            show_warning(f"Spots: labels have {points.shape[1]} coordinates, '{layers[0].name}' has "
                         f"{layers[0].ndim} dimensions: measuring frame {frame}")
        return {lay.name: lay.data for lay in layers}, points, frame

    def _on_progress(self, value: tuple[int, int, str]) -> None:
        done, total, image = value
        self.progress.max, self.progress.value = total, done
        # the bar's own text names the image being fitted (a longer label would reflow the whole form)
        self.progress.native.setFormat(f"{image}: %v / %m" if image else "%v / %m fitted")

    def _show_report(self, report: SpotReport) -> None:
        if self._cancelled:  # finished as Cancel was pressed: "nothing was shown" stays true
            return
        self.report = report
        self.note.value = report.note
        docks = getattr(self._viewer.window, "dock_widgets", {})
        if self._results_dock is None or RESULTS_NAME not in docks:  # first time, or the user closed it
            self.results = SpotResults(self._viewer)
            # wide tables and plots get the viewer's full width, below the canvas
            self._results_dock = self._viewer.window.add_dock_widget(self.results.native, name=RESULTS_NAME,
                                                                     area="bottom")
        self.results.show(report)

    def cancel(self) -> None:
        """Stop measuring (the worker ends at its next progress step: within a frame's or 200 spots' fits)."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()
            show_info("Spots: measuring cancelled; nothing was shown")

    def _on_finish(self) -> None:
        self.measure_button.enabled, self.cancel_button.enabled = True, False
        self._worker = None


def _file_dialog(parent, title: str, save: bool) -> str:
    from qtpy.QtWidgets import QFileDialog

    ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
    return ask(parent, title, "", "CSV (*.csv)")[0]
