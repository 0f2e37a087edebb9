"""napari's grid view for side-by-side comparison: the grid shape that shows the images largest."""

from __future__ import annotations

from collections.abc import Sequence


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
    while the grid is on and nobody else has changed the shape; then stop. The view is reset only when the
    shape changes, so a resize keeps the user's zoom."""

    def __init__(self, viewer, image_size: Sequence[float]):
        self._viewer, self._image_size, self._shape, self._stopped = viewer, tuple(image_size), None, False
        self._canvas = getattr(viewer, "canvas", None)  # napari < 0.6: no canvas size to follow
        self.fit()
        if self._canvas is not None:
            self._canvas.events.size.connect(self.fit)

    def fit(self, *_) -> None:
        grid = canvas_grid(self._viewer)
        if self._stopped:
            return
        if self._shape is not None and (tuple(grid.shape) != self._shape or not grid.enabled):
            self.stop()
            return
        size = self._canvas.size if self._canvas is not None else (1, 1e9)  # unknown: one row
        shape = best_grid_shape(occupied_cells(self._viewer.layers, grid.stride), size, self._image_size)
        if shape != self._shape:
            self._shape = grid.shape = shape
            self._viewer.reset_view()

    def stop(self) -> None:
        """Leave the grid shape alone from now on (again: nothing)."""
        if not self._stopped and self._canvas is not None:
            self._canvas.events.size.disconnect(self.fit)
        self._stopped = True


def occupied_cells(layers, stride: int) -> int:
    """Grid cells napari fills: groups of `stride` consecutive layers (counted from the bottom; from the
    top for a negative stride) with a visible layer; at least 1."""
    count = len(layers)
    groups = {(i if stride > 0 else count - 1 - i) // abs(stride) for i, layer in enumerate(layers) if layer.visible}
    return max(len(groups), 1)
