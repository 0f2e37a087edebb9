"""Spot labels as CSV: napari's points format (`index, axis-0, axis-1, ...`) and plain `y, x` tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path

PLAIN_COLUMNS = (("frame", "y", "x"), ("t", "y", "x"), ("y", "x"))
IMAGEJ_STACK_COLUMNS = ("slice", "ch")  # ImageJ's Measure of a point selection on a stack adds these


def read_points_csv(path: str | Path) -> np.ndarray:
    """(N, D) coordinates from napari's points CSV (`axis-0`, `axis-1`, ...), a CSV with `y, x` (optionally
    `frame` or `t` first) columns, or a headerless CSV of 2 or 3 numeric columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no points file at {path}")
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty: expected spot labels (napari points, 'y,x' or 'frame,y,x')") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV table ({err})") from None
    names = [str(c).strip().lower() for c in table.columns]
    table.columns = names
    axes = sorted((c for c in names if c.startswith("axis-")), key=lambda c: int(c.split("-")[1]))
    if axes:
        columns = axes
    elif {"x", "y"} <= set(names) and set(IMAGEJ_STACK_COLUMNS) & set(names):
        # read as y, x alone these labels would all land on one frame, at positions perhaps in micrometres
        raise ValueError(f"{path} looks like an ImageJ/Fiji Measure table (columns {names}): its Slice/Frame "
                         "count from 1 and its X, Y are in calibrated units (um) when the image has a scale. "
                         "Expected 'frame, y, x' in pixels with frames from 0, or napari points (label in napari: "
                         "a Points layer, File > Save Selected Layers... as .csv)")
    else:
        columns = next((list(c) for c in PLAIN_COLUMNS if set(c) <= set(names)), None)
        if columns is None:
            try:  # no header: the first row is data
                values = pd.read_csv(path, header=None).to_numpy(dtype=np.float64)
            except ValueError:
                values = None
            if values is None or values.shape[1] not in (2, 3):
                raise ValueError(f"{path}: expected napari points columns (axis-0, axis-1, ...), 'y,x' columns "
                                 f"or two or three numeric columns; found columns {names}")
            return values
    try:
        return table[columns].to_numpy(dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: columns {columns} must hold numbers ({err})") from None


def write_points_csv(path: str | Path, points: np.ndarray) -> Path:
    """Write points in napari's CSV format (atomically: a temporary file renamed into place)."""
    path = Path(path)
    points = np.asarray(points, dtype=np.float64)
    # (an empty layer of a movie is (0, 3): its columns keep the frame axis, so it reads back as a movie's)
    if points.ndim != 2:
        points = points.reshape(len(points), -1) if len(points) else np.empty((0, 2))
    table = pd.DataFrame(points, columns=[f"axis-{i}" for i in range(points.shape[1])])
    table.insert(0, "index", np.arange(len(points)))
    return write_table_atomically(table, path)


def write_table_atomically(table: pd.DataFrame, path: str | Path) -> Path:
    """`table.to_csv(path)` through a temporary file renamed into place, so a crash leaves no half file."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)
