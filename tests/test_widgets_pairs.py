"""The 'Exposure pairs' dock widget driven in a real napari viewer."""

import numpy as np
import pytest

from napari_pgsr._widgets import _workers, pairs_widget
from napari_pgsr._widgets.pairs_widget import ExposurePairsWidget
from napari_pgsr.simulate import Acquisition, simulate_movie


@pytest.fixture
def errors(monkeypatch):
    shown = []
    monkeypatch.setattr(pairs_widget, "show_error", shown.append)
    monkeypatch.setattr(_workers, "show_error", shown.append)
    return shown


def _widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-pgsr", "Exposure pairs")
    assert isinstance(widget, ExposurePairsWidget)
    return widget


def test_pairs_widget_adds_low_and_high_layers_in_a_worker(make_napari_viewer, qtbot, movie_file, monkeypatch):
    viewer = make_napari_viewer()
    movie = viewer.open(str(movie_file), plugin="napari-pgsr")[0]
    widget = _widget(viewer)
    widget.movie.value = movie
    widget.run()
    qtbot.waitUntil(lambda: "ap2 high" in viewer.layers and widget.run_button.enabled, timeout=20_000)
    low, high = viewer.layers["ap2 low"], viewer.layers["ap2 high"]
    assert low.data.shape == high.data.shape == (20, 64, 64)
    np.testing.assert_allclose(low.scale, movie.scale)
    np.testing.assert_array_equal(np.asarray(low.data[2]), np.asarray(movie.data[4]))
    np.testing.assert_array_equal(np.asarray(high.data[2]), np.asarray(movie.data[5]))
    assert low.metadata["low_first"] is True and low.metadata["pairs"] == 20
    assert 7 < low.metadata["ratio"] < 13 and low.metadata["dropped_frames"] == []
    assert widget.result["pairs"].value == "20"
    assert widget.result["phase"].value.startswith("low first")
    assert widget.progress.value == 40
    # a movie removed while it is split gets no layers (they came, strays of a movie the user discarded)
    infos = []
    monkeypatch.setattr(pairs_widget, "show_info", infos.append)
    again = viewer.open(str(movie_file), plugin="napari-pgsr")[0]
    widget.movie.value = again
    widget.run()
    viewer.layers.remove(again)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=20_000)
    assert infos == [f"Exposure pairs: '{again.name}' was removed while it was split; no layers added"]
    assert f"{again.name} low" not in viewer.layers


def test_phase_override_and_dropped_frames_are_shown(make_napari_viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    sim = simulate_movie("beads", 41, (48, 48), acquisition=Acquisition(low_first=False))
    viewer = make_napari_viewer()
    layer = viewer.add_image(sim.movie, name="beads")
    widget = _widget(viewer)
    widget.movie.value = layer
    widget.run()
    assert viewer.layers["beads low"].metadata["low_first"] is False
    assert widget.result["dropped"].value == "40"
    widget.phase.value = "first frame is high"
    widget.run()
    assert viewer.layers["beads high"].data.shape == (20, 48, 48)
    assert [layer.name for layer in viewer.layers].count("beads low") == 1  # replaced, not duplicated


def test_a_users_own_layer_of_the_pairs_name_is_kept(make_napari_viewer, monkeypatch):
    """A file opened as 'beads low' was removed by the split of 'beads'."""
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    viewer = make_napari_viewer()
    layer = viewer.add_image(simulate_movie("beads", 10, (48, 48)).movie, name="beads")
    own = viewer.add_image(np.ones((4, 48, 48), np.float32), name="beads low")
    widget = _widget(viewer)
    widget.movie.value = layer
    widget.run()
    assert own in viewer.layers and own.name == "beads low" and own.data.shape == (4, 48, 48)
    made = [lay for lay in viewer.layers if lay.metadata.get("exposure") == "low"]
    assert len(made) == 1 and made[0].data.shape == (5, 48, 48)


def test_movie_without_alternation_gives_a_notification(make_napari_viewer, monkeypatch, errors):
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    steady = simulate_movie("ap2", 20, (32, 32), acquisition=Acquisition(low_exposure_s=0.1)).movie
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.movie.value = viewer.add_image(simulate_movie("beads", 10, (32, 32)).movie, name="alternating")
    widget.run()
    assert widget.result["pairs"].value == "5" and widget.last_pairs is not None
    widget.movie.value = viewer.add_image(steady, name="steady")
    widget.run()
    assert len(errors) == 1 and "steady" in errors[0] and "no alternating exposure" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["alternating", "alternating low", "alternating high",
                                                       "steady"] and widget.run_button.enabled
    # the last movie's result is not left showing as if it were this one's
    assert widget.last_pairs is None and {label.value for label in widget.result.values()} == {"-"}


def test_layer_with_wrong_dimensions_gives_a_notification(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.movie.value = viewer.add_image(np.zeros((32, 32)), name="single")
    widget.run()
    assert len(errors) == 1 and "'single' has shape (32, 32)" in errors[0]
    assert len(viewer.layers) == 1
