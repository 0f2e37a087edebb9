"""A small live loss plot (matplotlib's Qt canvas) that redraws at most a few times per second."""

from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


class LossPlot:
    """Training and validation loss against step, on a log scale, in napari's dark style."""

    def __init__(self, min_interval_s: float = 0.3):
        # fixed margins: constrained layout re-solves the layout on every draw, too slow for the GUI thread
        self.figure = Figure(figsize=(4, 2.4), facecolor="#262930")
        self.figure.subplots_adjust(left=0.17, right=0.97, bottom=0.2, top=0.95)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.axes = self.figure.add_subplot()
        self.points: dict[str, tuple[list[int], list[float]]] = {}
        self.min_interval_s, self._last_draw = min_interval_s, 0.0
        self.clear()

    def clear(self) -> None:
        """Forget all points."""
        self.points = {"training": ([], []), "validation": ([], [])}
        self.redraw()

    def add(self, series: str, step: int, value: float) -> None:
        """Add one point; redraw unless the last redraw was very recent."""
        xs, ys = self.points.setdefault(series, ([], []))
        xs.append(step)
        ys.append(value)
        if time.perf_counter() - self._last_draw >= self.min_interval_s:
            self.redraw()

    def redraw(self) -> None:
        """Draw every series now."""
        axes = self.axes
        axes.clear()
        axes.set_facecolor("#262930")
        for series, colour in (("training", "#6fa8dc"), ("validation", "#f6b26b")):
            xs, ys = self.points.get(series, ([], []))
            if xs:
                axes.plot(xs, ys, color=colour, label=series, marker="o" if series == "validation" else None,
                          markersize=3, linewidth=1)
        if any(ys for _, ys in self.points.values()):
            axes.set_yscale("log")
            axes.legend(fontsize=7, facecolor="#262930", labelcolor="white", edgecolor="none")
        axes.set_xlabel("step", color="white", fontsize=8)
        axes.set_ylabel("loss", color="white", fontsize=8)
        axes.tick_params(colors="white", labelsize=7)
        self.canvas.draw_idle()
        self._last_draw = time.perf_counter()
