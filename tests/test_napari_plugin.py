"""The plugin inside a real napari viewer: reader, writer and sample data through npe2."""

import numpy as np
import pytest
import tifffile

from napari_pgsr._writer import write_image
from napari_pgsr.io import read_movie, write_movie


def test_viewer_opens_movie_with_plugin_reader_lazily_and_with_scale(make_napari_viewer, movie_file):
    viewer = make_napari_viewer()
    layers = viewer.open(str(movie_file), plugin="napari-pgsr")
    layer = layers[0]
    assert layer.name == "ap2" and layer.data.shape == (40, 64, 64)
    assert hasattr(layer.data, "dask")  # still lazy
    np.testing.assert_allclose(layer.scale, (1.0, 0.16, 0.16))
    assert layer.metadata["source_path"] == str(movie_file.resolve())


def test_movie_without_pixel_size_keeps_unit_scale_and_says_so(make_napari_viewer, tmp_path):
    path = write_movie(tmp_path / "nopixel.tif", np.ones((4, 16, 16), np.uint16))
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin="napari-pgsr")[0]
    np.testing.assert_allclose(layer.scale, (1.0, 1.0, 1.0))
    assert "pixel size not recorded" in layer.metadata["note"]


def test_a_single_frame_opens_as_an_image_with_its_pixel_size(make_napari_viewer, tmp_path):
    frame = np.arange(256, dtype=np.uint16).reshape(16, 16)
    path = write_movie(tmp_path / "snapshot.tif", frame, pixel_size_um=0.16)
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin="napari-pgsr")[0]  # (refused as "not a movie" before)
    assert layer.name == "snapshot" and layer.ndim == 2
    np.testing.assert_array_equal(layer.data, frame)
    np.testing.assert_allclose(layer.scale, (0.16, 0.16))
    before = path.read_bytes()  # and, read into memory, it is still never saved over its file
    with pytest.warns(UserWarning) as said:
        assert viewer.layers.save(str(path), selected=False, plugin="napari-pgsr") == []
    assert path.read_bytes() == before
    reasons = [str(w.message) for w in said]  # the writer's reason, not only napari's "not a valid writer"
    assert any(f"did not save {path}" in r and "file the data was read from" in r for r in reasons), reasons


def test_reader_declines_colour_images_z_stacks_and_hyperstacks(tmp_path):
    """It claimed every .tif and then refused these, where napari's own reader opens them."""
    from napari_pgsr._reader import get_reader
    files = {"rgb.tif": (np.zeros((64, 64, 3), np.uint8), {"photometric": "rgb"}),
             "zstack.tif": (np.zeros((10, 64, 64), np.uint16), {"imagej": True, "metadata": {"axes": "ZYX",
                                                                                            "spacing": 0.3}}),
             "hyper.tif": (np.zeros((5, 2, 64, 64), np.uint16), {"imagej": True, "metadata": {"axes": "TCYX"}}),
             "movie.tif": (np.zeros((5, 64, 64), np.uint16), {"imagej": True, "metadata": {"axes": "TYX"}}),
             "frame.tif": (np.zeros((64, 64), np.uint16), {})}
    for name, (data, options) in files.items():
        tifffile.imwrite(tmp_path / name, data, **options)
    claimed = {name for name in files if get_reader(str(tmp_path / name)) is not None}
    assert claimed == {"movie.tif", "frame.tif"}
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")  # damaged: claimed, so the error says what is wrong
    assert get_reader(str(tmp_path / "broken.tif")) is not None


def test_bad_file_error_names_the_file(make_napari_viewer, tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.tif"):
        viewer.open(str(tmp_path / "broken.tif"), plugin="napari-pgsr")


@pytest.mark.parametrize("name", ["saved.tif", "saved.ome.tif"])
def test_save_layer_with_plugin_writer_round_trips_pixel_size(make_napari_viewer, movie_file, tmp_path, name):
    viewer = make_napari_viewer()
    viewer.open(str(movie_file), plugin="napari-pgsr")
    out = tmp_path / name
    viewer.layers.save(str(out), selected=False, plugin="napari-pgsr")
    saved = read_movie(out)
    assert saved.pixel_size_um == pytest.approx(0.16)
    np.testing.assert_array_equal(saved.data.compute(), read_movie(movie_file).data.compute())


def test_writer_never_overwrites_the_file_a_layer_came_from(make_napari_viewer, movie_file):
    viewer = make_napari_viewer()
    viewer.open(str(movie_file), plugin="napari-pgsr")
    before = movie_file.read_bytes()
    with pytest.warns(UserWarning, match="file the data was read from"):  # the writer's reason is said
        assert viewer.layers.save(str(movie_file), selected=False, plugin="napari-pgsr") == []
    layer = viewer.layers[0]
    with pytest.raises(ValueError, match="file the data was read from"):
        write_image(str(movie_file), layer.data, {"metadata": layer.metadata, "scale": layer.scale})
    assert movie_file.read_bytes() == before


@pytest.mark.parametrize("key", ["ap2", "beads", "single_molecules"])
def test_sample_data_opens_as_alternating_movie_with_truth(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pgsr", key)
    image, truth = viewer.layers
    assert image.data.shape == (100, 256, 256) and image.data.dtype == np.uint16
    np.testing.assert_allclose(image.scale, (1.0, 0.16, 0.16))
    assert truth.data.shape[1] == 3 and len(truth.data) > 0 and not truth.visible
    assert image.metadata["low_first"] is True
    baseline = 100.0  # camera offset in ADU
    assert image.data[1].mean() - baseline > 5 * (image.data[0].mean() - baseline)


def test_layer_without_pixel_size_is_saved_without_one(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((3, 8, 8), np.uint16), name="made here")
    out = tmp_path / "made_here.ome.tif"
    viewer.layers.save(str(out), selected=False, plugin="napari-pgsr")
    assert read_movie(out).pixel_size_um is None  # napari's default scale 1 is not 1 um


@pytest.mark.parametrize("scale, unit, expected_um", [(108.0, "nm", 0.108), (0.000108, "mm", 0.108),
                                                     (0.108, "µm", 0.108), (0.16, "pixel", 0.16)])
def test_writer_converts_the_layers_unit_to_micrometres(make_napari_viewer, tmp_path, scale, unit, expected_um):
    """A layer at 108 nm per pixel was saved with a 108 um pixel: the writer read every scale as um."""
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((3, 8, 8), np.uint16), name="united", scale=(1, scale, scale),
                     units=("s", unit, unit))
    out = tmp_path / "united.tif"
    viewer.layers.save(str(out), selected=False, plugin="napari-pgsr")
    assert read_movie(out).pixel_size_um == pytest.approx(expected_um)
    with pytest.raises(ValueError, match=r"timed.tif: the layer's x unit is 's', not a length"):
        write_image(str(tmp_path / "timed.tif"), np.ones((3, 8, 8)), {"scale": (1, 2, 2), "units": ("s", "s", "s")})


def test_writer_refuses_rgb_and_multiscale_layers_by_name(tmp_path):
    """An RGB layer (Y x X x 3) was saved as a movie of 100 frames of 120 x 3 pixels."""
    with pytest.raises(ValueError, match=r"rgb.tif: the layer is an RGB image"):
        write_image(str(tmp_path / "rgb.tif"), np.zeros((100, 120, 3), np.uint8), {"rgb": True})
    pyramid = [np.zeros((2, 16, 16)), np.zeros((2, 8, 8))]
    with pytest.raises(ValueError, match=r"pyramid.tif: the layer is a multiscale pyramid"):
        write_image(str(tmp_path / "pyramid.tif"), pyramid, {"multiscale": True})
    assert not list(tmp_path.iterdir())
