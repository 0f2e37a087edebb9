"""Take the README's screenshots from a real napari viewer (run under Xvfb by scripts/screenshots.sh).

Each step drives the plugin's widgets as a user would: split the sample movie into pairs and train a small
model in the Train widget; restore with it and measure suggested spots in the Spots widget. The Restore
screenshot comes from command (1), napari-pgsr-demo.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ["NAPARI_PGSR_SYNC"] = "1"  # run the widgets' work in this thread: no event loop here

import napari  # noqa: E402

from napari_pgsr._widgets._spot_results import viewer_camera  # noqa: E402
from napari_pgsr.analysis import CameraCalibration  # noqa: E402
from napari_pgsr.io import write_movie  # noqa: E402
from napari_pgsr.physics import EMCCD  # noqa: E402
from napari_pgsr.simulate import simulate_movie  # noqa: E402


def main(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    sim = simulate_movie("ap2", 100, (256, 256), seed=0)
    movie = write_movie(work / "ap2_sample.tif", sim.movie, pixel_size_um=sim.pixel_size_um)
    viewer = napari.Viewer(show=False, title="napari-pgsr")
    viewer.window.resize(1400, 860)
    raw = viewer.open(str(movie), plugin="napari-pgsr")[0]
    _, pairs = viewer.window.add_plugin_dock_widget("napari-pgsr", "Exposure pairs")
    pairs.movie.value = raw
    pairs.run()
    viewer.screenshot(str(folder / "exposure_pairs.png"), canvas_only=False)

    _, trainer = viewer.window.add_plugin_dock_widget("napari-pgsr", "Train", tabify=True)
    trainer.channels.value, trainer.steps.value, trainer.preview_every.value = 16, 120, 40
    trainer.offset.value = False
    trainer.output.value = work / "model.pgsr"
    trainer.run()
    trainer.plot.redraw()
    for layer in viewer.layers:
        layer.visible = layer.name in ("training preview",)
    viewer.reset_view()
    viewer.screenshot(str(folder / "train.png"), canvas_only=False)

    spots_screenshot(viewer, work / "model.pgsr", folder / "spots.png")
    viewer.close()
    print(f"screenshots in {folder}")
    return 0


def spots_screenshot(viewer, model: Path, path: Path) -> None:
    """Restore the low frames lazily with the quick model, take the suggested spots of the first high frame
    as labels and measure them on low, high and restored; show the plots beside the labelled high frame."""
    _, restorer = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore", tabify=True)
    restorer.model_file.value = model
    restorer.movie.value = viewer.layers["ap2_sample low"]
    restorer.run()
    _, spots = viewer.window.add_plugin_dock_widget("napari-pgsr", "Spots", tabify=True)
    spots.reference.value = viewer.layers["ap2_sample high"]
    camera = CameraCalibration.from_emccd(EMCCD())  # the simulated camera, as command (1) sets it
    spots.baseline.value, spots.electrons.value = camera.baseline_adu, camera.electrons_per_adu
    viewer.dims.set_current_step(0, 0)
    spots.suggest()
    spots.accept_suggestions()
    spots.measure()
    spots.results.tabs.setCurrentIndex(2)  # the plots
    for layer in viewer.layers:
        layer.visible = layer.name in ("ap2_sample high", "spot labels")
    viewer.reset_view()
    viewer_camera(viewer).zoom *= 1.6
    viewer.screenshot(str(path), canvas_only=False)


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images")))
