"""'Restore' dock widget: apply a trained model to a movie layer, lazily (frames restored when shown) or
streamed to a file in a worker; and a one-click side-by-side view with linked contrast."""

from __future__ import annotations

import threading
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, SpinBox,
                              create_widget)
from napari.utils.notifications import show_error, show_info

from ..inference import PRECISIONS
from ..io import display_range, read_movie_or_frame
from ._grid_view import FitGridToCanvas, canvas_grid
from ._restore_jobs import CancelledRun, LazyRestoration, describe_job, export_job, lazy_restore_job, restore_job
from ._workers import progress_job, start


def describe_model(model) -> str:
    """Architecture, training data, date and last validation metrics, for the widget."""
    meta = model.metadata
    validation = (meta.get("history", {}).get("validation") or [{}])[-1]
    metrics = (f"validation PSNR {validation['psnr']:.2f} dB, SSIM {validation['ssim']:.3f}"
               if "psnr" in validation else "no validation")
    return f"{model.describe()}\nsaved {meta.get('saved', '?')}\n{metrics}"


class ApplyWidget(Container):
    """Pick a model file and a movie layer; restore lazily or to a file; compare side by side."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer, self._worker, self._cancel = viewer, None, threading.Event()
        self._follow = None  # (high layer, the callback that makes low's contrast follow it)
        self.model_file = FileEdit(label="Model file", mode="r", filter="*.pgsr *.zip")
        self.about = Label(label="Model", value="-")
        self.about.native.setWordWrap(True)  # long descriptions wrap instead of widening the dock
        self.movie = create_widget(label="Movie", annotation="napari.layers.Image")
        self.frames = ComboBox(label="Frames", choices=["all", "low"], value="all",
                               tooltip="low: only the low-exposure frames of an alternating movie")
        self.output = FileEdit(label="Save to", mode="w", filter="*.tif *.ome.tif *.zarr",
                               tooltip="empty: restore frames lazily as they are shown; .zarr: OME-Zarr, which "
                                       "keeps what was restored when cancelled")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.precision = ComboBox(label="Precision", choices=list(PRECISIONS), value="auto",
                                  tooltip="auto: bf16 on GPUs, fp32 on CPUs; bf16 is several times faster on CPUs "
                                          "with AMX (about three significant digits)")
        self.batch = SpinBox(label="Tiles per batch", value=0, min=0, max=256,
                             tooltip="auto: 1 on CPUs, 4 on GPUs")
        self.batch.native.setSpecialValueText("auto")
        self.run_button = PushButton(text="Restore")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Frames", min=0, max=1, value=0)
        self.compare_button = PushButton(text="Side by side: low | high | restored")
        self.export_to = FileEdit(label="bioimage.io package", mode="w", filter="*.zip",
                                  tooltip="export the model for the BioImage Model Zoo's tools (a .zip)")
        self.export_authors = LineEdit(label="Authors", tooltip="the package's authors, comma-separated (the zoo "
                                       "shows them); the test input comes from the movie's first low frames")
        self.export_button = PushButton(text="Export model for bioimage.io")
        self.extend([self.model_file, self.about, self.movie, self.frames, self.output, self.device, self.precision,
                     self.batch, self.run_button, self.cancel_button, self.progress, self.compare_button,
                     self.export_to, self.export_authors, self.export_button])
        self.model_file.changed.connect(self._show_model)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.compare_button.changed.connect(self.side_by_side)
        self.export_button.changed.connect(self.export)
        self.restored_layer = self._fit_grid = None

    def _model_path(self) -> Path:
        """The chosen model file, checked to be there (the workers load it: seconds for a large model)."""
        path = Path(str(self.model_file.value))
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}" if str(path) not in ("", ".") else
                                    "choose a model file")
        return path

    def _show_model(self, *_) -> None:
        """Describe the chosen model file, loaded in a worker."""
        self.about.value = "-"
        path = Path(str(self.model_file.value))
        if not path.is_file():  # a path being typed (a folder, a file not there yet): no error until Restore
            return

        def show(model) -> None:
            if Path(str(self.model_file.value)) == path:  # (not another file chosen since)
                self.about.value = describe_model(model)

        start(describe_job, path, on_yield=lambda _: None, on_return=show, on_finish=lambda: None,
              context="Restore", owner=self.native)

    def _check(self):
        layer = self.movie.value
        if layer is None:
            raise ValueError("choose a movie layer")
        if layer.data.ndim not in (2, 3) or layer.rgb:
            raise ValueError(f"layer '{layer.name}' has shape {tuple(layer.data.shape)}; expected T x Y x X")
        return layer, self._model_path()

    def run(self) -> None:
        """Restore the chosen layer: lazily, or streamed to the chosen file, in a worker."""
        try:
            layer, model_path = self._check()
        except (ValueError, FileNotFoundError) as err:
            show_error(f"Restore: {err}")
            return
        data = layer.data if layer.data.ndim == 3 else layer.data[None]
        output = str(self.output.value)
        lazy = output in ("", ".")
        if not lazy and Path(output).exists():  # (the file dialog asks about replacing a file; a typed name not)
            show_error(f"Restore: {output} exists; choose another file name (this widget does not replace files)")
            return
        self._cancel.clear()
        self.run_button.enabled, self.cancel_button.enabled = False, True
        context = f"Restore ({layer.name})"
        if lazy:
            self._worker = start(lazy_restore_job, model_path, data, self.frames.value == "low", layer.name,
                                 self.device.value, self.batch.value or None, self.precision.value, self._cancel,
                                 on_yield=self._on_progress, on_return=lambda result: self._finished(layer, result),
                                 on_finish=self._on_finish, context=context, owner=self.native,
                                 on_abort=self._cancel.set)
            return
        pixel = float(layer.scale[-1]) if layer.metadata.get("pixel_size_um") else None
        self._worker = start(progress_job, restore_job, model_path, data, layer.metadata.get("source_path"), pixel,
                             self.frames.value, Path(output), self.device.value, self.batch.value or None,
                             self.precision.value, self._cancel, on_yield=self._on_progress,
                             on_return=lambda path: self._finished(layer, path, model_path),
                             on_finish=self._on_finish, context=context, computes=True, owner=self.native,
                             on_abort=self._cancel.set)

    def _finished(self, layer, result, model_path: Path | None = None) -> None:
        if isinstance(result, CancelledRun):
            show_info(f"Restore: {result.message}")
        elif isinstance(result, LazyRestoration):
            if layer not in self._viewer.layers:
                show_info(f"Restore: '{layer.name}' was removed while its restoration was being prepared")
                return
            self._add_result(layer, result.data, f"{layer.name} restored", result.model_path,
                             contrast_limits=result.contrast_limits)
        else:
            self._open_result(layer, result, model_path)

    def _open_result(self, layer, path: Path, model_path: Path) -> None:
        if layer not in self._viewer.layers:  # removed while it was restored: the file is written all the same
            show_info(f"Restore: written to {path}; not opened, as '{layer.name}' was removed meanwhile")
            return
        movie = read_movie_or_frame(path)  # (a single frame restored is a file of one frame)
        self._add_result(layer, movie.data, path.stem.removesuffix(".ome"), model_path, {"source_path": str(path)})
        show_info(f"Restore: {movie.shape[0]} frames written to {path}")

    def _add_result(self, layer, data, name: str, model_path: Path, metadata: dict | None = None,
                    contrast_limits: tuple[float, float] | None = None) -> None:
        # placed over the input (a frame axis added to a single frame starts at 0)
        lead = data.ndim - layer.data.ndim
        scale, translate = ((1.0,) * lead + tuple(layer.scale), (0.0,) * lead + tuple(layer.translate))
        if name in self._viewer.layers and "model" in self._viewer.layers[name].metadata:
            self._viewer.layers.remove(name)  # an earlier restoration; any other layer of the name stays
        self.restored_layer = self._viewer.add_image(
            data, name=name, scale=scale, translate=translate, colormap="gray",
            contrast_limits=contrast_limits or display_range(data, 1),
            metadata={**(metadata or {}), "model": str(model_path)})  # the file this run used

    def cancel(self) -> None:
        """Stop after the current frames: a TIFF is not written, an OME-Zarr store keeps what was restored."""
        self._cancel.set()

    def _on_progress(self, value: tuple[int, int]) -> None:
        self.progress.max, self.progress.value = value[1], value[0]

    def _on_finish(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self._worker = None

    def export(self) -> None:
        """Write the model as a bioimage.io package in a worker and test it with bioimageio.core."""
        output = Path(str(self.export_to.value))
        try:
            model_path = self._model_path()  # (loaded in the worker)
            if output.suffix.lower() != ".zip":
                raise ValueError(f"the bioimage.io package is a zip: name it *.zip, got '{output.name}'")
            if output.exists():
                raise ValueError(f"{output} exists; choose another name")
        except (ValueError, FileNotFoundError) as err:
            show_error(f"Export: {err}")
            return
        authors = [author.strip() for author in self.export_authors.value.split(",") if author.strip()]
        layer = self.movie.value  # its first low frames become the package's test input (else a simulated movie's)
        # (Frames 'all' still takes an alternating movie's low frames: its high ones are no test input)
        movie = () if layer is None else (layer.data, True if self.frames.value == "low" else None, layer.name)
        self.export_button.enabled = False
        start(export_job, model_path, output, authors, *movie, on_yield=self._export_step,
              on_return=self._exported, on_finish=self._export_finished, context="Export", owner=self.native)

    def _export_step(self, step: str) -> None:  # the job's stage on the button, while it is off
        self.export_button.text = f"Export: {step}..."

    def _export_finished(self) -> None:
        self.export_button.text, self.export_button.enabled = "Export model for bioimage.io", True

    def _exported(self, result) -> None:
        path, passed, summary = result
        if passed:
            show_info(f"Export: {path} written; bioimageio.core's test passed")
        else:
            show_error(f"Export: {path} written, but bioimageio.core's test failed:\n{summary[:2000]}")

    def side_by_side(self) -> None:
        """Grid view of '<name> low', '<name> high' and the restored layer. High and restored share one
        contrast range (linked); low follows it divided by the exposure ratio, so all three look alike."""
        from napari.experimental import link_layers

        layers = self._viewer.layers
        restored = self.restored_layer if self.restored_layer in layers else None
        low = self.movie.value
        base = low.name[:-4] if low is not None and low.name.endswith(" low") else None
        high = layers[f"{base} high"] if base and f"{base} high" in layers else None
        shown = [layer for layer in (low, high, restored) if layer is not None]
        if len(shown) < 2:
            show_error("Restore: restore a movie first (and split it with Exposure pairs for the high layer)")
            return
        grid = canvas_grid(self._viewer)
        grid.enabled = False  # off and on again: whatever follows the grid (the Spots widget's labels) redoes it
        for layer in layers:
            layer.visible = layer in shown
        for layer in shown:  # grid order, left to right
            layers.move(layers.index(layer), len(layers))
        same_units = [layer for layer in (high, restored) if layer is not None]
        if len(same_units) == 2:
            restored.contrast_limits = high.contrast_limits
            link_layers(same_units, ("contrast_limits",))
        if high is not None and low is not None:
            ratio, baseline = low.metadata.get("ratio"), low.metadata.get("baseline", 0.0)
            if ratio:
                def follow(*_):
                    low.contrast_limits = tuple(baseline + (value - baseline) / ratio for value in high.contrast_limits)

                follow()
                if self._follow is not None:  # one link at a time, however often this is pressed
                    self._follow[0].events.contrast_limits.disconnect(self._follow[1])
                high.events.contrast_limits.connect(follow)
                self._follow = (high, follow)
        grid.enabled = True
        if self._fit_grid is not None:
            self._fit_grid.stop()
        extent = np.asarray(shown[-1].extent.world, dtype=float)[:, -2:]
        self._fit_grid = FitGridToCanvas(self._viewer, extent[1] - extent[0])
