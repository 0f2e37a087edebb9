"""The README's main job on the built-in sample data: simulate, open, split into pairs, train a small
U-Net, restore the low-exposure frames, and show raw low, raw high and restored side by side in napari.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import numpy as np

from .io import read_movie, write_movie
from .pairs import split_alternating
from .physics import EMCCD
from .simulate import KINDS, low_frame_spots, simulate_movie, write_spots_csv


def say(message: str) -> None:
    """Progress line for the terminal."""
    print(f"[demo] {message}", flush=True)


def prepare_sample(kind: str, n_frames: int, size: int, folder: Path) -> Path:
    """Simulate the sample movie once and keep it (never overwritten) with its true spots."""
    path = folder / f"{kind}_sample.tif"
    if path.exists():
        shape = read_movie(path).shape
        differs = "" if shape == (n_frames, size, size) else (
            f" ({shape[0]} frames of {shape[1]}x{shape[2]} px: --frames and --size apply to a new --output folder)")
        say(f"using the sample movie already in {path}{differs}")
        return path
    start = time.perf_counter()
    sim = simulate_movie(kind, n_frames, (size, size))
    # the truth first: the movie (written atomically) is what a re-run looks for
    write_spots_csv(folder / f"{kind}_sample_spots.csv", sim.spots)
    write_spots_csv(folder / f"{kind}_sample_low_spots.csv", low_frame_spots(sim))  # frames of the restored movie
    write_movie(path, sim.movie, pixel_size_um=sim.pixel_size_um)
    say(f"simulated {kind} movie: {n_frames} frames of {size}x{size} px, {sim.pixel_size_um * 1000:.0f} nm "
        f"pixels, 10/100 ms alternating -> {path} ({time.perf_counter() - start:.1f} s)")
    return path


class DemoStopped(Exception):
    """Ctrl-C during the demo's training: the model is saved and a rerun resumes it."""


def train_and_restore(movie, pairs, folder: Path, steps: int, width: int) -> tuple[Path, Path]:
    """Train a U-Net on the sample's pairs (kept for re-runs) and restore the movie's low frames to a TIFF."""
    from .cli.common import first_ctrl_c_stops
    from .inference import Restorer, restore_to_file
    from .modelfile import load_model
    from .training.config import TrainConfig
    from .training.events import EventKind
    from .training.loop import train

    model_path = folder / f"{pairs.name.removesuffix('.tif')}_unet.pgsr"
    kept = load_model(model_path) if model_path.exists() else None
    state = kept.training_state if kept is not None else None
    unfinished = state is not None and state.get("reason") != "done"  # stopped part way: its last checkpoint
    stored = kept.metadata.get("config", {}) if kept is not None else {}
    if kept is not None and not unfinished:
        made = (stored.get("width"), stored.get("steps"))
        differs = "" if made == (width, steps) else (
            f" (width {made[0]}, {made[1]} steps: --width and --steps apply to a new --output folder)")
        say(f"using the model already in {model_path}{differs}")
    else:
        width = stored.get("width", width)  # a resumed run keeps the width it started with; steps may change
        # A short run: no random offset (that augmentation pays off only over long training) and a higher
        # learning rate; with these, 300 steps already beat the raw high exposure on PSNR.
        config = TrainConfig(steps=steps, width=width, patch=64, batch=16, offset=False, lr=1e-3,
                             validation_every=max(1, steps // 4), checkpoint_every=max(1, steps // 2),
                             validation_patches=32)

        def report(event) -> None:
            if event.kind is EventKind.STARTED:
                say(f"training a U-Net (depth 2, width {width}) for {steps} steps on {event.values['device']}: "
                    f"{event.values['train_pairs']} training / {event.values['validation_pairs']} validation pairs")
            elif event.kind is EventKind.VALIDATION:
                say(f"  step {event.step}: validation PSNR {event.values['psnr']:.2f} dB, SSIM "
                    f"{event.values['ssim']:.3f}")

        start = time.perf_counter()
        if unfinished:
            say(f"resuming the unfinished training in {model_path} at step {state['step']} (width {width})")
        with first_ctrl_c_stops(lambda message: say(message)) as stopping:  # (it printed a traceback)
            result = train(config, [pairs], model_path, resume=model_path if unfinished else None, progress=report,
                           should_stop=stopping)
        if result.reason == "stopped":
            raise DemoStopped(f"stopped at step {result.step}; the model is saved in {model_path}: run the demo "
                              "again to resume")
        say(f"model written to {model_path} ({time.perf_counter() - start:.0f} s)")
    restored = folder / f"{pairs.name.removesuffix('.tif')}_restored.tif"
    if restored.exists() and restored.stat().st_mtime_ns > model_path.stat().st_mtime_ns:
        say(f"using the restored movie already in {restored}")
        return model_path, restored
    start = time.perf_counter()
    count = restore_to_file(Restorer(load_model(model_path)), movie, restored, frames="low",
                            overwrite=restored.exists())  # (made by an earlier model of the demo's own)
    say(f"restored {count} low-exposure frames -> {restored} ({time.perf_counter() - start:.1f} s)")
    return model_path, restored


def run_viewer(path: Path, restored: Path | None, model: Path | None, folder: Path, headless: bool,
               screenshot: Path | None = None) -> None:
    """Open the movie in napari with the plugin's widgets docked: split it into pairs, and show raw low,
    raw high and restored side by side (the Restore widget's own view, contrast linked)."""
    if headless:
        os.environ["NAPARI_PGSR_SYNC"] = "1"  # no event loop will run: do the widget's work in this thread
    import napari

    viewer = napari.Viewer(show=not headless, title="napari-pgsr demo")
    viewer.window.resize(1500, 900)
    raw = viewer.open(str(path), plugin="napari-pgsr")[0]
    _, pairs_widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Exposure pairs")
    pairs_widget.movie.value = raw
    pairs_widget.run()
    _, train_widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Train", tabify=True)
    _, restore_widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore", tabify=True)
    low = viewer.layers[f"{raw.name} low"]
    if model is not None:
        train_widget.output.value = model
        restore_widget.model_file.value = model
    restore_widget.movie.value = low
    if restored is not None:
        restore_widget.restored_layer = viewer.open(str(restored), plugin="napari-pgsr")[0]
        restore_widget.side_by_side()
    measure_suggested_spots(viewer, f"{raw.name} high")
    shown = [layer.name for layer in viewer.layers if isinstance(layer, napari.layers.Image) and layer.visible]
    copies = [layer for layer in viewer.layers if layer.visible and layer.metadata.get("grid_copy_of")]
    say(f"napari: {' | '.join(shown)}{' side by side' if len(shown) > 1 else ''}, spot labels on "
        f"{'each' if len(copies) == len(shown) - 1 else 'one'}; docked: Exposure pairs, Train, Restore, Spots")
    if headless:
        shot = screenshot or folder / "napari_demo.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(shot), canvas_only=False)
        say(f"no display: ran the viewer hidden on a virtual screen; screenshot {shot}")
        viewer.close()
    else:
        napari.run()


def measure_suggested_spots(viewer, reference: str) -> None:
    """Dock the Spots widget, take the spots it suggests on the first high-exposure frame as labels and
    measure them on raw low, raw high and restored (every layer of that shape)."""
    _, spots = viewer.window.add_plugin_dock_widget("napari-pgsr", "Spots", tabify=True)
    from .analysis import CameraCalibration, suggest_spots

    high = viewer.layers[reference]
    spots.reference.value = high
    camera = CameraCalibration.from_emccd(EMCCD())  # the sample's camera: the table's photons are then photons
    spots.baseline.value, spots.electrons.value = camera.baseline_adu, camera.electrons_per_adu
    found = suggest_spots(np.asarray(high.data[0], dtype=np.float64))
    spots.new_labels().data = np.column_stack([np.zeros(len(found)), found])  # frame 0
    viewer.dims.set_current_step(0, 0)
    say(f"Spots widget: took the {len(found)} spots it suggests on the first high-exposure frame as labels; "
        f"camera set to the simulated EMCCD: baseline {spots.baseline.value:g} grey levels, "
        f"{spots.electrons.value:g} e- per grey level")
    spots.measure()  # in a worker when the viewer is shown
    report = getattr(spots, "report", None)
    if report is None:
        return
    for row in report.summary.itertuples():
        say(f"  {row.image}: {row.fitted}/{row.spots} spots fitted, median FWHM {row.median_fwhm_nm:.0f} nm, "
            f"median SNR {row.median_snr:.1f}, suggestions F1 {row.suggested_f1:.2f}")
    common = report.summary.iloc[0]["usable_on_all"]
    widths = " / ".join(f"{value:.0f}" for value in report.summary["median_fwhm_nm_on_all"])
    say(f"  on the {common} spots fitted on all {len(report.summary)}: median FWHM {widths} nm")


def main(argv: list[str] | None = None) -> int:
    """Console entry point `napari-pgsr-demo`."""
    parser = argparse.ArgumentParser(prog="napari-pgsr-demo", description=" ".join(__doc__.split()))
    parser.add_argument("--kind", choices=KINDS, default="ap2", help="sample [ap2]")
    parser.add_argument("--frames", type=int, default=100, help="frames of a new sample movie [100]")
    parser.add_argument("--size", type=int, default=256, help="frame size of a new sample movie, pixels [256]")
    parser.add_argument("--output", default="demo_output", help="folder for the sample and results (a rerun keeps "
                        "the sample and the model in it: --frames, --size, --steps, --width apply to a new "
                        "folder) [demo_output]")
    parser.add_argument("--headless", action="store_true", help="no window: hidden viewer and a screenshot")
    parser.add_argument("--no-viewer", action="store_true", help="core steps only, no napari")
    parser.add_argument("--screenshot", type=Path, help="where the headless run saves its screenshot")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the demo U-Net [300]")
    parser.add_argument("--width", type=int, default=32, help="first-level channels of the demo U-Net [32]")
    parser.add_argument("--no-training", action="store_true", help="skip training and restoration")
    args = parser.parse_args(argv)
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    headless = args.headless or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))

    path = prepare_sample(args.kind, args.frames, args.size, folder)
    start = time.perf_counter()
    movie = read_movie(path)
    say(f"opened {path.name} lazily in {1000 * (time.perf_counter() - start):.0f} ms: shape {movie.shape}, "
        f"{movie.data.dtype}, pixel size {movie.pixel_size_um} um")
    pairs = split_alternating(movie)
    info = pairs.summary()
    say(f"exposure pairs: {'low' if pairs.low_first else 'high'} exposure first, ratio {pairs.ratio:.2f}x, "
        f"{info['pairs']} pairs, frames left out: {info['dropped_frames'] or 'none'}")
    try:
        model, restored = (None, None) if args.no_training else train_and_restore(movie, pairs, folder, args.steps,
                                                                                  args.width)
    except DemoStopped as stopped:
        say(str(stopped))
        return 128 + signal.SIGINT
    if args.no_viewer:
        return 0
    if headless and not os.environ.get("DISPLAY"):
        say("no display and no virtual screen (Xvfb): skipped the viewer; run scripts/demo.sh as root to get one")
        return 0
    run_viewer(path, restored, model, folder, headless, args.screenshot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
