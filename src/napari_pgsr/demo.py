"""The README's main job on the built-in sample data: simulate, open, split into pairs, show in napari.

Later issues extend it with training, restoration and spot measurement.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .io import read_movie, write_movie
from .pairs import split_alternating
from .simulate import KINDS, simulate_movie, write_spots_csv


def say(message: str) -> None:
    """Progress line for the terminal."""
    print(f"[demo] {message}", flush=True)


def prepare_sample(kind: str, n_frames: int, size: int, folder: Path) -> Path:
    """Simulate the sample movie once and keep it (never overwritten) with its true spots."""
    path = folder / f"{kind}_sample.tif"
    if path.exists():
        say(f"using the sample movie already in {path}")
        return path
    start = time.perf_counter()
    sim = simulate_movie(kind, n_frames, (size, size))
    write_movie(path, sim.movie, pixel_size_um=sim.pixel_size_um)
    write_spots_csv(folder / f"{kind}_sample_spots.csv", sim.spots)
    say(f"simulated {kind} movie: {n_frames} frames of {size}x{size} px, {sim.pixel_size_um * 1000:.0f} nm "
        f"pixels, 10/100 ms alternating -> {path} ({time.perf_counter() - start:.1f} s)")
    return path


def run_viewer(path: Path, folder: Path, headless: bool, screenshot: Path | None = None) -> None:
    """Open the movie in napari with the plugin's widgets docked and split it with the pairs widget."""
    if headless:
        os.environ["NAPARI_PGSR_SYNC"] = "1"  # no event loop will run: do the widget's work in this thread
    import napari

    viewer = napari.Viewer(show=not headless, title="napari-pgsr demo")
    viewer.window.resize(1500, 900)
    viewer.open(str(path), plugin="napari-pgsr")
    _, pairs_widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Exposure pairs")
    pairs_widget.movie.value = viewer.layers[0]
    pairs_widget.run()
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari >= 0.9 moved it
    grid.shape, grid.enabled = (1, len(viewer.layers)), True  # raw movie | low | high side by side
    viewer.reset_view()
    say(f"napari: layers {[layer.name for layer in viewer.layers]}; docked: Exposure pairs")
    if headless:
        shot = screenshot or folder / "napari_demo.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(shot), canvas_only=False)
        say(f"no display: ran the viewer hidden on a virtual screen; screenshot {shot}")
        viewer.close()
    else:
        napari.run()


def main(argv: list[str] | None = None) -> int:
    """Console entry point `napari-pgsr-demo`."""
    parser = argparse.ArgumentParser(prog="napari-pgsr-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, default="ap2")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--output", default="demo_output", help="folder for the sample and results")
    parser.add_argument("--headless", action="store_true", help="no window: hidden viewer and a screenshot")
    parser.add_argument("--no-viewer", action="store_true", help="core steps only, no napari")
    parser.add_argument("--screenshot", type=Path, help="where the headless run saves its screenshot")
    args = parser.parse_args(argv)
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    headless = args.headless or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))

    path = prepare_sample(args.kind, args.frames, args.size, folder)
    start = time.perf_counter()
    movie = read_movie(path)
    say(f"opened {path.name} lazily in {1000 * (time.perf_counter() - start):.0f} ms: shape {movie.shape}, "
        f"{movie.data.dtype}, pixel size {movie.pixel_size_um} um")
    pairs = split_alternating(movie.data, name=path.name)
    info = pairs.summary()
    say(f"exposure pairs: {'low' if pairs.low_first else 'high'} exposure first, ratio {pairs.ratio:.2f}x, "
        f"{info['pairs']} pairs, frames left out: {info['dropped_frames'] or 'none'}")
    if args.no_viewer:
        return 0
    if headless and not os.environ.get("DISPLAY"):
        say("no display and no virtual screen (Xvfb): skipped the viewer; run scripts/demo.sh as root to get one")
        return 0
    run_viewer(path, folder, headless, args.screenshot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
