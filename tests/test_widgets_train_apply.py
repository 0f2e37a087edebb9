"""Train and Restore dock widgets driven in a real napari viewer."""

import gc
import io
import threading
import time
import zipfile

import numpy as np
import pytest
import yaml
from qtpy.QtCore import QTimer

from napari_pgsr._widgets import _train_jobs, _workers, apply_widget, pairs_widget, train_widget
from napari_pgsr._widgets.train_widget import RunState
from napari_pgsr.io import read_movie, write_movie
from napari_pgsr.modelfile import load_model
from napari_pgsr.pairs import split_alternating
from napari_pgsr.simulate import Acquisition, simulate_movie


@pytest.fixture
def errors(monkeypatch):
    shown = []
    for module in (_workers, pairs_widget, train_widget, apply_widget):
        monkeypatch.setattr(module, "show_error", shown.append)
    return shown


@pytest.fixture
def viewer_with_pairs(make_napari_viewer, tmp_path, monkeypatch):
    """A viewer with a small movie file opened and split by the Exposure pairs widget."""
    sim = simulate_movie("ap2", 48, (64, 64), seed=0)
    path = write_movie(tmp_path / "cells.tif", sim.movie, pixel_size_um=0.16)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-pgsr")
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    _, pairs = viewer.window.add_plugin_dock_widget("napari-pgsr", "Exposure pairs")
    pairs.movie.value = viewer.layers["cells"]
    pairs.run()
    monkeypatch.delenv("NAPARI_PGSR_SYNC")
    return viewer


def _train_widget(viewer, tmp_path, steps):
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Train")
    widget.channels.value, widget.patch.value, widget.batch.value = 4, 32, 4
    widget.steps.value, widget.preview_every.value, widget.device.value = steps, 5, "cpu"
    widget.output.value = tmp_path / "gui.pgsr"
    return widget


def test_a_closed_train_widget_stops_following_the_layer_list(make_napari_viewer, qtbot):
    from qtpy.QtCore import QCoreApplication, QEvent

    viewer = make_napari_viewer()
    before = len(viewer.layers.events.inserted.callbacks)
    widget = train_widget.TrainWidget(viewer)
    assert len(viewer.layers.events.inserted.callbacks) == before + 1
    widget.native.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert len(viewer.layers.events.inserted.callbacks) == before
    viewer.add_image(np.zeros((8, 8)), name="x low")
    viewer.add_image(np.zeros((8, 8)), name="x high")  # would have reached the deleted widget


def test_pairs_come_from_the_file_only_while_it_holds_what_the_layers_show(viewer_with_pairs):
    low, high = viewer_with_pairs.layers["cells low"], viewer_with_pairs.layers["cells high"]
    from_file = train_widget.pairs_from_layers(low, high)
    assert from_file.read(0)[0].shape == (64, 64) and len(from_file) == 24
    low.data, high.data = np.asarray(low.data[:, :32, :40]), np.asarray(high.data[:, :32, :40])  # cropped
    cropped = train_widget.pairs_from_layers(low, high)
    assert cropped.read(0)[0].shape == (32, 40) and len(cropped) == 24
    np.testing.assert_array_equal(cropped.read(5)[0], low.data[5])


def test_the_users_choice_of_pairs_survives_other_layers_added(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("x low", "x high", "A", "B"):
        viewer.add_image(np.zeros((4, 8, 8)), name=name)
    widget = train_widget.TrainWidget(viewer)
    assert (widget.low.value.name, widget.high.value.name) == ("x low", "x high")
    widget.low.value, widget.high.value = viewer.layers["A"], viewer.layers["B"]
    viewer.add_points(np.zeros((1, 3)), name="labels")
    assert (widget.low.value.name, widget.high.value.name) == ("A", "B")
    viewer.add_image(np.zeros((4, 8, 8)), name="y low")
    viewer.add_image(np.zeros((4, 8, 8)), name="y high")  # a new split: taken
    assert (widget.low.value.name, widget.high.value.name) == ("y low", "y high")


def test_training_runs_in_a_worker_with_progress_plot_and_preview(viewer_with_pairs, qtbot, tmp_path):
    viewer = viewer_with_pairs
    widget = _train_widget(viewer, tmp_path, steps=30)
    assert widget.low.value.name == "cells low" and widget.high.value.name == "cells high"
    gaps, last, start = [], [time.perf_counter()], time.perf_counter()

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now
        ticks.append(now - start)

    ticks = []
    timer = QTimer()
    timer.timeout.connect(tick)
    # the test process holds millions of objects (napari, torch, earlier tests): a full garbage collection
    # of them pauses any thread for 0.3-0.5 s, whoever triggers it; freeze them so only the training's count
    gc.freeze()
    timer.start(50)
    widget.train_button.clicked.emit()
    try:
        qtbot.waitUntil(lambda: widget.status.state is RunState.DONE, timeout=120_000)
    finally:
        timer.stop()
        gc.unfreeze()
    # the training (about 2-3 s here) on the GUI thread would be one long wait; in a worker, the GUI's own work
    # (plot, preview layer) is what holds it: up to 0.13-0.21 s at a time on a slow 2-core CPU that trains
    # beside it, so the bound on the worst wait leaves room for that, and most ticks must come on time
    worst = int(np.argmax(gaps[1:])) + 1
    assert gaps[worst] < 0.5, f"the GUI thread waited {gaps[worst]:.3f} s, {ticks[worst]:.2f} s after the start"
    assert len(gaps) > 5 and np.median(gaps[1:]) < 0.08, f"median wait {np.median(gaps[1:]):.3f} s"
    assert widget.progress.value == 30 and widget.status.step == 30
    assert len(widget.plot.points["training"][0]) == 30 and widget.plot.points["validation"][0]
    assert viewer.layers["training preview"].data.shape == (64, 64)
    model = load_model(tmp_path / "gui.pgsr")
    assert model.metadata["history"]["step"] == 30 and widget.train_button.enabled


def test_stop_leaves_a_usable_model_and_resume_continues(viewer_with_pairs, qtbot, tmp_path):
    widget = _train_widget(viewer_with_pairs, tmp_path, steps=100_000)
    widget.preview_every.value = 0
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.step >= 3, timeout=60_000)
    widget.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.state is RunState.STOPPED, timeout=60_000)
    stopped = load_model(tmp_path / "gui.pgsr").training_state["step"]
    assert 3 <= stopped < 100_000
    widget.steps.value = stopped + 4
    widget.resume_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.state is RunState.DONE, timeout=60_000)
    assert load_model(tmp_path / "gui.pgsr").metadata["history"]["step"] == stopped + 4


def test_resume_keeps_the_stored_settings_and_train_does_not_replace_a_model(viewer_with_pairs, qtbot, tmp_path,
                                                                              errors, monkeypatch):
    """A model of napari-pgsr-train (offset stored as None: "on for MAE", lr 1e-3) was refused by the widget's
    Resume whatever its offset box said; Train replaced a model file without a word."""
    from napari_pgsr import cli

    infos = []
    monkeypatch.setattr(train_widget, "show_info", infos.append)
    movie = viewer_with_pairs.layers["cells"].metadata["source_path"]
    model = tmp_path / "cli.pgsr"
    assert cli.train_main([movie, "--out", str(model), "--steps", "3", "--width", "8", "--patch", "32",
                           "--batch", "2", "--lr", "1e-3", "--device", "cpu", "--quiet"]) == 0
    before = model.read_bytes()
    widget = _train_widget(viewer_with_pairs, tmp_path, steps=5)
    widget.output.value, widget.offset.value, widget.preview_every.value = model, False, 0
    widget.train_button.clicked.emit()
    assert errors[-1] == f"Train: {model} exists: Resume continues it; to train a new model, choose another model file"
    assert model.read_bytes() == before and widget.status.state is RunState.IDLE
    from napari_pgsr import modelfile

    loaded_on = []  # a large model file takes seconds to load: the worker reads it, not the GUI thread

    def recording_load(*args, **kwargs):
        loaded_on.append(threading.current_thread() is threading.main_thread())
        return load_model(*args, **kwargs)

    monkeypatch.setattr(modelfile, "load_model", recording_load)
    widget.resume_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.state is RunState.DONE, timeout=60_000)
    assert loaded_on and not any(loaded_on)
    resumed = load_model(model)
    assert resumed.metadata["history"]["step"] == 5 and resumed.metadata["config"]["lr"] == 1e-3
    assert widget.plot.points["training"][0] == [1, 2, 3, 4, 5]  # the stored curve, continued (it was cleared)
    # a WGAN's loss below 0: the plot leaves the log scale, which would drop it; a new run starts on log again
    widget.plot.add("training", 6, -0.5)
    widget.plot.redraw()
    assert widget.plot.axes.get_yscale() == "symlog"
    widget.plot.clear()
    assert widget.plot.axes.get_yscale() == "log"
    assert (widget.channels.value, widget.patch.value, widget.batch.value, widget.offset.value) == (8, 32, 2, True)
    assert "resuming cli.pgsr with the settings it was trained with (unet, width 8, patch 32, batch 2, lr 0.001)" in (
        infos[0])
    # the random offset box is MAE's: MSE and BCE train without it, as on the command line
    widget.loss.value = "mse"
    assert not widget.offset.enabled and not widget.config().offset_enabled
    widget.loss.value = "mae"
    assert widget.offset.enabled and widget.config().offset_enabled


def test_stop_while_the_movies_are_read_writes_no_model(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Stop during the exposure check went unheeded, then wrote an untrained step-0 model that Train refused
    to replace."""
    infos = []
    monkeypatch.setattr(train_widget, "show_info", infos.append)
    split = train_widget.split_alternating

    def slow(*args, **kwargs):  # a movie larger than memory: minutes of reading
        time.sleep(1.5)
        return split(*args, **kwargs)

    monkeypatch.setattr(train_widget, "split_alternating", slow)
    path = write_movie(tmp_path / "m.tif", simulate_movie("ap2", 20, (64, 64), seed=0).movie, pixel_size_um=0.16)
    widget = _train_widget(make_napari_viewer(), tmp_path, steps=5)
    widget.movies.value = [path]
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.info.value.startswith("preparing"), timeout=30_000)
    widget.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.state is RunState.STOPPED, timeout=30_000)
    assert infos[-1] == f"Train: stopped before training began; {tmp_path / 'gui.pgsr'} was not written"
    assert not (tmp_path / "gui.pgsr").exists() and widget.train_button.enabled


def test_resuming_a_file_that_is_no_model_says_so(viewer_with_pairs, qtbot, tmp_path, errors):
    widget = _train_widget(viewer_with_pairs, tmp_path, steps=5)
    (tmp_path / "gui.pgsr").write_bytes(b"not a model")
    with qtbot.capture_exceptions() as raised:  # (a worker's error also reaches pytest-qt's exception hook)
        widget.resume_button.clicked.emit()
        qtbot.waitUntil(lambda: widget.status.state is RunState.FAILED, timeout=60_000)
    assert [type(error) for _, error, _ in raised] == [ValueError]
    assert errors[-1].startswith(f"Train: {tmp_path / 'gui.pgsr'} is not a readable napari-pgsr model file")
    assert widget.train_button.enabled and widget.resume_button.enabled and not widget.stop_button.enabled
    assert (tmp_path / "gui.pgsr").read_bytes() == b"not a model"


def test_the_preview_shows_a_validation_pair(tmp_path):
    """The middle pair of a movie of 200 pairs lies between its two validation blocks: a training pair."""
    from napari_pgsr.data import split_refs
    from napari_pgsr.pairs import pair_stacks
    from napari_pgsr.training.config import TrainConfig

    low = np.arange(200, dtype=np.float32)[:, None, None] + np.zeros((200, 8, 8), np.float32)
    pairs = pair_stacks(low + 10, 10 * low + 100)
    config = TrainConfig(steps=1)
    _, validation = split_refs([pairs], config.validation_fraction, config.block_pairs, gap=1)
    shown = int(_train_jobs.preview_frames([pairs], config)[0, 0, 0]) - 10
    assert (0, shown) in validation and (0, 100) not in validation


def test_progan_from_the_train_widget(viewer_with_pairs, qtbot, tmp_path):
    widget = _train_widget(viewer_with_pairs, tmp_path, steps=6)
    assert widget.gan_width.native.isHidden()  # (the viewer is not shown: ask what was hidden)
    widget.model.value = "progan"
    assert not widget.gan_width.native.isHidden() and widget.channels.native.isHidden()
    assert widget.patch.label == "Final resolution"
    widget.gan_width.value, widget.phase_images.value, widget.patch.value = 0.03, 8, 16
    widget.warmup_steps.value, widget.critic_steps.value, widget.rot180_average.value = 2, 2, True
    assert widget.offset.value
    widget.critic_noise.value = True
    assert not widget.offset.value  # the noise model holds for the camera's own levels only
    widget.offset.value = True
    assert not widget.critic_noise.value
    widget.critic_noise.value = True
    widget.critic_noise_shape.value, widget.warmup_lr.value = "normal", 2e-3
    config = widget.config()
    assert (config.model, config.width, config.patch, config.phase_images, config.gan_mode) == (
        "progan", 0.03, 16, 8, "joint")
    assert (config.warmup_steps, config.critic_steps, config.rot180_average, config.critic_noise,
            config.offset, config.critic_noise_shape, config.warmup_lr) == (2, 2, True, True, False, "normal", 2e-3)
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.state is RunState.DONE, timeout=60_000)
    model = load_model(tmp_path / "gui.pgsr")
    assert model.network.architecture["name"] == "progan" and model.network.architecture["rot180_average"]
    assert model.metadata["config"]["critic_noise"] and model.metadata["config"]["warmup_steps"] == 2


def test_a_gan_that_blows_up_in_the_train_widget_warns_and_keeps_its_last_validated_state(
        viewer_with_pairs, qtbot, tmp_path, monkeypatch):
    from napari_pgsr.training import progan_loop

    calls, warnings = [], []

    def jumping_at_the_third(*args, **kwargs):  # validations at steps 1, 2, 3, ...: the third 4x higher
        metrics = validate(*args, **kwargs)
        calls.append(1)
        return {**metrics, "loss": metrics["loss"] * (4 if len(calls) == 3 else 1)}

    validate = progan_loop.validate
    monkeypatch.setattr(progan_loop, "validate", jumping_at_the_third)
    monkeypatch.setattr(train_widget, "show_warning", warnings.append)
    widget = _train_widget(viewer_with_pairs, tmp_path, steps=6)
    widget.model.value = "progan"
    widget.gan_width.value, widget.patch.value, widget.start_resolution.value = 0.03, 16, 16
    widget.warmup_steps.value, widget.critic_steps.value = 1, 1
    assert widget.gan_lr.value == 1e-3 and widget.divergence_factor.value == 3.0  # the core's defaults
    widget.divergence_factor.value = 1.0  # refused by the config: stepping down lands on 0 (never stop) ...
    assert widget.divergence_factor.value == 0.0
    widget.divergence_factor.value = 0.5  # ... and up on 1.5
    assert widget.divergence_factor.value == 1.5
    widget.gan_lr.value, widget.divergence_factor.value = 2e-3, 20.0
    config = widget.config()
    assert (config.gan_lr, config.divergence_factor, config.validation_every) == (2e-3, 20.0, 1)
    widget.train_button.clicked.emit()  # a jump of 4x is within a factor of 20: trained to the end
    qtbot.waitUntil(lambda: widget.status.state is RunState.DONE, timeout=60_000)
    assert not warnings and load_model(tmp_path / "gui.pgsr").training_state["step"] == 6
    calls.clear()
    widget.divergence_factor.value = 1.5  # and beyond a factor of 1.5: stopped, the last validated state kept
    widget.output.value = tmp_path / "second.pgsr"  # (Train does not replace a model file)
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.state is RunState.DONE, timeout=60_000)
    assert len(warnings) == 1 and "diverged at step 3" in warnings[0] and "holds step 2" in warnings[0]
    kept = load_model(tmp_path / "second.pgsr")
    assert kept.training_state["step"] == 2 and kept.metadata["history"]["divergences"][0]["factor"] == 1.5
    assert kept.metadata["config"]["gan_lr"] == 2e-3


def test_recipe_fills_in_the_measured_settings(viewer_with_pairs, tmp_path):
    from napari_pgsr.training.recipes import RECIPES, recipe_config

    widget = _train_widget(viewer_with_pairs, tmp_path, steps=6)
    widget.minutes.value, widget.context.value = 5.0, 2
    widget.cpu_bf16.enabled, widget.cpu_bf16.value = True, True  # (as on a CPU with hardware bf16)
    assert widget.config().cpu_bf16
    for name in RECIPES:
        widget.recipe.value = name
        shown, measured = widget.config().to_dict(), recipe_config(name).to_dict()
        # as on the command line: the recipe's settings, the others at their defaults (context 0)
        assert {key: shown[key] for key in [*RECIPES[name], "context"]} == {
            key: measured[key] for key in [*RECIPES[name], "context"]}
        assert not widget.gan_width.native.isHidden()  # a ProGAN recipe shows the ProGAN settings
        assert widget.recipe.value == name and "measured to work on" in widget.recipe.tooltip  # its scope
        assert widget.config().recipe == name  # recorded in the model file
        assert widget.config().cpu_bf16  # a choice about this computer, kept by a recipe
    widget.lambda_gan.value = 0.5  # an edit: the settings are the user's own now, the rest stays
    assert widget.recipe.value == "" and widget.config().critic_steps == recipe_config("progan-spots").critic_steps
    assert "measured to work on" not in widget.recipe.tooltip and widget.config().recipe == ""
    widget.recipe.value = "progan-spots"  # the same recipe again restores it
    assert widget.config().lambda_gan == recipe_config("progan-spots").lambda_gan
    widget.model.value = "unet"
    widget.cpu_bf16.enabled = False  # a CPU without hardware bf16: the box is greyed out and not applied
    assert not widget.config().cpu_bf16


def test_restore_widget_lazily_to_file_and_side_by_side(viewer_with_pairs, qtbot, tmp_path, monkeypatch):
    from napari_pgsr.pairs import split_alternating
    from napari_pgsr.training.config import TrainConfig
    from napari_pgsr.training.loop import train

    viewer = viewer_with_pairs
    movie = read_movie(viewer.layers["cells"].metadata["source_path"])
    train(TrainConfig(steps=2, depth=1, width=4, patch=32, batch=2, device="cpu"), [split_alternating(movie)],
          tmp_path / "m.pgsr")
    from napari_pgsr import inference

    restored_frames, restore_frame = [], inference.RestoredFrames._restored

    def counting(self, position):
        restored_frames.append(position)
        return restore_frame(self, position)

    monkeypatch.setattr(inference.RestoredFrames, "_restored", counting)
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    widget.model_file.value = tmp_path / "m.pgsr"
    assert widget.about.value == "-"  # loaded in a worker (a large model takes seconds)
    qtbot.waitUntil(lambda: "unet depth 1 width 4" in widget.about.value, timeout=60_000)
    assert "validation PSNR" in widget.about.value
    widget.movie.value = viewer.layers["cells low"]
    widget.run()  # no output file: frames are restored when shown
    qtbot.waitUntil(lambda: "cells low restored" in viewer.layers and widget.run_button.enabled, timeout=60_000)
    lazy = viewer.layers["cells low restored"]
    assert lazy.data.shape == (24, 64, 64) and hasattr(lazy.data, "dask")
    np.testing.assert_allclose(lazy.scale, viewer.layers["cells low"].scale)
    assert np.isfinite(np.asarray(lazy.data[3])).all()
    np.asarray(lazy.data[0])  # shown (and read for the contrast) already: kept, not restored again
    assert restored_frames.count(0) == 1 and restored_frames.count(3) == 1
    widget.movie.value = viewer.layers["cells"]
    widget.frames.value = "low"
    widget.output.value = tmp_path / "restored.tif"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: "restored" in viewer.layers and widget.run_button.enabled, timeout=60_000)
    on_disk = viewer.layers["restored"]
    assert on_disk.data.shape == (24, 64, 64) and read_movie(tmp_path / "restored.tif").pixel_size_um == 0.16
    np.testing.assert_allclose(np.asarray(on_disk.data[3]), np.asarray(lazy.data[3]), rtol=1e-5, atol=1e-3)
    widget.movie.value = viewer.layers["cells low"]
    widget.side_by_side()
    visible = [layer.name for layer in viewer.layers if layer.visible]
    assert visible == ["cells low", "cells high", "restored"]
    viewer.layers["cells high"].contrast_limits = (100, 900)
    assert tuple(viewer.layers["restored"].contrast_limits) == (100, 900)  # linked
    low = viewer.layers["cells low"]
    ratio, baseline = low.metadata["ratio"], low.metadata["baseline"]
    np.testing.assert_allclose(low.contrast_limits, [baseline + (v - baseline) / ratio for v in (100, 900)])
    callbacks = len(viewer.layers["cells high"].events.contrast_limits.callbacks)
    widget.side_by_side()  # pressed again: still one link from high to low
    assert len(viewer.layers["cells high"].events.contrast_limits.callbacks) == callbacks
    grid = viewer.canvas.grid
    viewer.canvas.size = (400, 1300)  # wide: one row; the grid follows the canvas as it is resized
    assert grid.enabled and tuple(grid.shape) == (1, 3)
    viewer.camera.zoom = 20.0
    viewer.canvas.size = (420, 1300)  # same shape: the user's zoom stays
    assert viewer.camera.zoom == 20.0
    viewer.canvas.size = (1300, 400)
    assert tuple(grid.shape) == (3, 1)
    grid.shape = (2, 2)  # the user's own shape is kept
    viewer.canvas.size = (400, 1300)
    assert tuple(grid.shape) == (2, 2)


def test_best_grid_shape_shows_the_images_largest():
    from types import SimpleNamespace

    from napari_pgsr._widgets._grid_view import best_grid_shape, occupied_cells

    assert best_grid_shape(3, (600, 1800), (100, 100)) == (1, 3)
    assert best_grid_shape(3, (680, 470), (256, 256)) == (2, 2)  # a tall canvas between docks
    assert best_grid_shape(3, (1800, 500), (100, 100)) == (3, 1)
    assert best_grid_shape(4, (100, 100), (10, 10)) == (2, 2)
    assert best_grid_shape(2, (100, 400), (50, 10)) == (1, 2)  # tall images side by side
    assert best_grid_shape(1, (100, 100), (10, 10)) == (1, 1)
    layers = [SimpleNamespace(visible=visible) for visible in (True, True, False, False, True, False, True)]
    assert occupied_cells(layers, 1) == 4 and occupied_cells(layers, 2) == 3  # pairs (0,1), (4,5), (6)
    assert occupied_cells(layers, -2) == 4  # from the top: (6,5), (4,3), (2,1), (0)
    assert occupied_cells(layers[2:4], 1) == 1  # none visible: still 1


def test_bad_inputs_give_notifications_not_crashes(make_napari_viewer, tmp_path, errors, monkeypatch):
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    viewer = make_napari_viewer()
    steady = write_movie(tmp_path / "steady.tif",
                         simulate_movie("ap2", 20, (64, 64), acquisition=Acquisition(low_exposure_s=0.1)).movie)
    _, trainer = viewer.window.add_plugin_dock_widget("napari-pgsr", "Train")
    trainer.movies.value = [steady]
    trainer.output.value = tmp_path / "never.pgsr"
    trainer.run()
    assert "no alternating exposure detected" in errors[-1] and not (tmp_path / "never.pgsr").exists()
    assert trainer.train_button.enabled
    _, restorer = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    (tmp_path / "junk.pgsr").write_text("junk")
    restorer.model_file.value = tmp_path / "junk.pgsr"
    assert "not a readable napari-pgsr model file" in errors[-1]
    restorer.movie.value = viewer.add_image(np.zeros((2, 3, 16, 16)), name="4d")
    restorer.run()
    assert "'4d' has shape (2, 3, 16, 16)" in errors[-1]
    count = len(viewer.layers)
    trainer.movies.value = []
    trainer.low.value = trainer.high.value = viewer.layers["4d"]
    trainer.run()
    assert "expected a movie T x Y x X, got 4 dimensions" in errors[-1] and len(viewer.layers) == count


def test_results_sit_over_their_input_and_never_replace_a_layer_of_the_user(make_napari_viewer, tmp_path, errors,
                                                                            monkeypatch):
    from napari_pgsr.data import Normalization
    from napari_pgsr.modelfile import save_model
    from napari_pgsr.models.unet import UNet

    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    model = save_model(tmp_path / "m.pgsr", UNet(depth=1, width=4), Normalization(0, 1, 0, 1), {})
    viewer = make_napari_viewer()
    movie = viewer.add_image(simulate_movie("ap2", 8, (32, 32), seed=0).movie, name="m", scale=(1, 0.16, 0.16),
                             translate=(0, 3.2, 1.6))
    _, pairs = viewer.window.add_plugin_dock_widget("napari-pgsr", "Exposure pairs")
    pairs.movie.value = movie
    pairs.run()
    np.testing.assert_allclose(viewer.layers["m low"].translate, (0, 3.2, 1.6))  # (was drawn at the origin)
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    widget.model_file.value = model
    snapshot = viewer.add_image(np.random.default_rng(0).random((32, 32), np.float32), name="cells",
                                scale=(0.2, 0.2), translate=(5, 7))
    widget.movie.value = snapshot
    widget.run()  # a single frame restored lazily gains a frame axis that starts at 0
    restored = viewer.layers["cells restored"]
    assert restored.data.shape == (1, 32, 32)
    np.testing.assert_allclose(restored.translate, (0, 5, 7))
    np.testing.assert_allclose(restored.scale, (1, 0.2, 0.2))
    (tmp_path / "out").mkdir()
    widget.output.value = tmp_path / "out" / "cells.tif"  # the result's name is the input layer's
    widget.run()
    assert snapshot in viewer.layers and viewer.layers["cells"] is snapshot and not errors
    assert [layer.name for layer in viewer.layers][-3:] == ["cells", "cells restored", "cells [1]"]
    np.testing.assert_allclose(viewer.layers["cells [1]"].translate, (0, 5, 7))  # the saved result


@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_streaming_restoration_can_be_cancelled(make_napari_viewer, qtbot, tmp_path, errors, monkeypatch, name):
    from napari_pgsr.data import Normalization
    from napari_pgsr.modelfile import save_model
    from napari_pgsr.models.unet import UNet

    infos = []
    monkeypatch.setattr(apply_widget, "show_info", infos.append)
    model = save_model(tmp_path / "m.pgsr", UNet(depth=2, width=16), Normalization(0, 1, 0, 1), {})
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    widget.model_file.value = model
    widget.movie.value = viewer.add_image(np.random.default_rng(0).random((400, 128, 128), np.float32), name="m")
    widget.output.value = tmp_path / name
    widget.precision.value = "bf16"
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert not errors and len(infos) == 1 and infos[0].startswith("Restore: cancelled after")
    if name.endswith(".tif"):  # a TIFF is written whole: nothing is left
        assert "was not written" in infos[0]
        assert not (tmp_path / name).exists() and not list(tmp_path.glob(".out.tif*"))
    else:  # an OME-Zarr store keeps the frames restored so far
        kept = int(infos[0].split()[3])
        partial = read_movie(tmp_path / name)
        assert 1 <= kept < 400 and "incomplete" in partial.metadata
        assert np.isfinite(np.asarray(partial.data[0])).all() and np.isnan(np.asarray(partial.data[-1])).all()


def test_a_lazy_restoration_can_be_cancelled_and_records_the_model_it_used(make_napari_viewer, qtbot, tmp_path,
                                                                           errors, monkeypatch):
    """The exposure check of Frames 'low' read every frame with Cancel off; the result recorded whichever
    model file the widget showed when it ended; a layer removed meanwhile still received its result."""
    from napari_pgsr import pairs as pairs_module
    from napari_pgsr.data import Normalization
    from napari_pgsr.modelfile import save_model
    from napari_pgsr.models.unet import UNet

    infos = []
    monkeypatch.setattr(apply_widget, "show_info", infos.append)
    first, other = (save_model(tmp_path / f"{name}.pgsr", UNet(depth=1, width=4), Normalization(0, 1, 0, 1), {})
                    for name in ("first", "other"))
    read = pairs_module.iter_frame_means

    def slow(*args, **kwargs):  # a movie larger than memory: minutes of reading
        for done in read(*args, **kwargs):
            yield done
        for _ in range(600):
            time.sleep(0.05)
            yield done

    monkeypatch.setattr(pairs_module, "iter_frame_means", slow)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    widget.model_file.value, widget.frames.value = first, "low"
    widget.movie.value = viewer.add_image(simulate_movie("ap2", 8, (32, 32), seed=0).movie, name="m")
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=10_000)
    assert infos[-1] == "Restore: cancelled while reading the brightness of 'm'; nothing was restored"
    assert "m restored" not in viewer.layers and not errors
    monkeypatch.setattr(pairs_module, "iter_frame_means", read)
    widget.run()
    widget.model_file.value = other  # chosen while the first one restores
    qtbot.waitUntil(lambda: "m restored" in viewer.layers, timeout=60_000)
    assert viewer.layers["m restored"].metadata["model"] == str(first)
    viewer.layers.remove("m restored")
    viewer.layers.remove("m")
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    widget.movie.value = movie = viewer.add_image(simulate_movie("ap2", 8, (32, 32), seed=0).movie, name="n")
    widget.run()
    viewer.layers.remove(movie)  # while its restoration is prepared
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert "n restored" not in viewer.layers and "'n' was removed" in infos[-1]


def test_restore_widget_refuses_what_would_mix_frames_or_replace_files(viewer_with_pairs, qtbot, tmp_path, errors,
                                                                        monkeypatch):
    """A context model restored every frame of an alternating movie lazily (high frames for neighbours);
    napari's Save wrote a lazily restored layer over the movie it reads; a typed model path gave an error per
    keystroke; a second run to one file ended with 'pass overwrite=True'."""
    from napari_pgsr._writer import write_image
    from napari_pgsr.pairs import split_alternating
    from napari_pgsr.training.config import TrainConfig
    from napari_pgsr.training.loop import train

    viewer = viewer_with_pairs
    source = viewer.layers["cells"].metadata["source_path"]
    pairs = split_alternating(read_movie(source))
    train(TrainConfig(steps=1, depth=1, width=4, patch=32, batch=2, device="cpu", context=1), [pairs],
          tmp_path / "context.pgsr")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    for typed in ("/", "/t", str(tmp_path)):  # on the way to a file
        widget.model_file.value = typed
    assert errors == [] and widget.about.value == "-"
    widget.model_file.value = tmp_path / "context.pgsr"
    widget.movie.value, widget.frames.value = viewer.layers["cells"], "all"
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")  # (a worker's error also reaches pytest-qt's exception hook)
    widget.run()
    monkeypatch.delenv("NAPARI_PGSR_SYNC")
    assert "cells restored" not in viewer.layers and widget.run_button.enabled
    assert "layer 'cells' alternates low and high exposures, but this model takes 1 neighbouring low frames" in (
        errors[-1])
    widget.movie.value = viewer.layers["cells low"]  # its low frames: restored
    widget.run()
    qtbot.waitUntil(lambda: "cells low restored" in viewer.layers, timeout=60_000)
    restored = viewer.layers["cells low restored"]
    before = open(source, "rb").read()
    with pytest.raises(ValueError, match="it is the file the data was read from"):
        write_image(source, restored.data, {"metadata": restored.metadata, "scale": restored.scale})
    assert open(source, "rb").read() == before
    (tmp_path / "taken.tif").write_bytes(b"mine")
    widget.output.value = tmp_path / "taken.tif"
    widget.run()
    assert errors[-1] == (f"Restore: {tmp_path / 'taken.tif'} exists; choose another file name (this widget does "
                          "not replace files)")
    assert (tmp_path / "taken.tif").read_bytes() == b"mine"


def test_restore_widget_exports_the_model_for_bioimage_io(make_napari_viewer, qtbot, tmp_path, errors, monkeypatch):
    from napari_pgsr.data import Normalization
    from napari_pgsr.modelfile import load_model, save_model
    from napari_pgsr.models.unet import UNet

    infos = []
    monkeypatch.setattr(apply_widget, "show_info", infos.append)
    model = save_model(tmp_path / "m.pgsr", UNet(depth=2, width=4), Normalization(100, 300, 100, 2000),
                       {"config": {"context": 0}})
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    widget.model_file.value = model
    widget.export_to.value = tmp_path / "m.bmz"
    widget.export_button.clicked.emit()
    assert errors == ["Export: the bioimage.io package is a zip: name it *.zip, got 'm.bmz'"]
    movie = simulate_movie("ap2", 4, (72, 80), seed=3).movie  # alternating; its first low frame is the test input
    widget.movie.value = viewer.add_image(movie, name="sample")
    widget.frames.value = "low"
    widget.export_authors.value = "A. Microscopist,  B. Biologist ,"
    widget.export_to.value = tmp_path / "m.zip"
    widget.export_button.clicked.emit()  # in a worker thread: the button is off until it ends
    assert not widget.export_button.enabled
    qtbot.waitUntil(lambda: widget.export_button.enabled, timeout=120_000)
    assert widget.export_button.text == "Export model for bioimage.io"
    assert infos == [f"Export: {tmp_path / 'm.zip'} written; bioimageio.core's test passed"] and len(errors) == 1
    with zipfile.ZipFile(tmp_path / "m.zip") as package:
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        test_input = np.load(io.BytesIO(package.read(rdf["inputs"][0]["test_tensor"]["source"])))
    assert [author["name"] for author in rdf["authors"]] == ["A. Microscopist", "B. Biologist"]
    first_low = split_alternating(movie).read(0)[0]
    assert test_input.shape == (1, 1, 64, 64)
    np.testing.assert_array_equal(test_input[0, 0], first_low[4:68, 8:72])
    widget.model_file.value = tmp_path / "m.zip"  # the package opens as a model file
    qtbot.waitUntil(lambda: load_model(tmp_path / "m.zip").describe() in widget.about.value, timeout=60_000)
    widget.export_button.clicked.emit()
    assert errors[-1] == f"Export: {tmp_path / 'm.zip'} exists; choose another name"


def test_the_training_eta_counts_hours():
    assert train_widget._clock(75) == "1:15" and train_widget._clock(3900) == "1:05:00"  # (was 05:00)


def test_the_exposure_check_reads_the_movie_off_the_gui_thread(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import threading

    from napari_pgsr import pairs as pairs_module

    readers = []
    read = pairs_module.iter_frame_means

    def spy(*args, **kwargs):
        readers.append(threading.current_thread() is threading.main_thread())
        return read(*args, **kwargs)
    monkeypatch.setattr(pairs_module, "iter_frame_means", spy)
    path = write_movie(tmp_path / "m.tif", simulate_movie("ap2", 20, (64, 64), seed=0).movie, pixel_size_um=0.16)
    viewer = make_napari_viewer()
    trainer = _train_widget(viewer, tmp_path, 2)
    trainer.movies.value = [path]
    trainer.run()  # every frame is read for the exposures: in the worker, as napari keeps drawing
    qtbot.waitUntil(lambda: trainer._worker is None, timeout=60_000)
    assert readers == [False] and trainer.status.state is RunState.DONE
    _, restorer = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    restorer.model_file.value, restorer.frames.value = tmp_path / "gui.pgsr", "low"
    restorer.movie.value = viewer.open(str(path), plugin="napari-pgsr")[0]
    restorer.run()  # lazily: only the low frames' indices are worked out first
    qtbot.waitUntil(lambda: "m restored" in viewer.layers, timeout=60_000)
    assert readers == [False, False] and viewer.layers["m restored"].data.shape == (10, 64, 64)


QUIT_MID_TRAINING = """
import sys, time
import napari
from qtpy.QtWidgets import QApplication

movie, output = sys.argv[1:]
viewer = napari.Viewer(show=False)
_, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Train")
# steps of about a second: the one under way when napari closes is still running as Python exits
widget.channels.value, widget.patch.value, widget.batch.value = 32, 64, 16
widget.steps.value, widget.preview_every.value, widget.device.value = 100_000, 0, "cpu"
widget.output.value, widget.movies.value = output, [movie]
widget.run()
began = time.time()
while widget.status.step < 2 and time.time() - began < 60:
    QApplication.instance().processEvents()
    time.sleep(0.01)
viewer.close()
"""  # and Python exits, as after napari's window is closed


def test_quitting_napari_mid_training_saves_the_model_before_python_exits(tmp_path):
    import subprocess
    import sys

    path = write_movie(tmp_path / "m.tif", simulate_movie("ap2", 20, (64, 64), seed=0).movie, pixel_size_um=0.16)
    done = subprocess.run([sys.executable, "-c", QUIT_MID_TRAINING, str(path), str(tmp_path / "t.pgsr")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = load_model(tmp_path / "t.pgsr").training_state  # (a daemon thread was killed before saving)
    assert state["reason"] == "stopped" and 2 <= state["step"] < 200


def _threads_named(prefix: str) -> list:
    import threading

    return [thread for thread in threading.enumerate() if thread.name.startswith(prefix)]


def test_closing_napari_mid_run_stops_training_with_its_model_saved_and_restoring(make_napari_viewer, qtbot,
                                                                                  tmp_path, monkeypatch):
    from napari_pgsr.data import Normalization
    from napari_pgsr.modelfile import save_model
    from napari_pgsr.models.unet import UNet

    shown = []
    for module in (_workers, train_widget, apply_widget):
        monkeypatch.setattr(module, "show_error", shown.append)
        monkeypatch.setattr(module, "show_info", shown.append, raising=False)
    path = write_movie(tmp_path / "m.tif", simulate_movie("ap2", 20, (64, 64), seed=0).movie, pixel_size_um=0.16)
    viewer = make_napari_viewer()
    _, trainer = viewer.window.add_plugin_dock_widget("napari-pgsr", "Train")
    trainer.channels.value, trainer.patch.value, trainer.batch.value = 4, 32, 2
    trainer.steps.value, trainer.preview_every.value, trainer.device.value = 100_000, 0, "cpu"
    trainer.output.value = tmp_path / "t.pgsr"
    trainer.movies.value = [path]
    trainer.run()
    qtbot.waitUntil(lambda: trainer.status.step >= 2, timeout=60_000)
    viewer.close()  # napari asks its workers to quit and deletes the widgets
    qtbot.waitUntil(lambda: not _threads_named("napari-pgsr-training_job"), timeout=60_000)
    state = load_model(tmp_path / "t.pgsr").training_state  # saved as after Stop (the first checkpoint: 200)
    assert state["reason"] == "stopped" and 2 <= state["step"] < 200 and not shown

    model = save_model(tmp_path / "m.pgsr", UNet(depth=1, width=8), Normalization(0, 1, 0, 1), {})
    viewer = make_napari_viewer()
    _, restorer = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    restorer.model_file.value = model
    restorer.movie.value = viewer.add_image(np.random.default_rng(0).random((300, 128, 128), np.float32), name="m")
    restorer.output.value, restorer.device.value = tmp_path / "out.tif", "cpu"
    restorer.run()
    qtbot.waitUntil(lambda: restorer.progress.value >= 1, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not _threads_named("napari-pgsr-restore-job"), timeout=30_000)
    assert not (tmp_path / "out.tif").exists() and not list(tmp_path.glob(".out.tif*")) and not shown
