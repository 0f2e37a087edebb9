"""Export to the BioImage Model Zoo format: bioimageio.core's own validator passes the package, runs it as
napari-pgsr does, and the package reads back into the same model."""

import json
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_pgsr import cli
from napari_pgsr.bmz import _absolute_tolerance, _torchscript, check_package, export_bioimageio, import_bioimageio
from napari_pgsr.data import Normalization
from napari_pgsr.inference import restore
from napari_pgsr.modelfile import load_model, save_model
from napari_pgsr.models.progan import ProGANGenerator
from napari_pgsr.models.unet import UNet

NORM = Normalization(100.0, 350.0, 120.0, 2600.0)


def _saved(path, network, context=0, loss="mae"):
    torch.manual_seed(0)
    for p in network.parameters():  # far from the identity, so a wrong normalisation or channel shows
        p.data += 0.2 * torch.randn_like(p)
    return save_model(path, network, NORM, {"config": {"context": context, "loss": loss, "model": "unet"},
                                            "history": {"step": 7}, "provenance": {"names": ["test.tif"]}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bmz")
    model_path = _saved(folder / "m.pgsr", UNet(depth=2, width=4))
    return model_path, export_bioimageio(load_model(model_path), folder / "m.zip", authors=["A. Tester"])


def test_the_bioimageio_validator_passes_the_package_with_both_weight_formats(exported):
    rdf = yaml.safe_load(zipfile.ZipFile(exported[1]).read("rdf.yaml"))
    assert rdf["weights"]["torchscript"]["parent"] == "pytorch_state_dict"  # for deepImageJ, QuPath: no Python
    passed, summary = check_package(exported[1])  # each weight format in turn, on several allowed sizes
    assert passed, summary
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in summary, summary
        assert f"Run {weights} inference for inputs with batch_size: 2 and size parameter n: 2" in summary, summary


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript"])
def test_bioimageio_core_runs_the_package_as_napari_pgsr_does(exported, weights):
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    model_path, package = exported
    # on another frame, of a size not seen in the package: raw intensities in, raw intensities out
    frame = np.random.default_rng(3).integers(90, 900, (96, 80)).astype(np.float32)
    pipeline = create_prediction_pipeline(load_model_description(package), weight_format=weights)
    theirs = predict(model=pipeline, inputs={"low": frame[None, None]}).members["restored"].data.to_numpy()
    ours = restore(load_model(model_path), frame[None])[0]
    assert theirs.shape == (1, 1, 96, 80)
    # a border as wide as the declared halo sees how the tool pads the frame; inside it, the same numbers
    halo = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))["outputs"][0]["axes"][2]["halo"]
    assert halo == 24  # the depth-2 U-Net's reach (23 px), on its 4 px pooling grid
    # (fp32 sums in another order: differences of a few 1e-6 of the output's range)
    np.testing.assert_allclose(theirs[0, 0, halo:-halo, halo:-halo], ours[halo:-halo, halo:-halo], rtol=1e-4,
                               atol=1e-5 * np.ptp(ours))
    assert np.ptp(ours) > 100  # a model far from the identity, in the high exposure's units


def test_the_package_reads_back_into_the_same_model_and_predict_uses_it(exported, tmp_path):
    model_path, package = exported
    original, back = load_model(model_path), import_bioimageio(package)
    assert back.normalization == original.normalization
    assert back.metadata["config"] == original.metadata["config"]
    assert back.metadata["history"] == {"step": 7}
    weights, weights_back = original.network.state_dict(), back.network.state_dict()
    assert weights.keys() == weights_back.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, weights_back[name]), name
    assert load_model(package).describe() == original.describe()  # load_model reads packages too
    movie = np.random.default_rng(4).integers(90, 900, (6, 40, 36)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "movie.tif", movie, photometric="minisblack")
    assert cli.predict_main([str(package), str(tmp_path / "movie.tif"), "-o", str(tmp_path / "r.tif"),
                             "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "r.tif"), restore(original, movie), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kind", ["unet-bce-context-1", "progan"])
def test_context_sigmoid_and_progan_models_export_and_validate(tmp_path, kind):
    if kind == "progan":
        path = _saved(tmp_path / "g.pgsr", ProGANGenerator(1, 32, 0.05, resolution=32))
    else:
        path = _saved(tmp_path / "b.pgsr", UNet(in_channels=3, depth=2, width=4, output_activation="sigmoid"),
                      context=1, loss="bce")
    package = export_bioimageio(load_model(path), tmp_path / "p.zip")
    passed, summary = check_package(package)
    assert passed, summary
    rdf = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))
    channels = rdf["inputs"][0]["axes"][1]["channel_names"]
    post = [step["id"] for step in rdf["outputs"][0]["postprocessing"] if step["id"] != "ensure_dtype"]
    if kind == "progan":
        assert channels == ["t"] and post == ["scale_linear"]
    else:
        assert channels == ["t_minus_1", "t", "t_plus_1"] and post == ["sigmoid", "scale_linear"]
    network = load_model(path).network
    reach, step = network.receptive_field // 2, 2 ** network.depth  # progan (32 px): 51 px, halo 56
    halos = [axis["halo"] for axis in rdf["outputs"][0]["axes"][2:]]
    assert halos == [step * -(-reach // step)] * 2 and halos[0] >= reach  # tiles crop all of the reach
    back, original = import_bioimageio(package).network.state_dict(), network.state_dict()
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in back)


def test_a_trace_that_only_holds_for_the_traced_size_is_refused(tmp_path):
    class SizeDependent(torch.nn.Module):  # a branch on the size: the trace keeps the one it took
        def forward(self, x):
            return x * 2 if x.shape[-1] == 64 else x

    refused = r"TorchScript trace of the SizeDependent differs from it on \(2, 1, 72, 80\)"
    with pytest.raises(RuntimeError, match=refused):
        _torchscript(SizeDependent(), torch.rand(1, 1, 64, 64), 8, tmp_path / "t.pt")
    assert not (tmp_path / "t.pt").exists()
    _torchscript(torch.nn.Conv2d(1, 1, 3, padding=1), torch.rand(1, 1, 64, 64), 8, tmp_path / "t.pt")
    assert torch.jit.load(tmp_path / "t.pt")(torch.rand(3, 1, 8, 16)).shape == (3, 1, 8, 16)


def test_a_dim_test_frame_still_exports_within_the_specs_tolerance_rule(tmp_path):
    """The spec refuses an absolute tolerance above 1% of the test output's maximum: a dim (here background-
    subtracted) test frame with the usual 1e-4 of the high range (0.1) crashed the export."""
    network = UNet(depth=1, width=4)
    with torch.no_grad():  # a residual U-Net with no correction: it returns its input
        network.head.weight.zero_(), network.head.bias.zero_()
    path = save_model(tmp_path / "dim.pgsr", network, Normalization(0.0, 1000.0, 0.0, 1000.0),
                      {"config": {"context": 0, "loss": "mae", "model": "unet"}, "history": {"step": 1}})
    package = export_bioimageio(load_model(path), tmp_path / "dim.zip",
                                test_frames=np.full((2, 64, 64), 3.1, np.float32))  # 3.1: inexact in float32
    passed, summary = check_package(package)
    assert passed, summary
    tolerance = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))["config"]["bioimageio"][
        "reproducibility_tolerance"][0]["absolute_tolerance"]
    assert tolerance == pytest.approx(0.0099 * 3.1)  # just under 1% of 3.1, not 0.1
    assert _absolute_tolerance(NORM, np.full((4, 4), -3.0)) == 0.0  # nothing positive: the relative one alone
    assert _absolute_tolerance(NORM, np.full((4, 4), 900.0)) == pytest.approx(0.248)  # 1e-4 of 2480


def test_export_refuses_to_overwrite_and_import_refuses_foreign_or_newer_packages(exported, tmp_path):
    model_path, package = exported
    with pytest.raises(FileExistsError, match="m.zip exists"):
        export_bioimageio(load_model(model_path), package)
    with pytest.raises(ValueError, match=r"^license 'MIT-License' is not an SPDX licence identifier \(such as") as err:
        export_bioimageio(load_model(model_path), tmp_path / "licensed.zip", license="MIT-License")
    assert len(str(err.value)) < 200 and not (tmp_path / "licensed.zip").exists()  # (pydantic's was 20 kB)
    with pytest.raises(ValueError, match=r"^the sample frames are 32 x 48 pixels, but this unet sees \d+ px around "
                       r"each pixel, so the package's smallest input is 64 x 64: give a larger sample movie"):
        export_bioimageio(load_model(model_path), tmp_path / "small.zip", test_frames=np.ones((1, 32, 48), np.float32))
    rdf = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))

    def repack(name, changed):
        path = tmp_path / name
        with zipfile.ZipFile(package) as source, zipfile.ZipFile(path, "w") as target:
            for item in source.namelist():
                target.writestr(item, yaml.safe_dump(changed) if item == "rdf.yaml" else source.read(item))
        return path

    foreign = repack("foreign.zip", {**rdf, "config": {}})
    with pytest.raises(ValueError, match="foreign.zip is a bioimage.io package but not one exported by napari-pgsr"):
        load_model(foreign)
    newer = repack("newer.zip", {**rdf, "config": {"napari_pgsr": {**rdf["config"]["napari_pgsr"],
                                                                   "format_version": 99}}})
    with pytest.raises(ValueError, match="newer.zip has model format version 99, newer than"):
        import_bioimageio(newer)
    # a word for a version, an option of a newer release, pickled weights, an unpacked package: named, plainly
    worded = repack("worded.zip", {**rdf, "config": {"napari_pgsr": {**rdf["config"]["napari_pgsr"],
                                                                     "format_version": "two"}}})
    with pytest.raises(ValueError, match=r"worded.zip is a damaged napari-pgsr model: its format version is 'two'"):
        load_model(worded)
    later = json.loads(rdf["config"]["napari_pgsr"]["metadata_json"])
    later["architecture"]["attention"] = True
    later["versions"]["napari_pgsr"] = "9.0.0"
    later_release = repack("later.zip", {**rdf, "config": {"napari_pgsr": {**rdf["config"]["napari_pgsr"],
                                                                           "metadata_json": json.dumps(later)}}})
    with pytest.raises(ValueError, match=r"later.zip was written by napari-pgsr 9.0.0, newer than this one .*"
                       r"'attention'.*; upgrade napari-pgsr"):
        load_model(later_release)
    pickled = tmp_path / "pickled.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(pickled, "w") as target:
        weights = rdf["weights"]["pytorch_state_dict"]["source"]
        for item in source.namelist():
            target.writestr(item, source.read(item) if item != weights else _pickled_object())
    with pytest.raises(ValueError, match=r"pickled.zip: its weights \(.*\) hold Python objects that a safe load "
                       "refuses$"):
        load_model(pickled)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(package).extractall(unpacked)
    for given in (unpacked, unpacked / "rdf.yaml"):
        with pytest.raises(ValueError, match="is an unpacked bioimage.io package: give the package's .zip"):
            load_model(given)
    damaged = repack("damaged.zip", {**rdf, "config": {"napari_pgsr": {**rdf["config"]["napari_pgsr"],
                                                                       "metadata_json": "{"}}})
    with pytest.raises(ValueError, match="damaged.zip: damaged bioimage.io package"):
        load_model(damaged)
    metadata = json.loads(rdf["config"]["napari_pgsr"]["metadata_json"])
    del metadata["normalization"]
    no_norm = repack("no_norm.zip", {**rdf, "config": {"napari_pgsr": {**rdf["config"]["napari_pgsr"],
                                                                       "metadata_json": json.dumps(metadata)}}})
    with pytest.raises(ValueError, match="no_norm.zip: damaged bioimage.io package .KeyError: 'normalization'"):
        load_model(no_norm)
    other_format = repack("other.zip", {**rdf, "config": {"napari_pgsr": {**rdf["config"]["napari_pgsr"],
                                                                          "format": "something-else"}}})
    with pytest.raises(ValueError, match="other.zip: damaged bioimage.io package .config.napari_pgsr names format "
                       "'something-else'"):
        load_model(other_format)


class _Unsafe:  # an object a safe torch.load refuses
    pass


def _pickled_object() -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save({"weight": _Unsafe()}, buffer)
    return buffer.getvalue()


def test_test_input_is_an_alternating_movies_low_frames_and_simulated_input_is_in_the_models_units(
        exported, movie_file):
    """The Restore widget's export with Frames 'all' took an alternating movie's first frames: a context model's
    test input was low, HIGH, low. The simulated default lay at 460-1300x the range of a 0..1 model."""
    from napari_pgsr.bmz import movie_low_frames, test_input
    movie = tifffile.imread(movie_file)
    low_first = movie[0].mean() < movie[1].mean()
    lows = movie[0::2] if low_first else movie[1::2]
    np.testing.assert_array_equal(movie_low_frames(movie, 3, alternating=None, name="m"), lows[:3])
    only_low = np.ascontiguousarray(lows[:5])  # a movie of low frames is used as it is
    np.testing.assert_array_equal(movie_low_frames(only_low, 3, alternating=None, name="lows"), only_low[:3])
    model = load_model(exported[0])
    model.normalization = Normalization(0.02, 0.9, 0.05, 1.0)  # a float movie scaled 0..1
    normalised = model.normalization.low(test_input(model))
    assert np.percentile(normalised, 1) == pytest.approx(0.0, abs=1e-4)
    assert np.percentile(normalised, 99.8) == pytest.approx(1.0, abs=1e-4)


def test_export_command_uses_the_users_movie_for_the_test_tensors(exported, tmp_path, movie_file, capsys):
    model_path, _ = exported
    out = tmp_path / "user.zip"
    assert cli.export_main([str(model_path), "-o", str(out), "--sample", str(movie_file), "--author", "Me"]) == 0
    assert "bioimageio.core test of user.zip: passed" in capsys.readouterr().out
    with zipfile.ZipFile(out) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        test_input = np.load(archive.open(rdf["inputs"][0]["test_tensor"]["source"]))
    movie = tifffile.imread(movie_file)
    low = movie[0] if movie[0].mean() < movie[1].mean() else movie[1]
    top, left = (low.shape[0] - 64) // 2, (low.shape[1] - 64) // 2
    np.testing.assert_array_equal(test_input[0, 0], low[top:top + 64, left:left + 64])
    assert rdf["authors"] == [{"name": "Me"}]
    # a movie of low frames (training from --low/--high stacks) is a sample too; it was refused as not alternating
    tifffile.imwrite(tmp_path / "lows.tif", np.stack([low] * 5))
    assert cli.export_main([str(model_path), "-o", str(tmp_path / "lows.zip"), "--sample", str(tmp_path / "lows.tif"),
                            "--no-check"]) == 0
    with zipfile.ZipFile(tmp_path / "lows.zip") as archive:
        np.testing.assert_array_equal(np.load(archive.open(rdf["inputs"][0]["test_tensor"]["source"]))[0, 0],
                                      low[top:top + 64, left:left + 64])
    # and so is one low-exposure frame (a snapshot, as predict restores): it was refused as "a single frame"
    tifffile.imwrite(tmp_path / "snapshot.tif", low)
    assert cli.export_main([str(model_path), "-o", str(tmp_path / "snap.zip"), "--sample",
                            str(tmp_path / "snapshot.tif"), "--no-check"]) == 0
    with zipfile.ZipFile(tmp_path / "snap.zip") as archive:
        np.testing.assert_array_equal(np.load(archive.open(rdf["inputs"][0]["test_tensor"]["source"]))[0, 0],
                                      low[top:top + 64, left:left + 64])
    assert cli.export_main([str(model_path), "-o", str(out)]) == 2  # exists
    assert cli.export_main([str(model_path), "-o", str(tmp_path / "x.tar")]) == 2
    assert "name it *.zip" in capsys.readouterr().err


def test_a_long_loss_curve_is_thinned_in_the_package_and_validation_kept():
    """rdf.yaml carries the model's metadata: one loss per step grew it by 2.3 MB per 100 000 steps."""
    from napari_pgsr.bmz import LOSS_POINTS, _thinned_history
    losses = np.linspace(1.0, 0.1, 5001).tolist()
    metadata = {"history": {"loss": losses, "validation": [{"step": 5000, "psnr": 30.0}]}, "config": {"steps": 5001}}
    thinned = _thinned_history(metadata)
    assert thinned["history"]["loss_every"] == 3 and len(thinned["history"]["loss"]) == 1667 <= LOSS_POINTS
    assert thinned["history"]["loss"][0] == pytest.approx(np.mean(losses[:3]))
    assert thinned["history"]["validation"] == metadata["history"]["validation"]
    assert thinned["config"] == {"steps": 5001}
    assert len(metadata["history"]["loss"]) == 5001  # the model's own metadata is left as it is
    short = {"history": {"loss": [1.0, 0.5]}}
    assert _thinned_history(short) is short
