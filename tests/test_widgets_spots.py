"""The 'Spots' dock widget driven in a real napari viewer."""

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

from napari_pgsr._widgets import _spot_results, _workers, spots_widget
from napari_pgsr._widgets._grid_view import canvas_grid
from napari_pgsr._widgets._spot_results import viewer_camera
from napari_pgsr._widgets.spots_widget import SpotsWidget
from napari_pgsr.analysis import CameraCalibration, measure_across, read_points_csv
from napari_pgsr.physics import render_spots

TRUTH = np.array([[12.0, 14.0], [30.0, 40.0], [45.0, 20.0], [50.0, 52.0]])


@pytest.fixture
def messages(monkeypatch):
    shown = {"error": [], "warning": []}
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    monkeypatch.setattr(spots_widget, "show_error", shown["error"].append)
    monkeypatch.setattr(spots_widget, "show_warning", shown["warning"].append)
    monkeypatch.setattr(_workers, "show_error", shown["error"].append)
    monkeypatch.setattr(_spot_results, "show_error", shown["error"].append)
    return shown


def _images(rng):
    expected = render_spots((64, 64), TRUTH[:, 0], TRUTH[:, 1], np.full(len(TRUTH), 3000.0), 1.0) + 20
    return {"high": rng.poisson(expected).astype(np.float32), "low": rng.poisson(expected / 10).astype(np.float32)}


def _widget(viewer) -> SpotsWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Spots")
    assert isinstance(widget, SpotsWidget)
    return widget


def _viewer_with_images(make_napari_viewer, rng):
    viewer = make_napari_viewer()
    images = _images(rng)
    for name, image in images.items():
        viewer.add_image(image, name=name, scale=(0.16, 0.16), metadata={"pixel_size_um": 0.16})
    widget = _widget(viewer)
    widget.reference.value = viewer.layers["high"]
    return viewer, widget, images


def test_labels_measured_across_two_layers_match_the_core_call(make_napari_viewer, rng, messages, qtbot,
                                                               monkeypatch):
    monkeypatch.delenv("NAPARI_PGSR_SYNC")  # the real thread worker
    viewer, widget, images = _viewer_with_images(make_napari_viewer, rng)
    assert widget.pixel_size.value == 160.0 and set(widget.images.value) == {"high", "low"}
    labels = widget.new_labels()
    assert labels.mode == "add" and labels.ndim == 2
    for y, x in TRUTH + [1, -1]:  # clicks a pixel off the spots: they snap to the maxima
        labels.add([y, x])
    np.testing.assert_array_equal(labels.data, TRUTH)
    widget.measure()
    assert not widget.measure_button.enabled
    qtbot.waitUntil(lambda: widget.measure_button.enabled, timeout=20_000)
    assert messages["error"] == [] and widget.progress.value == widget.progress.max == 2 * len(TRUTH)  # fits
    assert widget.progress.native.text() == f"{2 * len(TRUTH)} / {2 * len(TRUTH)} fitted"
    results = widget.results
    assert results.spot_table.rowCount() == 2 * len(TRUTH) and results.summary_table.rowCount() == 2
    core = measure_across(images, TRUTH, pixel_size_nm=160.0, camera=CameraCalibration(0.0, 1.0, 2.0))
    pd.testing.assert_frame_equal(widget.report.table, core.table)
    header = [results.summary_table.horizontalHeaderItem(c).text() for c in range(results.summary_table.columnCount())]
    fwhm = results.summary_table.item(0, header.index("median_fwhm_nm")).data(0)
    assert fwhm == pytest.approx(core.summary["median_fwhm_nm"][0], abs=1e-3)
    assert 300 < fwhm < 450  # sigma 1 px of 160 nm: FWHM 377 nm
    # sorting by FWHM is numeric
    table = results.spot_table
    column = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())].index("fwhm_nm")
    table.sortItems(column)
    values = [table.item(r, column).data(0) for r in range(table.rowCount())]
    assert values == sorted(values)
    # a click on a row centres the view on the spot
    table.cellClicked.emit(0, 0)
    y_row = table.item(0, [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())].index("y")).data(0)
    assert viewer_camera(viewer).center[-2] == pytest.approx(y_row * 0.16, abs=1e-3)


@dataclass
class MouseEvent:
    """What napari's mouse callbacks read from a vispy event (as in napari's own Points tests)."""

    type: str
    position: tuple
    modifiers: tuple = ()
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [0, 1])


def click(layer, world_position, modifiers=()):
    """A press and release at the same place, through the layer's mouse callbacks (add mode adds a point)."""
    for kind, callbacks in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        callbacks(layer, ReadOnlyWrapper(MouseEvent(kind, tuple(world_position), modifiers), exceptions=("handled",)))


def test_clicks_snap_unless_shift_is_held_also_on_a_shifted_image(make_napari_viewer, rng, messages):
    viewer = make_napari_viewer()
    image = _images(rng)["high"]
    viewer.add_image(image, name="high", scale=(0.16, 0.16), translate=(5.0, 5.0))
    widget = _widget(viewer)
    labels = widget.new_labels()
    np.testing.assert_allclose(labels.translate, [5, 5])
    to_world = lambda yx: np.asarray(yx) * 0.16 + 5.0  # noqa: E731
    click(labels, to_world([31.0, 41.0]))  # a pixel off the spot at (30, 40): snaps onto it
    click(labels, to_world([13.0, 13.0]), modifiers=("Shift",))  # exactly where clicked
    np.testing.assert_allclose(labels.data, [[30.0, 40.0], [13.0, 13.0]], atol=1e-6)
    labels.data = labels.data[:1]
    widget.measure()
    row = widget.report.table.iloc[0]
    assert row["flag"] == "" and row["y"] == pytest.approx(30.0, abs=0.1) and row["x"] == pytest.approx(40.0, abs=0.1)


def test_grid_view_shows_the_labels_on_every_image_and_edits_on_any_reach_all(make_napari_viewer, rng,
                                                                                messages):
    viewer, widget, images = _viewer_with_images(make_napari_viewer, rng)
    viewer.add_image(images["high"] * 2, name="restored", scale=(0.16, 0.16))
    viewer.add_image(images["low"], name="hidden", visible=False)
    grid = canvas_grid(viewer)
    grid.shape, grid.enabled = (1, 3), True
    labels = widget.new_labels()
    layers = viewer.layers
    cells = {layer.name: grid.position(i, layers) for i, layer in enumerate(layers)}
    # one image and its labels per cell, the images in their order; the labels themselves over the reference
    assert cells == {"high": (0, 0), "spot labels": (0, 0), "low": (0, 1), "spot labels on low": (0, 1),
                     "restored": (0, 2), "spot labels on restored": (0, 2), "hidden": (-1, -1)}
    assert layers.selection.active.name == "spot labels"  # still the one the layer controls show
    on_low = layers["spot labels on low"]
    click(on_low, np.array([31.0, 41.0]) * 0.16)  # on the low image's cell, a pixel off: snaps on the high
    click(layers["spot labels on restored"], np.array([13.0, 13.0]) * 0.16, modifiers=("Shift",))
    expected = [[30.0, 40.0], [13.0, 13.0]]
    for name in ("spot labels", "spot labels on low", "spot labels on restored"):
        np.testing.assert_allclose(layers[name].data, expected, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(layers[name].size, [6, 6])  # the labels' look, not napari's default
        np.testing.assert_array_equal(layers[name].border_color, labels.border_color)
    labels.size = [6, 9]
    on_low.selected_data = {0}  # deleted on a copy: the labels lose that point, with its own size
    on_low.remove_selected()
    np.testing.assert_allclose(labels.data, [[13.0, 13.0]])
    np.testing.assert_array_equal(labels.size, [9])
    labels.size = [6]
    on_low.selected_data = {0}
    on_low.remove_selected()
    labels.add([[30.0, 40.0], [45.0, 20.0]])
    for name in ("spot labels", "spot labels on low", "spot labels on restored"):
        np.testing.assert_allclose(layers[name].data, [[30.0, 40.0], [45.0, 20.0]], atol=1e-6, err_msg=name)
    labels.border_color = "magenta"  # restyled in the layer controls: every copy follows
    np.testing.assert_allclose(layers["spot labels on restored"].border_color, [[1, 0, 1, 1]] * 2)
    widget.images.value = ["low", "high"]
    widget.measure()  # the copies change nothing in what is measured
    assert list(widget.report.summary["spots"]) == [2, 2]
    grid.enabled = False
    assert [layer.name for layer in layers] == ["high", "low", "restored", "hidden", "spot labels"]  # on top
    assert grid.stride == 1
    grid.enabled = True
    widget.on_every_image.value = False
    assert "spot labels on low" not in layers and grid.stride == 1


def _cells(viewer) -> dict[tuple, list[str]]:
    grid = canvas_grid(viewer)
    cells = {}
    for i, layer in enumerate(viewer.layers):
        if layer.visible:
            cells.setdefault(grid.position(i, viewer.layers), []).append(layer.name)
    return cells


def test_grid_labels_follow_renames_deletions_and_hidden_images(make_napari_viewer, rng, messages, qtbot):
    viewer, widget, images = _viewer_with_images(make_napari_viewer, rng)
    viewer.add_image(images["high"] * 2, name="restored")
    grid = canvas_grid(viewer)
    grid.stride = -1  # the user's own stride comes back when the copies go
    grid.enabled = True
    labels = widget.new_labels()
    labels.add([30.0, 40.0])
    labels.name = "mine"  # rebuilt once the event is over: copies named after it, no stale ones
    qtbot.waitUntil(lambda: "mine on low" in viewer.layers)
    assert sorted(cell for cell in _cells(viewer).values()) == [["high", "mine"], ["low", "mine on low"],
                                                                ["restored", "mine on restored"]]
    before = [layer.name for layer in viewer.layers]
    widget.labels_layer.value = viewer.layers["mine on low"]  # a copy chosen means its labels layer
    qtbot.wait(20)
    assert widget.labels_layer.value.name == "mine" and [layer.name for layer in viewer.layers] == before
    viewer.layers.remove("mine on restored")  # pairs would shift: rebuilt
    qtbot.waitUntil(lambda: "mine on restored" in viewer.layers)
    labels.visible = False  # hidden labels: hidden on every image
    assert not viewer.layers["mine on low"].visible
    labels.visible = True
    viewer.layers["low"].visible = False  # a hidden image loses its copy
    qtbot.waitUntil(lambda: "mine on low" not in viewer.layers)
    assert sorted(_cells(viewer).values()) == [["high", "mine"], ["restored", "mine on restored"]]
    viewer.layers.remove("restored")
    qtbot.waitUntil(lambda: "mine on restored" not in viewer.layers)  # one image left: nothing to copy
    labels.add([45.0, 20.0])
    assert len(labels.data) == 2 and len(viewer.layers) == 3 and grid.stride == -1


def test_grid_labels_survive_a_reopened_dock_hidden_labels_and_a_deletion_with_a_copy(make_napari_viewer, rng,
                                                                                         messages, qtbot):
    viewer, widget, images = _viewer_with_images(make_napari_viewer, rng)
    canvas_grid(viewer).enabled = True
    widget.new_labels().add([30.0, 40.0])
    viewer.window.remove_dock_widget(widget.native.parent())  # the dock's close button; napari keeps the widget
    again = _widget(viewer)  # the new one takes over: one set of copies, no rebuilding each other's copies
    again.reference.value = viewer.layers["high"]
    qtbot.wait(100)
    names = [layer.name for layer in viewer.layers]
    qtbot.wait(100)
    assert [layer.name for layer in viewer.layers] == names and sorted(names) == [
        "high", "low", "spot labels", "spot labels on low"]
    viewer.layers["spot labels"].visible = False
    viewer.add_image(images["high"], name="restored")  # a rebuild keeps the hidden labels hidden
    qtbot.waitUntil(lambda: "spot labels on restored" in viewer.layers)
    assert not any(layer.visible for layer in viewer.layers if layer.name.startswith("spot labels"))
    viewer.layers.selection = {viewer.layers["spot labels on low"], viewer.layers["spot labels"]}
    viewer.layers.remove_selected()  # the labels and a copy at once: no error, no copies left
    qtbot.waitUntil(lambda: "spot labels on restored" not in viewer.layers)
    assert [layer.name for layer in viewer.layers] == ["high", "low", "restored"] and not messages["error"]


def test_side_by_side_again_keeps_the_labels_on_every_image(make_napari_viewer, rng, messages):
    viewer = make_napari_viewer()
    images = _images(rng)
    low = viewer.add_image(images["low"], name="cells low")
    viewer.add_image(images["high"], name="cells high")
    _, restore = viewer.window.add_plugin_dock_widget("napari-pgsr", "Restore")
    restore.movie.value = low
    restore.restored_layer = viewer.add_image(images["high"] * 2, name="restored")
    restore.side_by_side()
    widget = _widget(viewer)
    widget.reference.value = viewer.layers["cells high"]
    widget.new_labels().add([30.0, 40.0])
    restore.side_by_side()  # hides every other layer, the labels too, and reorders: they come back
    grid = canvas_grid(viewer)
    cells = {layer.name: grid.position(i, viewer.layers) for i, layer in enumerate(viewer.layers)}
    assert cells["cells low"] == cells["spot labels on cells low"] and cells["cells high"] == cells["spot labels"]
    assert cells["restored"] == cells["spot labels on restored"] and len(set(cells.values())) == 3
    assert len(viewer.layers["spot labels on restored"].data) == 1


def test_frame_y_x_csv_on_a_scaled_single_frame(make_napari_viewer, rng, messages, tmp_path):
    viewer, widget, _ = _viewer_with_images(make_napari_viewer, rng)
    (tmp_path / "movie_labels.csv").write_text("frame,y,x\n0,30,40\n0,45,20\n3,12,14\n")
    widget.load_labels(tmp_path / "movie_labels.csv")
    layer = viewer.layers["movie_labels"]
    np.testing.assert_allclose(layer.scale, [1, 0.16, 0.16])
    viewer.dims.set_current_step(0, 0)
    widget.measure()
    table = widget.report.table
    assert len(table) == 4 and (table["flag"] == "").all()  # two frame-0 labels on two images
    np.testing.assert_allclose(table["y"][:2], [30, 45], atol=0.1)


def test_suggestions_keep_out_of_a_samples_true_spots_and_a_users_layer_of_their_name(make_napari_viewer,
                                                                                         messages):
    """On a sample, the Labels box starts at its hidden true spots: Accept added the suggestions to them."""
    from napari_pgsr._sample_data import sample_layers

    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_layers("beads", n_frames=4, size=64):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    truth = viewer.layers["fluorescent beads (simulated) true spots"]
    before = truth.data.copy()
    own = viewer.add_points(np.array([[1.0, 2.0, 3.0]]), name="suggested spots")  # the user's, by chance
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Spots")
    widget.reference.value = viewer.layers["fluorescent beads (simulated)"]
    widget.labels_layer.value = truth
    widget.suggest()
    assert own in viewer.layers and own.data.tolist() == [[1.0, 2.0, 3.0]]  # it was removed
    widget.accept_suggestions()
    np.testing.assert_array_equal(truth.data, before)
    assert len(viewer.layers["spot labels"].data) > 0 and own in viewer.layers
    # the pixel size follows the image suggested on: one with none known leaves it unknown, not the last one's
    assert widget.pixel_size.value == 160.0
    widget.reference.value = viewer.add_image(np.zeros((4, 64, 64), np.float32), name="no pixel size")
    assert widget.pixel_size.value == 0.0
    widget.pixel_size.value = 100.0  # typed by hand: kept
    widget.reference.value = viewer.add_image(np.zeros((4, 64, 64), np.float32), name="none either")
    assert widget.pixel_size.value == 100.0


def test_camera_fields_keep_an_emccds_small_values_and_a_12_bit_cameras_saturation(make_napari_viewer, rng,
                                                                                      messages):
    """0.0333 e- per grey level (10 e-/ADU at EM gain 300) was kept as 0.03, 0.004 as 0.0 (photons 0);
    a spot clipped at 4095 by a 12-bit camera counted as a usable, 297 nm wide fit."""
    viewer, widget, _ = _viewer_with_images(make_napari_viewer, rng)
    widget.electrons.value = 0.0333
    assert widget.electrons.value == pytest.approx(0.0333)
    widget.electrons.value = 0.004
    assert widget.electrons.value == pytest.approx(0.004)
    clipped = np.minimum(viewer.layers["high"].data, 120.0)  # every spot's top cut off at 120 grey levels
    viewer.add_image(clipped, name="clipped", scale=(0.16, 0.16))
    widget.images.value = ["clipped"]
    widget.new_labels().data = TRUTH
    widget.saturation.value = 120
    widget.measure()
    assert set(widget.report.table["flag"]) == {"saturated"}
    # an sCMOS's read noise (the field's) makes the precision worse
    widget.images.value, widget.saturation.value, widget.emccd.value = ["high"], 0, False
    widget.measure()
    plain = widget.report.table["precision_nm"].to_numpy()
    widget.read_noise.value = 2.0
    widget.measure()
    assert np.all(widget.report.table["precision_nm"].to_numpy() > plain)


def test_suggest_accept_save_and_load(make_napari_viewer, rng, messages, tmp_path):
    viewer, widget, _ = _viewer_with_images(make_napari_viewer, rng)
    widget.accept_suggestions()
    assert "no suggestions" in messages["error"][-1]
    from qtpy.QtCore import QCoreApplication, QEvent

    def connections():  # (PyQt drops a disconnected slot's proxy at the next deferred delete)
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        return widget.native.receivers(widget.native.destroyed)

    before = connections()
    widget.suggest()
    assert connections() == before  # each run added two for good
    suggested = viewer.layers["suggested spots"].data
    assert len(suggested) == len(TRUTH)
    widget.accept_suggestions()  # with no labels layer yet: a new one
    assert len(viewer.layers["spot labels"].data) == len(TRUTH)
    viewer.layers.remove("spot labels")
    widget.suggest()
    labels = widget.new_labels()
    labels.add([30.0, 40.0])
    widget.accept_suggestions()
    assert "suggested spots" not in viewer.layers
    assert len(labels.data) == len(TRUTH)  # the one already labelled is not duplicated
    widget.save_labels(tmp_path / "labels.csv")
    np.testing.assert_array_equal(read_points_csv(tmp_path / "labels.csv"), labels.data)
    widget.load_labels(tmp_path / "labels.csv")
    assert viewer.layers["labels"].data.tolist() == labels.data.tolist()
    assert widget.labels_layer.value is viewer.layers["labels"]
    (tmp_path / "bad.csv").write_text("a,b,c,d\nx,y,z,w\n")
    widget.load_labels(tmp_path / "bad.csv")
    assert "bad.csv: expected napari points columns" in messages["error"][-1]
    widget.measure()
    paths = widget.results.export(tmp_path / "spots.csv")
    assert [p.name for p in paths] == ["spots.csv", "spots_summary.csv", "spots_plots.png"]
    assert len(pd.read_csv(paths[0])) == 2 * len(TRUTH) and paths[2].stat().st_size > 10_000
    # the labels file the table would have replaced (the save dialog asks about the name, not what it holds)
    before = (tmp_path / "labels.csv").read_bytes()
    assert widget.results.export(tmp_path / "labels.csv") == []
    assert "labels.csv is a file a layer was read from" in messages["error"][-1]
    assert (tmp_path / "labels.csv").read_bytes() == before and not (tmp_path / "labels_summary.csv").exists()


def test_bad_input_gives_clear_messages(make_napari_viewer, rng, messages):
    viewer, widget, images = _viewer_with_images(make_napari_viewer, rng)
    widget.measure()
    assert "choose or create a labels layer" in messages["error"][-1]
    labels = widget.new_labels()
    widget.measure()
    assert "labels layer 'spot labels' is empty" in messages["error"][-1]
    labels.add([30.0, 40.0])
    viewer.add_image(np.zeros((32, 32)), name="small")
    widget.images.value = ["high", "small"]
    widget.measure()
    assert "image 'small' has shape (32, 32) but 'high' has (64, 64)" in messages["error"][-1]
    # 3-D labels of a movie on 2-D images: the points of the current frame are measured, and it is said
    widget.images.value = ["high", "low"]
    movie_labels = viewer.add_points([[0, 12, 14], [0, 30, 40], [1, 45, 20]], ndim=3, scale=(1, 0.16, 0.16))
    widget.labels_layer.value = movie_labels
    viewer.dims.set_current_step(0, 0)
    widget.measure()
    assert "measuring frame 0" in messages["warning"][-1]
    assert len(widget.report.table) == 4 and "2 of 3 points lie on frame 0" in widget.note.value
    # points outside the image are flagged, not crashed on
    labels.add([90.0, 5.0])
    widget.labels_layer.value = labels
    widget.measure()
    assert widget.report.table["flag"].tolist().count("outside image") == 2
    # a renamed layer is offered under its new name; a closed results panel comes back
    viewer.layers["low"].name = "raw low"
    assert "raw low" in widget.images.choices and "low" not in widget.images.choices
    viewer.window.remove_dock_widget(widget.results.native)
    widget.images.value = ["high", "raw low"]
    widget.measure()
    assert "Spot measurements" in viewer.window.dock_widgets
    assert set(widget.report.table["image"]) == {"high", "raw low"}


def test_movie_layers_measure_each_label_on_its_frame(make_napari_viewer, rng, messages):
    viewer = make_napari_viewer()
    frames = np.stack([_images(rng)["high"], np.roll(_images(rng)["high"], 3, axis=1)])
    viewer.add_image(frames, name="movie")
    widget = _widget(viewer)
    widget.reference.value = viewer.layers["movie"]
    labels = widget.new_labels()
    assert labels.ndim == 3
    viewer.dims.set_current_step(0, 1)
    labels.add([1, 12.0, 16.0])  # snaps on frame 1, where the spot moved 3 px right
    np.testing.assert_array_equal(labels.data, [[1, 12, 17]])
    widget.measure()
    assert widget.report.table["frame"].tolist() == [1] and widget.report.table["flag"][0] == ""


def test_measuring_can_be_cancelled(make_napari_viewer, rng, messages, qtbot, monkeypatch):
    monkeypatch.delenv("NAPARI_PGSR_SYNC")
    viewer, widget, _ = _viewer_with_images(make_napari_viewer, rng)
    widget.new_labels().add([30.0, 40.0])

    def endless(images, points, **options):  # a measurement that would never end by itself
        done = 0
        while True:
            time.sleep(0.01)
            yield done, 10**9, "high"
            done += 1

    monkeypatch.setattr(spots_widget, "iter_measure_across", endless)
    widget.measure()
    assert widget.cancel_button.enabled and not widget.measure_button.enabled
    qtbot.waitUntil(lambda: widget.progress.value > 2, timeout=10_000)
    assert widget.progress.native.text().startswith("high: ")  # the image being fitted
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.measure_button.enabled, timeout=10_000)
    assert not widget.cancel_button.enabled and not hasattr(widget, "report") and messages["error"] == []

    class Finishing:  # a worker whose report is already on its way to the GUI thread as Cancel is pressed
        def quit(self):
            pass

    widget._worker = Finishing()
    widget.cancel()
    widget._show_report(object())  # arrives after "nothing was shown": dropped
    assert not hasattr(widget, "report") and widget.results is None


def test_suggestions_sit_on_a_moved_image_and_a_frame_it_lacks_is_said(make_napari_viewer, rng, messages,
                                                                        tmp_path):
    viewer = make_napari_viewer()
    high = viewer.add_image(_images(rng)["high"], name="high", translate=(10, 20))
    widget = _widget(viewer)
    widget.reference.value = high
    widget.suggest()
    widget.accept_suggestions()
    labels = widget.labels_layer.value
    world = labels.data * labels.scale + labels.translate
    found = sorted(np.round(world - high.translate).tolist())  # in the image's pixels
    assert len(found) == len(TRUTH) and np.allclose(found, sorted(TRUTH.tolist()), atol=1)
    # a 10-frame movie while the time slider is at frame 30 of a longer one
    viewer.add_image(np.zeros((40, 32, 32), np.float32), name="long")
    short = viewer.add_image(rng.random((10, 32, 32)).astype(np.float32), name="short")
    viewer.dims.set_current_step(0, 30)
    widget.reference.value = short
    widget.suggest()
    assert messages["error"][-1] == ("Spots: the frame shown (30) is outside 'short' (10 frames); move the time "
                                     "slider onto it")
    (tmp_path / "afile").write_text("")
    widget.save_labels(tmp_path / "afile" / "labels.csv")  # (a read-only folder, a full disk alike)
    assert messages["error"][-1].startswith("Spots: labels not saved: ")


def test_measure_on_keeps_the_users_picks_when_layers_come_and_go(make_napari_viewer, rng, messages):
    viewer, widget, _ = _viewer_with_images(make_napari_viewer, rng)
    assert set(widget.images.value) == {"high", "low"}
    widget.images.value = ["high"]  # the user measures on one
    widget.suggest()  # adds a points layer
    widget.new_labels()
    viewer.layers["high"].name = "high exposure"
    assert widget.images.value == ["high exposure"]
    viewer.add_image(np.zeros((64, 64), np.float32), name="restored")  # a new image of the shape joins
    viewer.add_image(np.zeros((8, 8), np.float32), name="small")
    assert widget.images.value == ["high exposure", "restored"]
    viewer.layers.remove("restored")
    assert widget.images.value == ["high exposure"]


def test_images_placed_differently_are_not_measured_at_one_set_of_pixels(make_napari_viewer, rng, messages):
    viewer, widget, _ = _viewer_with_images(make_napari_viewer, rng)
    viewer.layers["low"].translate = (3.2, 0)  # 20 pixels down
    widget.images.value = ["high", "low"]
    widget.new_labels().data = TRUTH
    widget.measure()
    assert messages["error"][-1] == ("Spots: image layer(s) ['low'] are placed differently from 'high' (scale or "
                                     "translate, in space or time): the labels would fall on other pixels or "
                                     "frames; measure them separately")


def test_movies_placed_apart_in_time_are_not_measured_at_one_frame(make_napari_viewer, messages):
    """A movie placed 2 frames later was measured at the first movie's frame numbers: 'no signal', no word."""
    movie = np.full((6, 32, 32), 100.0, np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(movie, name="A")
    viewer.add_image(movie.copy(), name="B", translate=(2, 0, 0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Spots")
    widget.reference.value = viewer.layers["A"]
    widget.images.value = ["A", "B"]
    widget.new_labels().data = np.array([[3.0, 16.0, 16.0]])
    widget.measure()
    assert "Spots: image layer(s) ['B'] are placed differently from 'A' (scale or translate, in space or time)" in (
        messages["error"][-1])


def test_a_row_clicked_goes_to_its_frame_of_a_layer_placed_later_in_time(make_napari_viewer):
    """The table's frame is the layer's own: a movie translated along time is shown at that frame."""
    from napari_pgsr._widgets._spot_results import SpotResults, fill_table

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((10, 32, 32)), name="raw")
    restored = viewer.add_image(np.zeros((10, 32, 32)), name="restored", translate=(5, 0, 0), scale=(1, 0.1, 0.1))
    results = SpotResults(viewer)
    fill_table(results.spot_table, pd.DataFrame({"image": ["restored"], "point": [0], "frame": [3], "y": [12.0],
                                                 "x": [20.0], "flag": [""]}))
    results.go_to_spot(0)
    assert restored.world_to_data(viewer.dims.point)[0] == pytest.approx(3)
    assert viewer_camera(viewer).center[-2:] == pytest.approx((1.2, 2.0))
