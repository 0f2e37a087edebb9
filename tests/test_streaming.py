"""Streaming restoration: OME-Zarr output, partial runs and resume, several processes, errors."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from napari_pgsr import cli
from napari_pgsr.data import Normalization
from napari_pgsr.inference import Restorer, restore, restore_to_file
from napari_pgsr.io import read_movie, write_movie
from napari_pgsr.modelfile import FORMAT_VERSION, ModelFile, load_model, save_model
from napari_pgsr.models import build_model
from napari_pgsr.simulate import simulate_movie
from napari_pgsr.streaming import ZarrMovieWriter, stream_restore


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    torch.manual_seed(0)
    network = build_model({"name": "unet", "in_channels": 1, "depth": 1, "width": 4})
    model = save_model(folder / "model.pgsr", network, Normalization(100.0, 400.0, 100.0, 4000.0),
                       {"config": {"context": 0, "loss": "mae"}})
    movie = write_movie(folder / "movie.tif", simulate_movie("beads", 12, (40, 36), seed=1).movie, pixel_size_um=0.16)
    return model, movie


def _expected(files):
    model, movie = files
    return restore(load_model(model), np.asarray(read_movie(movie).data), device="cpu")


def test_zarr_output_is_ome_ngff_and_equals_the_in_memory_restoration(files, tmp_path):
    model, movie = files
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "out.zarr"), "--quiet"]) == 0
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_allclose(group["0"][:], _expected(files), rtol=1e-5, atol=1e-3)  # float32 batches
    assert group["0"].chunks == (1, 40, 36)  # one chunk per frame: writers never collide
    scale = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 0.16, 0.16]
    assert group["0"].metadata.dimension_separator == "/"  # NGFF's nested chunks ('.' read as empty elsewhere)
    info = group.attrs["napari_pgsr"]
    assert info["complete"] and info["model"] == "model.pgsr" and info["model_format_version"] == FORMAT_VERSION
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "out.zarr"), "--quiet"]) == 2


def test_a_stopped_run_leaves_a_valid_partial_store_that_resume_completes(files, tmp_path, capsys):
    model, movie = files
    restorer, source = Restorer(load_model(model), device="cpu"), read_movie(movie)
    calls = []
    written = restore_to_file(restorer, source, tmp_path / "part.zarr",
                              should_stop=lambda: calls.append(1) or len(calls) >= 2)
    group = zarr.open_group(str(tmp_path / "part.zarr"), mode="r")
    partial = group["0"][:]
    assert written == 2 and not group.attrs["napari_pgsr"]["complete"]  # two batches of one frame (CPU)
    assert np.isfinite(partial[:2]).all() and np.isnan(partial[2:]).all()  # unwritten frames read as NaN
    labels = tmp_path / "labels.csv"
    labels.write_text("frame,y,x\n5,20,18\n")
    assert cli.measure_main([str(tmp_path / "part.zarr"), "--points", str(labels), "-o", str(tmp_path / "t.csv"),
                             "--quiet"]) == 0
    assert "part.zarr: the restoration was stopped before every frame was written" in capsys.readouterr().out
    assert restore_to_file(restorer, source, tmp_path / "part.zarr", resume=True) == 10  # only the rest
    group = zarr.open_group(str(tmp_path / "part.zarr"), mode="r")
    assert group.attrs["napari_pgsr"]["complete"]
    np.testing.assert_allclose(group["0"][:], _expected(files), rtol=1e-5, atol=1e-3)  # float32 batches
    # resuming with another model (or movie) is refused
    other = save_model(tmp_path / "other.pgsr", load_model(model).network, load_model(model).normalization,
                       {"config": {"context": 0}})
    with pytest.raises(ValueError, match=r"part.zarr was begun with another model file \('model.pgsr', now "
                                         r"'other.pgsr'\); resume with the same, or --overwrite"):
        restore_to_file(Restorer(load_model(other), device="cpu"), source, tmp_path / "part.zarr", resume=True)


def test_resume_refuses_a_model_trained_further_in_place_and_another_phase_but_not_another_path_spelling(
        files, tmp_path, monkeypatch):
    model, _ = files
    movie = write_movie(tmp_path / "odd.tif", simulate_movie("beads", 13, (40, 36), seed=1).movie)
    original = load_model(model)
    stop_at_once = dict(should_stop=lambda: True, frames="low")
    restore_to_file(Restorer(original, device="cpu"), read_movie(movie), tmp_path / "r.zarr", **stop_at_once)
    # the same file name, other weights (napari-pgsr-train --resume model.pgsr): the store would mix two models
    (tmp_path / "m").mkdir()
    changed = load_model(model).network
    with torch.no_grad():
        changed.head.bias += 0.1
    save_model(tmp_path / "m" / "model.pgsr", changed, original.normalization, original.metadata)
    with pytest.raises(ValueError, match=r"another model weights \(trained further since\?\)"):
        restore_to_file(Restorer(load_model(tmp_path / "m" / "model.pgsr"), device="cpu"), read_movie(movie),
                        tmp_path / "r.zarr", frames="low", resume=True)
    # the other exposure phase takes other frames (as many of them, in a 13-frame movie)
    with pytest.raises(ValueError, match=r"another frame selection \(another exposure phase\?\)"):
        restore_to_file(Restorer(original, device="cpu"), read_movie(movie), tmp_path / "r.zarr", frames="low",
                        low_first=False, resume=True)
    # the same movie by a relative path from its folder
    monkeypatch.chdir(movie.parent)
    assert restore_to_file(Restorer(original, device="cpu"), read_movie(movie.name), tmp_path / "r.zarr",
                           frames="low", resume=True) == 5  # (6 pairs, 1 frame restored before the stop)
    # the movie and its output moved together (to a cluster, say): the same name and size
    moved = tmp_path / "moved"
    moved.mkdir()
    restore_to_file(Restorer(original, device="cpu"), read_movie(movie), moved / "m.zarr", **stop_at_once)
    (moved / "m.zarr").rename(tmp_path / "m.zarr")
    (tmp_path / "elsewhere").mkdir()
    copy = write_movie(tmp_path / "elsewhere" / "odd.tif", read_movie(movie).data)
    assert restore_to_file(Restorer(original, device="cpu"), read_movie(copy), tmp_path / "m.zarr", frames="low",
                           resume=True) == 5
    assert load_model(model).fingerprint() == original.fingerprint() != load_model(
        tmp_path / "m" / "model.pgsr").fingerprint()
    # another acquisition saved under the same name (microscope software reusing one file name), even of the
    # same size: resumed, the store mixed two movies and said it was complete
    restore_to_file(Restorer(original, device="cpu"), read_movie(movie), tmp_path / "again.zarr", **stop_at_once)
    write_movie(movie, simulate_movie("beads", 13, (40, 36), seed=2).movie, overwrite=True)
    with pytest.raises(ValueError, match=r"again.zarr was begun with another movie saved at the same path "
                                         r"\(odd.tif has been written over since\)"):  # (it named the path twice)
        restore_to_file(Restorer(original, device="cpu"), read_movie(movie), tmp_path / "again.zarr", frames="low",
                        resume=True)
    # the same movie copied back to its path (`cp` without -p: a new mtime) is resumed: its frames are the same
    restore_to_file(Restorer(original, device="cpu"), read_movie(movie), tmp_path / "copied.zarr", **stop_at_once)
    shutil.copy(movie, tmp_path / "backup.tif")
    movie.unlink()
    shutil.copy(tmp_path / "backup.tif", movie)
    os.utime(movie, ns=(1, 1))  # (a copy within the same clock tick could keep the mtime)
    assert restore_to_file(Restorer(original, device="cpu"), read_movie(movie), tmp_path / "copied.zarr",
                           frames="low", resume=True) == 5
    # a movie moved with its output whose frames differ, though name and size agree, is another movie
    restore_to_file(Restorer(original, device="cpu"), read_movie(movie), moved / "n.zarr", **stop_at_once)
    (moved / "n.zarr").rename(tmp_path / "n.zarr")
    write_movie(copy, simulate_movie("beads", 13, (40, 36), seed=3).movie, overwrite=True)
    with pytest.raises(ValueError, match=r"n.zarr was begun with another movie \("):
        restore_to_file(Restorer(original, device="cpu"), read_movie(copy), tmp_path / "n.zarr", frames="low",
                        resume=True)


def test_prefetching_hands_over_read_errors_and_keeps_order(files):
    model, _ = files
    restorer = Restorer(load_model(model), device="cpu")

    class Broken:
        shape = (6, 32, 32)

        def __getitem__(self, index):
            if index == 3:
                raise OSError("read error on frame 3")
            return np.full((32, 32), 100.0 + index, np.float32)

    order = []
    with pytest.raises(OSError, match="read error on frame 3"):
        stream_restore(restorer, Broken(), lambda p, f: order.append(p), frames_per_batch=2)
    assert order == [0, 1]


def test_two_torchrun_processes_share_one_zarr_output(files, tmp_path):
    model, movie = files
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "napari_pgsr.cli", "predict", str(model), str(movie), "-o", str(tmp_path / "two.zarr"),
                          "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # one summary, from rank 0, which restored half (it said "restored 6 frames" of the 12)
    assert run.stdout.count("restored the frames (6 in this process of 2) of") == 1, run.stdout
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="r")
    assert group.attrs["napari_pgsr"]["complete"]
    np.testing.assert_allclose(group["0"][:], _expected(files), rtol=1e-5, atol=1e-3)  # float32 batches
    logs = sorted(p.name for p in (tmp_path / "two.zarr" / ".napari_pgsr_done").iterdir())
    assert logs == ["rank0.txt", "rank1.txt"]


def test_a_full_disk_and_bad_outputs_give_clear_errors(files, tmp_path, monkeypatch, capsys):
    model, movie = files
    before = movie.read_bytes()

    def full(self, position, frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ZarrMovieWriter, "write", full)
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "full.zarr"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left on device" in err
    assert movie.read_bytes() == before
    monkeypatch.undo()
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "x.tif"), "--resume", "--quiet"]) == 2
    assert "--resume continues OME-Zarr outputs" in capsys.readouterr().err
    assert cli.predict_main([str(model), str(movie), "-o", str(movie), "--overwrite", "--quiet"]) == 2
    assert movie.read_bytes() == before
    (tmp_path / "folder.tif").mkdir()  # refused before restoring, not at the rename after the whole movie
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "folder.tif"), "--overwrite"]) == 2
    assert "folder.tif is a folder; give a file name" in capsys.readouterr().err
    # a compressed frame that does not decode: named, exit 2 (a codec traceback before)
    import tifffile

    zipped = tmp_path / "zipped.tif"
    tifffile.imwrite(zipped, np.asarray(read_movie(movie).data), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(zipped) as tif:
        offset, count = tif.pages[3].dataoffsets[0], tif.pages[3].databytecounts[0]
    with open(zipped, "r+b") as file:
        file.seek(offset + 2)
        file.write(b"\xff" * (count - 4))
    for output in ("z.tif", "z.zarr"):
        assert cli.predict_main([str(model), str(zipped), "-o", str(tmp_path / output), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "zipped.tif: frame 3 cannot be read (" in err and "Traceback" not in err, err


def test_a_model_whose_parts_disagree_is_refused(files, tmp_path):
    model, _ = files
    loaded = load_model(model)
    mismatched = ModelFile(loaded.network, loaded.normalization, {"config": {"context": 2}})
    with pytest.raises(ValueError, match="network takes 1 input channel.* but the model file says 5"):
        Restorer(mismatched, device="cpu")
    flat = ModelFile(loaded.network, Normalization(100.0, 100.0, 100.0, 4000.0), {"config": {"context": 0}})
    with pytest.raises(ValueError, match="normalisation"):
        Restorer(flat, device="cpu")
    assert json.dumps(loaded.normalization.to_dict())  # the stored one is plain data


def test_resume_onto_what_predict_did_not_begin_says_so_and_overwrite_replaces_a_file(files, tmp_path, capsys):
    model, movie = files
    (tmp_path / "empty.zarr").mkdir()
    (tmp_path / "file.zarr").write_text("notes")
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "a.txt").write_text("notes")
    for name, what in (("empty", "an empty folder"), ("file", "a file"),
                       ("folder", "a folder that is not a Zarr store")):
        # zarr said "No group found in store" or "Not a directory"
        assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / f"{name}.zarr"), "--resume",
                                 "--quiet"]) == 2
        assert (f"{name}.zarr is {what}, not a restoration begun by napari-pgsr-predict: nothing to resume; "
                "leave out --resume, and pass --overwrite" in capsys.readouterr().err)
    assert (tmp_path / "file.zarr").read_text() == "notes"
    # --overwrite replaces a file named .zarr (it stopped with "Not a directory")
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "file.zarr"), "--overwrite",
                             "--quiet"]) == 0
    assert read_movie(tmp_path / "file.zarr").shape[0] == read_movie(movie).shape[0]


def test_tiles_default_to_whole_frames_and_bf16_is_a_choice(files):
    model, movie = files
    restorer = Restorer(load_model(model), device="cpu")
    assert restorer.tile_for(1200, 1200) == 1200 and restorer.batch == 1  # whole, when it fits; one per pass
    for bad in ({"tile": 0}, {"tile": -5}, {"batch": -3}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be at least 1"):
            Restorer(load_model(model), device="cpu", **bad)
    budget = 700**2 * restorer._bytes_per_pixel()
    restorer._memory_budget = lambda: budget  # too little memory: the fewest tiles that fit (here 2 x 2)
    tile = restorer.tile_for(1200, 1200)
    assert tile**2 * restorer._bytes_per_pixel() <= budget and 2 * tile - restorer.overlap >= 1200
    assert Restorer(load_model(model), tile=128, device="cpu").tile_for(1200, 1200) == 128
    frame = np.asarray(read_movie(movie).data[3], np.float32)[None]
    exact = restorer(frame)
    from napari_pgsr import devices
    if devices.cpu_has_native_bf16():
        reduced = Restorer(load_model(model), device="cpu", precision="bf16")(frame)
    else:  # emulated bf16 ran 2.3x slower than fp32: said, and fp32 used
        with pytest.warns(RuntimeWarning, match="this CPU has no hardware bf16 .* restoring in fp32"):
            restorer_bf16 = Restorer(load_model(model), device="cpu", precision="bf16")
        assert restorer_bf16.precision == "fp32"
        reduced = restorer_bf16(frame)
    assert np.abs(reduced - exact).max() < 0.02 * np.ptp(exact)  # bf16 keeps about three digits
    with pytest.raises(ValueError, match="precision must be one of"):
        Restorer(load_model(model), device="cpu", precision="fp8")


def _resident_file_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssFile:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_streaming_reads_frames_without_keeping_them_resident(files, tmp_path):
    from napari_pgsr.streaming import FileFrames

    model, small = files
    restorer = Restorer(load_model(model), device="cpu")
    restore_to_file(restorer, read_movie(small), tmp_path / "warm.zarr")  # libraries paged in once
    frames = np.random.default_rng(0).poisson(150.0, (80, 384, 384)).astype(np.uint16)  # 23.6 MiB
    movie = read_movie(write_movie(tmp_path / "long.tif", frames, pixel_size_um=0.16))
    assert isinstance(movie.frames, np.memmap)
    reader = FileFrames.wrap(movie.frames)
    np.testing.assert_array_equal(reader[5], frames[5])
    np.testing.assert_array_equal(reader[-1], frames[-1])
    reader.close()
    before = _resident_file_mib()
    restore_to_file(restorer, movie, tmp_path / "long.zarr")
    # a memory map would keep every frame read resident: the whole movie, 23.6 MiB
    assert _resident_file_mib() - before < 8
    stored = zarr.open_group(str(tmp_path / "long.zarr"), mode="r")["0"]
    np.testing.assert_allclose(stored[40], restorer(frames[40][None].astype(np.float32)), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["restored.tif", "restored.ome.tif"])
def test_tiff_outputs_record_the_model_and_keep_the_pixel_size(files, tmp_path, name):
    model, movie = files
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / name), "--quiet"]) == 0
    restored = read_movie(tmp_path / name)
    assert restored.pixel_size_um == pytest.approx(0.16)
    info = json.loads(restored.metadata["description"])["napari_pgsr"]
    assert info["model"] == "model.pgsr" and info["model_format_version"] == FORMAT_VERSION
    assert info["source"] == str(movie) and info["frames"] == "all"
    assert info["model_description"].startswith("unet depth 1")


def test_a_compiled_model_restores_the_same_and_a_failed_compile_falls_back(files, tmp_path, monkeypatch):
    import shutil

    model, movie = files
    frame = np.asarray(read_movie(movie).data[2], np.float32)[None]
    exact = Restorer(load_model(model), device="cpu")(frame)
    if shutil.which("c++") or shutil.which("g++"):
        compiled = Restorer(load_model(model), device="cpu", compile=True)
        np.testing.assert_allclose(compiled(frame), exact, rtol=1e-4, atol=1e-2)
        assert not compiled.forward.failed
    broken = Restorer(load_model(model), device="cpu", compile=True)

    def fail(x):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(broken.forward, "compiled", fail)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler.*uncompiled"):
        np.testing.assert_allclose(broken(frame), exact, rtol=1e-5, atol=1e-3)
    assert broken.forward.failed
    # a short last batch is filled up to the compiled batch shape, not compiled again
    batched, shapes = Restorer(load_model(model), device="cpu", batch=4, compile=True), []
    monkeypatch.setattr(batched.forward, "compiled", lambda x: (shapes.append(tuple(x.shape)), batched.network(x))[1])
    frames = [np.asarray(read_movie(movie).data[i], np.float32)[None] for i in (2, 3, 4)]
    outputs = batched.restore_many(frames)
    assert len(outputs) == 3 and [shape[0] for shape in shapes] == [4]
    batched(frames[0])  # one frame alone (a napari layer's frame) is not filled up
    assert shapes[-1][0] == 1
    np.testing.assert_allclose(outputs[0], exact, rtol=1e-5, atol=1e-3)
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "c.tif"), "--compile", "--quiet"]) == 0


def _ome_zarr(path, axes: str, shape: tuple[int, ...], scale: tuple[float, ...] | None = None,
              unit: str = "") -> None:
    """A minimal NGFF 0.4 image with the named axes (and a scale whose y and x axes have `unit`)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=shape, dtype="f4")
    dataset = {"path": "0"}
    if scale:
        dataset["coordinateTransformations"] = [{"type": "scale", "scale": list(scale)}]
    named = [{"name": a, **({"unit": unit} if unit and a.lower() in "yx" else {})} for a in axes]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": named, "datasets": [dataset]}]


def test_pixel_size_of_other_writers_ome_zarr(tmp_path):
    _ome_zarr(tmp_path / "upper.zarr", "TYX", (4, 8, 8), (1.0, 0.1, 0.1), "micrometer")
    assert read_movie(tmp_path / "upper.zarr").pixel_size_um == pytest.approx(0.1)
    _ome_zarr(tmp_path / "czyx.zarr", "tcyx", (4, 1, 8, 6), (1.0, 1.0, 80.0, 80.0), "nanometer")
    assert read_movie(tmp_path / "czyx.zarr").pixel_size_um == pytest.approx(0.08)
    _ome_zarr(tmp_path / "odd.zarr", "tyx", (4, 8, 8), (1.0, 2.0, 2.0), "parsec")
    movie = read_movie(tmp_path / "odd.zarr")
    assert movie.pixel_size_um is None and "its scale's unit 'parsec' is not one of micrometer" in (
        movie.metadata["note"])


def test_bioformats2raw_stores_open_at_their_root_or_image_and_no_unit_is_claimed_without_a_size(tmp_path):
    """bioformats2raw (the usual converter of vendor files) puts the image in '0': the root was 'not an OME-Zarr
    image' and store.zarr/0 'not a readable TIFF file'. A store written without a pixel size claimed 1 um."""
    from napari_pgsr.streaming import ZarrMovieWriter

    root = zarr.open_group(str(tmp_path / "converted.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    _ome_zarr(tmp_path / "converted.zarr" / "0", "tczyx", (6, 1, 1, 8, 10), (1.0, 1.0, 1.0, 0.108, 0.108),
              "micrometer")
    for path in (tmp_path / "converted.zarr", tmp_path / "converted.zarr" / "0"):
        movie = read_movie(path)
        assert movie.shape == (6, 8, 10) and movie.pixel_size_um == pytest.approx(0.108)
    writer = ZarrMovieWriter(tmp_path / "unknown.zarr", (2, 8, 8))
    writer.close()
    axes = zarr.open_group(str(tmp_path / "unknown.zarr"), mode="r").attrs["multiscales"][0]["axes"]
    assert all("unit" not in axis for axis in axes)


def test_ome_zarr_multiscale_scale_and_a_time_axis_named_by_its_type(tmp_path):
    """NGFF: a multiscale's own scale applies on top of its dataset's (it was left out: 1.0 um for 0.1);
    an axis is a time axis by its type, whatever its name ('time' was refused as axes 'timeyx')."""
    _ome_zarr(tmp_path / "global.zarr", "tyx", (4, 8, 8), (1.0, 1.0, 1.0), "micrometer")
    group = zarr.open_group(str(tmp_path / "global.zarr"), mode="r+")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, 0.1, 0.1]}]
    group.attrs["multiscales"] = multiscales
    assert read_movie(tmp_path / "global.zarr").pixel_size_um == pytest.approx(0.1)
    _ome_zarr(tmp_path / "time.zarr", "tyx", (6, 8, 8), (1.0, 0.1, 0.1), "micrometer")
    group = zarr.open_group(str(tmp_path / "time.zarr"), mode="r+")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["axes"][0] = {"name": "time", "type": "time"}
    group.attrs["multiscales"] = multiscales
    assert read_movie(tmp_path / "time.zarr").shape == (6, 8, 8)


def test_restored_ome_zarr_opens_as_a_movie_for_napari_and_measuring(files, tmp_path):
    from napari_pgsr._reader import get_reader
    from napari_pgsr.io import SingleFrameError, read_image

    model, movie = files
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "out.zarr"), "--quiet"]) == 0
    restored = read_movie(tmp_path / "out.zarr")
    assert restored.shape == (12, 40, 36) and restored.pixel_size_um == pytest.approx(0.16)
    assert restored.metadata["napari_pgsr"]["model"] == "model.pgsr"
    np.testing.assert_allclose(np.asarray(restored.data[4]), _expected(files)[4], rtol=1e-5, atol=1e-3)
    data, kwargs, kind = get_reader(str(tmp_path / "out.zarr"))(str(tmp_path / "out.zarr"))[0]
    assert kind == "image" and kwargs["name"] == "out" and kwargs["scale"] == (1.0, 0.16, 0.16)
    labels = tmp_path / "labels.csv"
    labels.write_text("frame,y,x\n4,20,18\n")
    assert cli.measure_main([str(tmp_path / "out.zarr"), "--points", str(labels), "-o", str(tmp_path / "t.csv")]) == 0
    _ome_zarr(tmp_path / "frame.zarr", "tyx", (1, 8, 8))
    with pytest.raises(SingleFrameError, match="frame.zarr holds axes tyx of shape \\(1, 8, 8\\): a single frame"):
        read_movie(tmp_path / "frame.zarr")
    # the one restored low frame of a single exposure pair opens as an image (in napari too) and is measured
    zarr.open_array(str(tmp_path / "frame.zarr" / "0"), mode="r+")[0] = np.arange(64).reshape(8, 8)
    frame, _ = read_image(tmp_path / "frame.zarr")
    np.testing.assert_array_equal(np.asarray(frame), np.arange(64).reshape(8, 8))
    data, kwargs, _ = get_reader(str(tmp_path / "frame.zarr"))(str(tmp_path / "frame.zarr"))[0]
    assert data.shape == (8, 8) and kwargs["name"] == "frame" and kwargs["scale"] == (1.0, 1.0)
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    with pytest.raises(ValueError, match="plain.zarr is not an OME-Zarr image"):
        read_movie(tmp_path / "plain.zarr")
    _ome_zarr(tmp_path / "stack.zarr", "zyx", (5, 8, 8))
    with pytest.raises(ValueError, match="stack.zarr holds axes zyx .*expected a movie T x Y x X"):
        read_movie(tmp_path / "stack.zarr")
    # napari's other readers get what is not a movie: plain groups, z-stacks
    assert get_reader(str(tmp_path / "plain.zarr")) is None and get_reader(str(tmp_path / "stack.zarr")) is None


def test_restored_low_frames_record_which_movie_frames_they_are(files, tmp_path):
    """After a left-out frame, restored frame i is no longer movie frame 2i; outputs stored only a hash."""
    model, movie = files
    frames = np.asarray(read_movie(movie).data)
    gapped = write_movie(tmp_path / "gapped.tif", np.concatenate([frames[:6], frames[7:]]))  # frame 6 lost
    restorer = Restorer(load_model(model), device="cpu")
    restore_to_file(restorer, read_movie(gapped), tmp_path / "low.zarr", frames="low")
    restore_to_file(restorer, read_movie(gapped), tmp_path / "low.tif", frames="low")
    stored = zarr.open_group(str(tmp_path / "low.zarr"), mode="r").attrs["napari_pgsr"]["movie_frames"]
    described = json.loads(read_movie(tmp_path / "low.tif").metadata["description"])["napari_pgsr"]["movie_frames"]
    assert stored == described == "0-4 step 2, 7-9 step 2"


def test_a_store_resumed_in_other_arithmetic_says_so(files, tmp_path, monkeypatch):
    """Begun on a GPU (bf16), resumed on a CPU (fp32): the frames differed by up to 6 grey levels, unsaid."""
    model, movie = files
    restorer = Restorer(load_model(model), device="cpu")
    restore_to_file(restorer, read_movie(movie), tmp_path / "r.zarr", should_stop=lambda: True)
    assert zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["napari_pgsr"]["arithmetic"] == "fp32"
    monkeypatch.setattr(Restorer, "arithmetic", property(lambda self: "bf16"))  # as on a GPU
    with pytest.warns(RuntimeWarning, match=r"r.zarr: its frames so far were computed in fp32, these in bf16"):
        restore_to_file(Restorer(load_model(model), device="cpu"), read_movie(movie), tmp_path / "r.zarr",
                        resume=True)
    stored = zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["napari_pgsr"]
    assert stored["arithmetic"] == "fp32, then bf16" and stored["complete"]


def test_a_movie_that_cannot_be_read_is_not_blamed_on_the_output(files, tmp_path, monkeypatch, capsys):
    """A movie cut short under a run was reported as 'could not write out.zarr: ... the file was truncated'."""
    from napari_pgsr.streaming import FileFrames, MovieReadError
    model, movie = files
    copy = tmp_path / "cut.tif"
    shutil.copyfile(movie, copy)
    frames = FileFrames.wrap(read_movie(copy).frames)
    assert isinstance(frames, FileFrames)
    os.truncate(copy, frames.offset + 11 * frames.frame_bytes + 100)  # into the last frame
    with pytest.raises(MovieReadError, match=r"cut.tif ends inside frame 11: the file was truncated"):
        frames[11]
    frames.close()

    def unreadable(*args, **kwargs):
        raise MovieReadError("could not read frame 3 of movie.tif: Input/output error")

    monkeypatch.setattr("napari_pgsr.inference.restore_to_file", unreadable)
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "out.zarr"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error: could not read frame 3 of movie.tif: Input/output error" in err and "could not write" not in err


def test_a_movie_cut_short_after_opening_is_an_error_not_a_crash(files, tmp_path):
    """The frames' digest read the last frame through the memory map: a bus error killed the process."""
    model, movie = files
    copy = tmp_path / "cut.tif"
    shutil.copyfile(movie, copy)
    script = (f"from napari_pgsr.inference import Restorer, restore_to_file\n"
              f"from napari_pgsr.io import read_movie\nfrom napari_pgsr.modelfile import load_model\n"
              f"from napari_pgsr.streaming import MovieReadError\nimport os\n"
              f"movie = read_movie({str(copy)!r})\n"
              f"os.truncate({str(copy)!r}, os.path.getsize({str(copy)!r}) // 2)\n"
              f"try:\n    restore_to_file(Restorer(load_model({str(model)!r}), device='cpu'), movie, "
              f"{str(tmp_path / 'out.zarr')!r})\n"
              f"except MovieReadError as err:\n    print('refused:', err)\n")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "refused:" in ran.stdout and "cut.tif ends inside frame" in ran.stdout


def test_a_second_ctrl_c_stops_with_a_word_not_a_traceback(files, tmp_path, monkeypatch, capsys):
    model, movie = files

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_pgsr.inference.restore_to_file", interrupted)
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "out.zarr"), "--quiet"]) == 130
    assert "stopped at once; " in capsys.readouterr().err
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "out.tif"), "--quiet"]) == 130
    assert "out.tif: it was not written" in capsys.readouterr().err


def test_a_context_model_reads_each_input_frame_once(files, tmp_path, monkeypatch):
    """Each frame was read (a compressed one decoded) 2c+1 times: once for every frame it is a neighbour of."""
    from napari_pgsr.data import Normalization
    from napari_pgsr.inference import restore
    from napari_pgsr.modelfile import ModelFile
    from napari_pgsr.models.unet import UNet

    class Counting:
        def __init__(self, frames):
            self.frames, self.shape, self.ndim, self.dtype, self.read = frames, frames.shape, 3, frames.dtype, []

        def __getitem__(self, index):
            self.read.append(int(index))
            return self.frames[index]

    model = ModelFile(UNet(in_channels=5, depth=1, width=4), Normalization(0, 1, 0, 1), {"config": {"context": 2}})
    frames = Counting(np.random.default_rng(0).random((12, 16, 16), np.float32))
    assert restore(model, frames, device="cpu").shape == (12, 16, 16)
    assert sorted(frames.read) == list(range(12))


def test_a_store_begun_from_a_layer_without_a_file_resumes_from_the_file_and_frames_are_named(files, tmp_path):
    """The Restore widget's cancel note says `napari-pgsr-predict --resume` completes its store; begun from a
    layer with no file behind it (source None), that resume died in a TypeError. And resumed with other
    --frames, the error blamed another movie or model."""
    import dask.array as da

    from napari_pgsr.io import Movie

    model, movie = files
    frames = read_movie(movie).frames[:]
    layer = Movie(da.from_array(frames, chunks=(1, *frames.shape[1:])), frames, None, 0.16)
    restore_to_file(Restorer(load_model(model), device="cpu"), layer, tmp_path / "o.zarr", should_stop=lambda: True)
    assert restore_to_file(Restorer(load_model(model), device="cpu"), read_movie(movie), tmp_path / "o.zarr",
                           resume=True) > 0
    np.testing.assert_allclose(read_movie(tmp_path / "o.zarr").frames[:], _expected(files), atol=1e-3)
    restore_to_file(Restorer(load_model(model), device="cpu"), read_movie(movie), tmp_path / "low.zarr",
                    frames="low", should_stop=lambda: True)
    with pytest.raises(ValueError, match=r"another movie, model or frame selection \(its frames: 'low'; give the "
                                         r"same --frames\)"):
        restore_to_file(Restorer(load_model(model), device="cpu"), read_movie(movie), tmp_path / "low.zarr",
                        resume=True)
    shorter = write_movie(tmp_path / "shorter.tif", read_movie(movie).frames[:8])  # the same --frames: no hint
    with pytest.raises(ValueError, match=r"another movie, model or frame selection$"):
        restore_to_file(Restorer(load_model(model), device="cpu"), read_movie(shorter), tmp_path / "o.zarr",
                        resume=True)

