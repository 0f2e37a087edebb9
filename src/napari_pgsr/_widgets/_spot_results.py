"""Results panel of the Spots widget: per-image summary, sortable spot table (a click centres the viewer on
the spot), FWHM / SNR histograms and average profiles, and export to CSV and PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QFileDialog, QPushButton, QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout,
                            QWidget)

from ..analysis.across import SpotReport
from ..analysis.plots import plot_report
from ..analysis.points_csv import write_table_atomically
from ..atomic import atomic_path

SUMMARY_COLUMNS = ["image", "spots", "fitted", "flagged", "median_fwhm_nm", "median_fwhm_px", "median_snr",
                   "median_sbr", "median_precision_nm", "usable_on_all", "median_fwhm_nm_on_all",
                   "median_snr_on_all", "median_photons_on_all", "suggested", "suggested_f1",
                   "suggested_precision", "suggested_recall"]


def fill_table(table: QTableWidget, frame: pd.DataFrame) -> None:
    """Show `frame` in `table`; numbers are stored as numbers so that sorting by a column is numeric."""
    table.setSortingEnabled(False)
    table.clear()
    table.setRowCount(len(frame))
    table.setColumnCount(len(frame.columns))
    table.setHorizontalHeaderLabels([str(c) for c in frame.columns])
    for column, name in enumerate(frame.columns):
        values = frame[name].to_numpy()
        numeric = pd.api.types.is_numeric_dtype(frame[name])
        for row, value in enumerate(values):
            item = QTableWidgetItem()
            if numeric:
                number = float(value)
                item.setData(Qt.ItemDataRole.DisplayRole, round(number, 4) if np.isfinite(number) else number)
            else:
                item.setText(str(value))
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            table.setItem(row, column, item)
    table.setSortingEnabled(True)
    table.resizeColumnsToContents()


def viewer_camera(viewer):
    """The viewer's camera (`viewer.scene.camera` from napari 0.9 on, `viewer.camera` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


class SpotResults:
    """Tabs 'Summary', 'Spots', 'Plots' and an Export button; empty until `show` is called."""

    def __init__(self, viewer):
        self._viewer, self.report = viewer, None
        self.native = QWidget()
        layout = QVBoxLayout(self.native)
        layout.setContentsMargins(0, 0, 0, 0)
        self.tabs = QTabWidget()
        self.summary_table, self.spot_table = QTableWidget(), QTableWidget()
        self.figure = Figure(figsize=(6, 2.4))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.tabs.addTab(self.summary_table, "Summary")
        self.tabs.addTab(self.spot_table, "Spots")
        self.tabs.addTab(self.canvas, "Plots")
        self.export_button = QPushButton("Export table, summary and plots…")
        self.export_button.setEnabled(False)
        layout.addWidget(self.tabs)
        layout.addWidget(self.export_button)
        self.spot_table.cellClicked.connect(self.go_to_spot)
        self.export_button.clicked.connect(lambda: self.export())

    def show(self, report: SpotReport) -> None:
        """Fill the tables and draw the plots."""
        self.report = report
        fill_table(self.summary_table, report.summary.reindex(columns=SUMMARY_COLUMNS))
        fill_table(self.spot_table, report.table)
        plot_report(report, self.figure, dark=True)
        self.canvas.draw_idle()
        self.export_button.setEnabled(True)

    def go_to_spot(self, row: int, _column: int = 0) -> None:
        """Centre the view on the spot of the clicked row (and go to its frame)."""
        header = [self.spot_table.horizontalHeaderItem(c).text() for c in range(self.spot_table.columnCount())]
        value = {name: self.spot_table.item(row, c).data(Qt.ItemDataRole.DisplayRole) for c, name in enumerate(header)}
        layer = self._viewer.layers[value["image"]] if value.get("image") in self._viewer.layers else None
        if layer is None or not np.isfinite(float(value["y"])):
            return
        frame = int(value["frame"]) if layer.ndim == 3 and int(value["frame"]) >= 0 else 0
        position = [float(frame), float(value["y"]), float(value["x"])][-layer.ndim:]
        world = np.asarray(layer.data_to_world(position), dtype=float)  # the layer's own scale and translate
        if layer.ndim == 3 and int(value["frame"]) >= 0:  # (the layer's axes are the viewer's last ones)
            self._viewer.dims.set_point(self._viewer.dims.ndim - 3, world[0])
        camera = viewer_camera(self._viewer)
        camera.center = (camera.center[0], *world[-2:])

    def _files_read(self) -> set[Path]:
        """The files the viewer's layers were read from (napari's readers, or the Spots widget's *Load*)."""
        files = set()
        for layer in self._viewer.layers:
            for name in (layer.source.path, layer.metadata.get("source_path")):
                if name:
                    files.add(Path(name).resolve())
        return files

    def export(self, path: str | Path | None = None) -> list[Path]:
        """Write the spot table to `path` (CSV), the summary to <stem>_summary.csv and the plots to
        <stem>_plots.png beside it."""
        if self.report is None:
            show_error("Spots: measure first, then export")
            return []
        if path is None:
            path = QFileDialog.getSaveFileName(self.native, "Export spot table", "spots.csv", "CSV (*.csv)")[0]
            if not path:
                return []
        path = Path(path)
        summary, plots = path.with_name(f"{path.stem}_summary.csv"), path.with_name(f"{path.stem}_plots.png")
        read_from = self._files_read()
        for target in (path, summary, plots):
            if target.resolve() in read_from:  # the labels CSV, say: the table would replace the labels
                show_error(f"Spots: {target} is a file a layer was read from; export under another name")
                return []
        try:
            write_table_atomically(self.report.table, path)
            write_table_atomically(self.report.summary, summary)
            with atomic_path(plots) as tmp:
                plot_report(self.report).savefig(tmp, dpi=120, format="png")
        except OSError as err:  # a read-only folder, a full disk...
            show_error(f"Spots: export failed: {err}")
            return []
        show_info(f"Spots: wrote {path.name}, {summary.name} and {plots.name} to {path.parent}")
        return [path, summary, plots]
