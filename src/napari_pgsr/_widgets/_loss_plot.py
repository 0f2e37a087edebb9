"""A small live loss plot (matplotlib's Qt canvas) that redraws at most a few times per second."""

from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

COLOURS = {"training": "#6fa8dc", "validation": "#f6b26b"}
BACKGROUND = "#262930"  # napari's dark theme


class LossPlot:
    """Training and validation loss against step, on a log scale, in napari's dark style.

    The axes, lines and legend are built once and only the lines' data change: rebuilding them on every
    redraw took the GUI thread 0.15-0.2 s per draw on a slow 2-core CPU that was training beside it.
    """

    def __init__(self, min_interval_s: float = 0.3):
        # fixed margins: constrained layout re-solves the layout on every draw, too slow for the GUI thread
        self.figure = Figure(figsize=(4, 2.4), facecolor=BACKGROUND)
        self.figure.subplots_adjust(left=0.17, right=0.97, bottom=0.2, top=0.95)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.axes = axes = self.figure.add_subplot(facecolor=BACKGROUND)
        self.lines = {series: axes.plot([], [], color=colour, label=series, linewidth=1, markersize=3,
                                        marker="o" if series == "validation" else None)[0]
                      for series, colour in COLOURS.items()}
        axes.set_yscale("log")
        # plain numbers (0.02, 0.05, 0.1): the default 10^x labels are laid out by mathtext, whose first use
        # held the GUI thread for 0.3 s on a slow 2-core CPU
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.legend(fontsize=7, facecolor=BACKGROUND, labelcolor="white", edgecolor="none", loc="upper right")
        axes.set_xlabel("step", color="white", fontsize=8)
        axes.set_ylabel("loss", color="white", fontsize=8)
        axes.tick_params(colors="white", labelsize=7)
        self.points: dict[str, tuple[list[int], list[float]]] = {}
        self.min_interval_s, self._interval_s, self._last_draw = min_interval_s, min_interval_s, 0.0
        # draw once now, when docking: the first draw loads fonts and glyphs, which would otherwise hold the
        # GUI thread at the first loss of a training
        self.clear()
        self.canvas.draw()

    def clear(self) -> None:
        """Forget all points (and go back to the log scale)."""
        self.points = {series: ([], []) for series in COLOURS}
        if self.axes.get_yscale() != "log":
            self.axes.set_yscale("log")
            self.axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            self.axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            self.axes.yaxis.set_minor_formatter(NullFormatter())
        self.redraw()

    def show_history(self, history: dict) -> None:
        """The losses a model file recorded (a resumed run continues its curves)."""
        losses = list(history.get("loss", []))
        validations = [v for v in history.get("validation", []) if "loss" in v and "step" in v]
        self.points = {"training": (list(range(1, len(losses) + 1)), losses),
                       "validation": ([int(v["step"]) for v in validations], [float(v["loss"]) for v in validations])}
        self.redraw()

    def add(self, series: str, step: int, value: float) -> None:
        """Add one point; redraw unless the last redraw was very recent."""
        xs, ys = self.points.setdefault(series, ([], []))
        xs.append(step)
        ys.append(value)
        if time.perf_counter() - self._last_draw >= self._interval_s:
            self.redraw()

    def redraw(self) -> None:
        """Draw every series now (on a slow machine the next redraw waits longer: the GUI thread spends at
        most about a fifth of its time on this plot)."""
        started = time.perf_counter()
        for series, line in self.lines.items():
            line.set_data(*self.points.get(series, ([], [])))
        if self.axes.get_yscale() == "log" and any(y <= 0 for _, ys in self.points.values() for y in ys):
            # a WGAN's adversarial loss goes below 0, which a log scale would leave out
            self.axes.set_yscale("symlog", linthresh=1e-3)
            self.axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        if any(xs for xs, _ in self.points.values()):
            self.axes.relim()
            self.axes.autoscale_view()
        self.canvas.draw()
        self._last_draw = time.perf_counter()
        self._interval_s = max(self.min_interval_s, 5 * (self._last_draw - started))
