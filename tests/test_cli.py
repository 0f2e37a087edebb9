"""napari-pgsr-train and napari-pgsr-predict end to end on a small simulated movie."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_pgsr import cli
from napari_pgsr.analysis import mortensen_precision
from napari_pgsr.io import read_image, read_movie, write_movie
from napari_pgsr.modelfile import load_model
from napari_pgsr.simulate import Acquisition, simulate_movie
from napari_pgsr.training.config import TrainConfig

TINY = ["--steps", "4", "--depth", "1", "--width", "4", "--patch", "32", "--batch", "4", "--validation-every", "2",
        "--validation-patches", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "movie.tif"
    sim = simulate_movie("ap2", 48, (64, 64), seed=0)
    write_movie(path, sim.movie, pixel_size_um=sim.pixel_size_um)
    return path


def test_train_then_predict_low_frames(tmp_path, movie, capsys):
    model = tmp_path / "m.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), "--loss", "mse", "--write-config",
                           str(tmp_path / "used.yaml"), *TINY]) == 0
    loaded = load_model(model)
    assert loaded.metadata["config"]["loss"] == "mse" and loaded.metadata["history"]["step"] == 4
    assert str(movie) in loaded.metadata["provenance"]["file_sizes"]
    assert "loss: mse" in (tmp_path / "used.yaml").read_text()
    out = tmp_path / "restored.tif"
    assert cli.predict_main([str(model), str(movie), "-o", str(out), "--frames", "low", "--device", "cpu"]) == 0
    restored = read_movie(out)
    assert restored.shape == (24, 64, 64) and restored.data.dtype == np.float32
    assert restored.pixel_size_um == pytest.approx(0.16)
    assert "restored 24 frames" in capsys.readouterr().out


def test_config_file_is_read_and_flags_override_it(tmp_path, movie):
    (tmp_path / "cfg.yaml").write_text("loss: bce\nsteps: 2\nwidth: 2\n")
    model = tmp_path / "m.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), "--config", str(tmp_path / "cfg.yaml"),
                           "--depth", "1", "--patch", "32", "--batch", "2", "--device", "cpu", "--quiet",
                           "--width", "3"]) == 0
    config = load_model(model).metadata["config"]
    assert config["loss"] == "bce" and config["steps"] == 2 and config["width"] == 3


def test_separate_low_and_high_stacks_and_validation_movie(tmp_path, movie):
    sim = simulate_movie("beads", 20, (64, 64), seed=3)
    write_movie(tmp_path / "low.tif", sim.movie[0::2])
    write_movie(tmp_path / "high.tif", sim.movie[1::2])
    model = tmp_path / "m.pgsr"
    assert cli.train_main(["--low", str(tmp_path / "low.tif"), "--high", str(tmp_path / "high.tif"),
                           "--val", str(movie), "--out", str(model), *TINY]) == 0
    provenance = load_model(model).metadata["provenance"]
    assert provenance["names"] == ["low.tif+high.tif", "movie.tif"]


def test_resume_from_the_command_line(tmp_path, movie):
    model = tmp_path / "m.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), *TINY]) == 0
    args = [str(movie), "--out", str(model), *TINY]
    args[args.index("--steps") + 1] = "6"
    assert cli.train_main([*args, "--resume", str(model)]) == 0
    assert load_model(model).metadata["history"]["step"] == 6


@pytest.mark.parametrize("case, message", [
    ("steady", "no alternating exposure detected"),
    ("big patch", "smaller than the 128x128 patch size"),
    ("few pairs", "too few to hold out validation pairs"),
    ("no input", "give alternating-exposure movies"),
    ("exists", "exists; pass --overwrite"),
])
def test_bad_training_input_exits_2_and_writes_nothing(tmp_path, movie, capsys, case, message):
    steady = tmp_path / "steady.tif"
    write_movie(steady, simulate_movie("ap2", 20, (64, 64), acquisition=Acquisition(low_exposure_s=0.1)).movie)
    short = tmp_path / "short.tif"
    write_movie(short, simulate_movie("ap2", 6, (64, 64)).movie)
    model = tmp_path / "m.pgsr"
    args = {"steady": [str(steady)], "big patch": [str(movie), "--patch", "128"], "few pairs": [str(short)],
            "no input": [], "exists": [str(movie)]}[case]
    if case == "exists":
        model.write_bytes(b"keep me")
    assert cli.train_main(["--out", str(model), *TINY, *args]) == 2
    assert message in capsys.readouterr().err
    assert (model.read_bytes() == b"keep me") if case == "exists" else not model.exists()


def test_bad_prediction_input_exits_2_and_keeps_files(tmp_path, movie, capsys):
    model = tmp_path / "m.pgsr"
    cli.train_main([str(movie), "--out", str(model), *TINY])
    out = tmp_path / "out.tif"
    out.write_bytes(b"user data")
    assert cli.predict_main([str(model), str(movie), "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"user data"
    assert cli.predict_main([str(model), str(movie), "-o", str(movie), "--overwrite"]) == 2
    assert "file the data was read from" in capsys.readouterr().err
    (tmp_path / "junk.pgsr").write_text("junk")
    assert cli.predict_main([str(tmp_path / "junk.pgsr"), str(movie), "-o", str(tmp_path / "x.tif")]) == 2
    assert "not a readable napari-pgsr model file" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "x.png")]) == 2
    assert "x.png: expected a name ending in .tif, .tiff, .ome.tif or .zarr" in capsys.readouterr().err
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "x.tif"), "--batch", "0"]) == 2
    assert "--batch 0: expected at least 1" in capsys.readouterr().err
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "x.tif"), "--high-first"]) == 2
    assert "give them with --frames low" in capsys.readouterr().err  # (ignored: every frame was restored)
    steady = tmp_path / "steady.tif"  # refused once the bar would start: it drew an empty "0frame" line first
    write_movie(steady, simulate_movie("ap2", 8, (32, 32), acquisition=Acquisition(low_exposure_s=0.1)).movie)
    assert cli.predict_main([str(model), str(steady), "-o", str(tmp_path / "x.tif"), "--frames", "low"]) == 2
    assert capsys.readouterr().err.startswith("napari-pgsr-predict: error: ")
    # --overwrite replaces a Zarr store, never a folder holding the inputs or a folder that is no store
    project = tmp_path / "project.zarr"
    project.mkdir()
    inside = project / "raw.tif"
    inside.write_bytes(movie.read_bytes())
    assert cli.predict_main([str(model), str(inside), "-o", str(project), "--overwrite"]) == 2
    assert f"it holds an input ({inside})" in capsys.readouterr().err and inside.is_file()
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "notes.txt").write_text("a user's notes")
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "notes.zarr"), "--overwrite"]) == 2
    assert "is a folder but no Zarr store" in capsys.readouterr().err
    assert (tmp_path / "notes.zarr" / "notes.txt").read_text() == "a user's notes"


def test_train_refuses_outputs_it_could_not_write_before_training(tmp_path, movie, capsys):
    (tmp_path / "afile").write_text("a user's file")
    (tmp_path / "cfgdir").mkdir()
    for arguments, said in (
            (["--out", str(tmp_path / "afile" / "m.pgsr")], f"cannot write {tmp_path / 'afile' / 'm.pgsr'}: "
                                                            f"{tmp_path / 'afile'} is a file, not a folder"),
            (["--out", str(tmp_path / "cfgdir")], f"cannot write {tmp_path / 'cfgdir'}: it is a folder"),
            (["--out", str(tmp_path / "m.pgsr"), "--config", str(tmp_path / "cfgdir")], "Is a directory")):
        assert cli.train_main([str(movie), *arguments, *TINY]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and "step" not in err, err
    assert not (tmp_path / "m.pgsr").exists() and (tmp_path / "afile").read_text() == "a user's file"


def test_predict_restores_a_single_snapshot_and_a_ctrl_c_in_the_last_frames_is_no_stop(tmp_path, movie, capsys,
                                                                                         monkeypatch):
    import signal

    from napari_pgsr import inference

    model = tmp_path / "m.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), *TINY]) == 0
    snapshot = write_movie(tmp_path / "snap.tif", read_movie(movie).data[0].compute(), pixel_size_um=0.16)
    assert cli.predict_main([str(model), str(snapshot), "-o", str(tmp_path / "r.tif"), "--quiet"]) == 0  # was 2
    frame, pixel = read_image(tmp_path / "r.tif")
    np.testing.assert_allclose(frame, inference.restore(load_model(model), read_image(snapshot)[0][None])[0],
                               rtol=1e-5, atol=1e-3)
    assert pixel == pytest.approx(0.16)

    def restoring(done, total, signum=signal.SIGINT):
        def fake(restorer, movie, output, progress, **kwargs):
            progress(done, total)
            signal.raise_signal(signum)  # the user's Ctrl-C, while these frames are restored
            return done
        return fake

    capsys.readouterr()
    monkeypatch.setattr(inference, "restore_to_file", restoring(24, 24))
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "a.zarr")]) == 0
    out, err = capsys.readouterr()
    assert "restored 24 frames" in out and "stopped" not in err
    monkeypatch.setattr(inference, "restore_to_file", restoring(10, 24))
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "b.zarr")]) == 130
    assert "stopped after 10 frames; " in capsys.readouterr().err
    monkeypatch.setattr(inference, "restore_to_file", restoring(14, 14))  # the rest, resumed: said to be more
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "b.zarr"), "--resume"]) == 0
    assert "restored 14 more frames of" in capsys.readouterr().out
    # a batch system's SIGTERM stops the same way (it killed the process, leaving a temporary file)
    monkeypatch.setattr(inference, "restore_to_file", restoring(10, 24, signal.SIGTERM))
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "t.zarr")]) == 128 + signal.SIGTERM
    assert "stopped after 10 frames; " in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back
    monkeypatch.undo()
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "c.tif"), "--device", "gpu"]) == 2
    assert "unknown device 'gpu'; expected auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err  # (a traceback)
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "c.tif"), "--device", "xpu"]) == 2
    assert "device 'xpu' is not one napari-pgsr runs on" in capsys.readouterr().err  # (a torch assertion)


def test_help_documents_every_config_field(capsys):
    from dataclasses import fields

    from napari_pgsr.training.config import TrainConfig

    with pytest.raises(SystemExit):
        cli.train_main(["--help"])
    text = capsys.readouterr().out
    for spec in fields(TrainConfig):
        flag = "--low-first" if spec.name == "low_first" else "--" + spec.name.replace("_", "-")
        assert flag in text


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])  # SIGTERM (a batch system's time limit) ended it at once
def test_ctrl_c_stops_training_cleanly_and_leaves_a_resumable_model(tmp_path, movie, signum):
    import os
    import signal
    import subprocess
    import sys
    import time

    model = tmp_path / "m.pgsr"
    args = [sys.executable, "-m", "napari_pgsr.cli", "train", str(movie), "--out", str(model), "--steps",
            "100000", "--depth", "1", "--width", "4", "--patch", "32", "--batch", "4", "--device", "cpu",
            "--validation-every", "1000", "--checkpoint-every", "5", "--quiet"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not model.exists():  # first checkpoint
        time.sleep(0.2)
    process.send_signal(getattr(signal, signum))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    saved = load_model(model)
    assert saved.training_state["reason"] == "stopped" and 5 <= saved.training_state["step"] < 100000
    assert "stopping after this step" in err


def test_train_never_writes_over_its_inputs_and_reads_a_config_file_as_given(tmp_path, movie, capsys):
    import shutil

    data = tmp_path / "data.tif"
    shutil.copy(movie, data)
    before = data.read_bytes()
    for arguments, said in [
            (["--out", str(tmp_path / "m.pgsr"), "--write-config", str(data)],
             f"--write-config {data} is one of the inputs"),  # (it became 600 bytes of YAML)
            (["--out", str(data), "--overwrite"], f"--out {data} is one of the inputs"),
            (["--out", str(tmp_path / "m.pgsr"), "--write-config", str(tmp_path / "m.pgsr")],
             "--write-config and --out are both")]:
        assert cli.train_main([str(data), *arguments, *TINY]) == 2
        assert said in capsys.readouterr().err
    assert data.read_bytes() == before
    (tmp_path / "notes.yaml").write_text("a user's notes")
    assert cli.train_main([str(data), "--out", str(tmp_path / "m.pgsr"), "--write-config",
                           str(tmp_path / "notes.yaml"), *TINY]) == 2
    assert "notes.yaml exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.yaml").read_text() == "a user's notes"

    def config(*flags):
        return cli.build_config(cli.train_parser().parse_args([str(data), "--out", "x.pgsr", *flags]))

    saved = TrainConfig().save(tmp_path / "unet.yaml")  # holds every field: steps 2000 among them
    assert (config("--config", str(saved), "--minutes", "30").steps, config("--config", str(saved),
                                                                           "--minutes", "30").minutes) == (None, 30)
    with pytest.raises(cli.BadInput, match=r"unet.yaml was written for a unet; its width and patch \(32, 64\)"):
        config("--config", str(saved), "--model", "progan")  # (a ProGAN 32x Karras's width: 45 billion weights)
    assert config("--config", str(saved), "--model", "progan", "--width", "0.125", "--patch", "64",
                  "--lr-schedule", "cosine").width == 0.125
    (tmp_path / "recipe.yaml").write_text("recipe: progan-spots\nsteps: 10\n")
    from_file = config("--config", str(tmp_path / "recipe.yaml"))  # (a U-Net called progan-spots before)
    assert (from_file.model, from_file.critic_steps, from_file.steps, from_file.recipe) == ("progan", 5, 10,
                                                                                            "progan-spots")
    (tmp_path / "unknown.yaml").write_text("recipe: no-such-recipe\n")
    with pytest.raises(cli.BadInput, match="recipe 'no-such-recipe' is none of the recipes"):
        config("--config", str(tmp_path / "unknown.yaml"))
    with pytest.raises(cli.BadInput, match="recipe progan-spots trains a progan, but .*unet.yaml sets model unet"):
        config("--recipe", "progan-spots", "--config", str(saved))
    # a file of a few settings names no model: it serves the recipe's, or --model's
    (tmp_path / "few.yaml").write_text("patch: 128\nwidth: 0.25\n")
    assert config("--recipe", "progan-spots", "--config", str(tmp_path / "few.yaml")).patch == 128
    assert config("--model", "progan", "--config", str(tmp_path / "few.yaml")).width == 0.25
    # names after --val were taken as validation movies: said how to give them
    assert cli.train_main(["--val", str(data), str(movie), "--out", str(tmp_path / "v.pgsr"), *TINY]) == 2
    assert "name the movies before --val, --low or --high" in capsys.readouterr().err


def test_resume_takes_the_stored_settings_and_minutes_alone_lift_the_step_cap(tmp_path, movie, capsys):
    model = tmp_path / "m.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), *TINY, "--context", "1"]) == 0
    # only the new length is given: depth, width, context... come from the checkpoint
    assert cli.train_main([str(movie), "--out", str(model), "--resume", str(model), "--steps", "6", "--quiet"]) == 0
    saved = load_model(model)
    assert saved.metadata["history"]["step"] == 6 and saved.context == 1
    # resumed with no more steps to go: it said 'done at step 6' as if it had trained
    capsys.readouterr()
    assert cli.train_main([str(movie), "--out", str(model), "--resume", str(model), "--steps", "6", "--quiet"]) == 0
    assert ("already at step 6, and --steps is 6: nothing is left to train; give a larger --steps"
            in capsys.readouterr().err)
    args = cli.train_parser().parse_args([str(movie), "--out", "x.pgsr", "--minutes", "3"])
    config = cli.build_config(args)
    assert config.steps is None and config.minutes == 3
    (tmp_path / "minutes.yaml").write_text("minutes: 1440\n")  # a config file alike: not capped at 2000 steps
    config = cli.build_config(cli.train_parser().parse_args([str(movie), "--out", "x.pgsr", "--config",
                                                             str(tmp_path / "minutes.yaml")]))
    assert config.steps is None and config.minutes == 1440
    # a run that trained for a time, resumed for a number of steps: its spent time no longer stops it at once
    timed = tmp_path / "timed.pgsr"
    assert cli.train_main([str(movie), "--out", str(timed), *TINY, "--minutes", "0.002"]) == 0
    assert load_model(timed).metadata["config"]["minutes"] == 0.002
    step = load_model(timed).metadata["history"]["step"]
    assert cli.train_main([str(movie), "--out", str(timed), "--resume", str(timed), "--steps", str(step + 2),
                           "--quiet"]) == 0
    assert load_model(timed).metadata["history"]["step"] == step + 2


def test_context_model_refuses_alternating_movie_with_all_frames(tmp_path, movie, capsys):
    model = tmp_path / "m.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), *TINY, "--context", "1"]) == 0
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "r.tif"), "--quiet"]) == 2
    assert "alternates low and high exposures" in capsys.readouterr().err
    assert cli.predict_main([str(model), str(movie), "-o", str(tmp_path / "r.tif"), "--frames", "low",
                             "--quiet"]) == 0


def test_measure_writes_one_table_over_low_and_high_frames(tmp_path, capsys):
    import pandas as pd

    from napari_pgsr.analysis import CameraCalibration, measure_across, write_points_csv

    sim = simulate_movie("beads", n_frames=2, shape=(64, 64), seed=3)
    write_movie(tmp_path / "low.tif", sim.movie[:1], pixel_size_um=0.16)
    write_movie(tmp_path / "high.tif", sim.movie[1:2], pixel_size_um=0.16)
    truth = np.column_stack([sim.spots["y"], sim.spots["x"]])[sim.spots["frame"] == 1]
    write_points_csv(tmp_path / "labels.csv", truth)
    args = [str(tmp_path / "low.tif"), str(tmp_path / "high.tif"), "--points", str(tmp_path / "labels.csv"),
            "-o", str(tmp_path / "table.csv"), "--baseline-adu", "100", "--electrons-per-adu", "0.1"]
    assert cli.measure_main(args) == 0
    table = pd.read_csv(tmp_path / "table.csv", keep_default_na=False, na_values=[""])
    expected = measure_across({"low": sim.movie[0], "high": sim.movie[1]}, truth, pixel_size_nm=160.0,
                              camera=CameraCalibration(100, 0.1))
    assert table["image"].tolist() == expected.table["image"].tolist() and len(table) == 2 * len(truth)
    np.testing.assert_allclose(table["fwhm_nm"], expected.table["fwhm_nm"], rtol=1e-9)
    summary = pd.read_csv(tmp_path / "table_summary.csv")
    assert summary["image"].tolist() == ["low", "high"]
    out, err = capsys.readouterr()
    assert "median_fwhm_nm" in out and "table_summary.csv" in out and "no camera calibration" not in out
    assert f"{2 * len(truth)}/{2 * len(truth)}" in err and "fit/s" in err  # the progress bar, on stderr
    assert "low: suggestions" in err and "high: profile" in err  # the steps after the fits are named
    assert cli.measure_main([*args, "-o", str(tmp_path / "quiet.csv"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")  # no progress, and no summary either (it printed the summary)
    # without a calibration, photons and precision read grey levels as photons: said (4 nm where 28-53 was right)
    assert cli.measure_main([*args[:4], "-o", str(tmp_path / "uncalibrated.csv")]) == 0
    assert "note: no camera calibration given" in capsys.readouterr().out
    # existing output, output over an input, images of different shapes: exit 2, inputs untouched
    assert cli.measure_main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    over_input = args[:-5] + [str(tmp_path / "labels.csv"), "--overwrite"]
    assert cli.measure_main(over_input) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    write_movie(tmp_path / "small.tif", sim.movie[:1, :32, :32])
    assert cli.measure_main([str(tmp_path / "low.tif"), str(tmp_path / "small.tif"), *args[2:4], "-o",
                             str(tmp_path / "t2.csv")]) == 2
    assert "image 'small' has shape (32, 32) but 'low' has (64, 64)" in capsys.readouterr().err
    assert not (tmp_path / "t2.csv").exists()
    # settings no measurement can use, and a folder as the table: one line each, exit 2 (a traceback before)
    base = [*args[:4], "-o", str(tmp_path / "t3.csv")]
    for flags, message in [(["--radius", "-1"], "--radius -1: expected at least 2"),
                           (["--pixel-size-nm", "-100"], "--pixel-size-nm -100: expected above 0"),
                           (["--electrons-per-adu", "0"], "--electrons-per-adu 0: expected above 0"),
                           (["--read-noise", "-1"], "--read-noise -1: expected 0 or more")]:
        assert cli.measure_main([*base, *flags]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert cli.measure_main([*args[:4], "-o", str(tmp_path / "folder"), "--overwrite"]) == 2
    assert "folder is a folder; give a file name for the table" in capsys.readouterr().err
    # the camera's clipping level flags the spots that reach it (here: every bead of the high frame)
    assert cli.measure_main([*base, "--saturation-adu", "150", "--quiet"]) == 0
    flagged = pd.read_csv(tmp_path / "t3.csv", keep_default_na=False)
    assert flagged["flag"][flagged["image"] == "high"].str.contains("saturated").all()
    # an sCMOS's read noise widens the precision as more background would (here: 1 e- per grey level)
    read = [*args[:4], "--baseline-adu", "100", "--excess-noise", "1", "--quiet", "--overwrite"]
    assert cli.measure_main([*read, "-o", str(tmp_path / "r0.csv")]) == 0
    assert cli.measure_main([*read, "-o", str(tmp_path / "r2.csv"), "--read-noise", "2"]) == 0
    r0, r2 = (pd.read_csv(tmp_path / name) for name in ("r0.csv", "r2.csv"))
    assert (r2["precision_nm"] > r0["precision_nm"]).all()
    assert r2["precision_nm"][0] == pytest.approx(160 * mortensen_precision(
        r0["sigma_px"][0], r0["photons"][0], r0["background_photons"][0] + 4.0, 1.0))


def test_measure_names_images_of_one_file_name_apart_and_checks_their_pixel_sizes(tmp_path, capsys):
    import pandas as pd

    from napari_pgsr.analysis import write_points_csv

    sim = simulate_movie("beads", n_frames=2, shape=(48, 48), seed=5)
    for folder, frame, size in (("a", 0, 0.16), ("b", 1, 0.16), ("c", 1, None)):
        (tmp_path / folder).mkdir()
        write_movie(tmp_path / folder / "restored.tif", sim.movie[frame], pixel_size_um=size)
    write_movie(tmp_path / "d.tif", sim.movie[1], pixel_size_um=0.1)
    labels = np.column_stack([sim.spots["y"], sim.spots["x"]])[sim.spots["frame"] == 1]
    write_points_csv(tmp_path / "labels.csv", labels)
    common = ["--points", str(tmp_path / "labels.csv"), "--quiet"]
    images = [str(tmp_path / folder / "restored.tif") for folder in "abc"]
    assert cli.measure_main([*images, *common, "-o", str(tmp_path / "t.csv")]) == 0
    summary = pd.read_csv(tmp_path / "t_summary.csv")
    assert summary["image"].tolist() == images and (summary["spots"] == len(labels)).all()  # none dropped
    table = pd.read_csv(tmp_path / "t.csv")
    np.testing.assert_allclose(table["fwhm_nm"], table["fwhm_px"] * 160.0)  # from a and b; c has none
    assert cli.measure_main([images[0], str(tmp_path / "d.tif"), *common, "-o", str(tmp_path / "u.csv")]) == 2
    assert "different pixel sizes (restored: 160 nm, d: 100 nm); pass the right one with --pixel-size-nm" in (
        capsys.readouterr().err)
    assert cli.measure_main([images[0], str(tmp_path / "d.tif"), *common, "-o", str(tmp_path / "u.csv"),
                             "--pixel-size-nm", "160"]) == 0
    assert cli.measure_main([images[0], images[0], *common, "-o", str(tmp_path / "v.csv")]) == 2
    assert "an image is given twice" in capsys.readouterr().err
    # a stem that is another file's name: b.tif and b.tif.tif would both be "b.tif"
    paths = [Path("b.tif"), Path("x/b.tif"), Path("y/b.tif.tif")]
    assert cli.measure.image_names(paths) == ["b.tif", "x/b.tif", "y/b.tif.tif"]


def test_recipe_sets_the_measured_progan_settings_and_flags_override_it(tmp_path, movie, capsys):
    model = tmp_path / "gan.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), "--recipe", "progan-spots", "--steps", "3",
                           "--warmup-steps", "1", "--critic-steps", "1", "--patch", "16", "--start-resolution", "16",
                           "--batch", "4", "--validation-every", "2", "--validation-patches", "4", "--device", "cpu",
                           "--quiet"]) == 0
    assert "recipe progan-spots: measured to work on simulated AP2 and beads movies only" in capsys.readouterr().err
    config = load_model(model).metadata["config"]
    # from the recipe
    assert config["model"] == "progan" and config["width"] == 0.125 and config["lambda_gan"] == 0.01
    assert config["rot180_average"] and config["critic_noise"] and config["offset"] is False
    assert config["recipe"] == "progan-spots"  # the model file says which recipe it started from
    # from the flags
    assert (config["steps"], config["warmup_steps"], config["critic_steps"], config["patch"]) == (3, 1, 1, 16)
    assert cli.train_main([str(movie), "--out", str(model), "--recipe", "progan-spots", "--resume", str(model),
                           "--quiet"]) == cli.EXIT_BAD_INPUT
    assert "--recipe starts a new run" in capsys.readouterr().err
    assert cli.train_main([str(movie), "--out", str(tmp_path / "u.pgsr"), "--recipe", "progan-spots", "--model",
                           "unet", "--quiet"]) == cli.EXIT_BAD_INPUT
    error = capsys.readouterr().err  # (the model, not the recipe's settings it made wrong, is named)
    assert ("recipe progan-spots trains a progan, but --model sets model unet; leave out the recipe or the model"
            in error)
    args = cli.train_parser().parse_args([str(movie), "--out", "x.pgsr", "--recipe", "progan-spots", "--batch", "0"])
    with pytest.raises(ValueError, match="batch must be >= 1") as raised:  # not the recipe's doing
        cli.build_config(args)
    assert "came from --recipe" not in str(raised.value)
    with pytest.raises(SystemExit):  # argparse names the recipes
        cli.train_parser().parse_args([str(movie), "--out", "x.pgsr", "--recipe", "nonsense"])
    assert "progan-spots" in capsys.readouterr().err


def test_a_config_file_overrides_only_what_it_sets(tmp_path, movie):
    (tmp_path / "cfg.yaml").write_text("device: cpu\nsteps: 5\n")
    args = cli.train_parser().parse_args([str(movie), "--out", "x.pgsr", "--recipe", "progan-spots", "--config",
                                          str(tmp_path / "cfg.yaml"), "--lambda-gan", "0.02"])
    config = cli.build_config(args)
    assert (config.model, config.width, config.critic_noise, config.offset) == ("progan", 0.125, True, False)
    assert (config.device, config.steps, config.lambda_gan) == ("cpu", 5, 0.02)
    (tmp_path / "bad.yaml").write_text("stepz: 5\n")
    args = cli.train_parser().parse_args([str(movie), "--out", "x.pgsr", "--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(ValueError, match=r"bad.yaml: unknown training config keys \['stepz'\]"):
        cli.build_config(args)


def test_settings_only_the_other_model_reads_are_refused(tmp_path, movie):
    """`--model progan --lr 1e-9` trained the same weights as --lr 4e-4, without a word."""
    def build(*flags):
        return cli.build_config(cli.train_parser().parse_args([str(movie), "--out", "x.pgsr", *flags]))

    with pytest.raises(cli.BadInput, match=r"^--depth, --lr: settings of the U-Net, which a ProGAN does not read "
                                           r"\(a ProGAN's learning rates are --warmup-lr and --gan-lr"):
        build("--model", "progan", "--lr", "1e-9", "--depth", "3")
    with pytest.raises(cli.BadInput, match=r"^--gan-lr: a setting of the ProGAN, which a U-Net does not read$"):
        build("--gan-lr", "1e-3")
    # a config file written by --write-config holds every field: its defaults are no choice
    build("--model", "progan").save(tmp_path / "progan.yaml")
    assert build("--config", str(tmp_path / "progan.yaml")).model == "progan"
    (tmp_path / "unet.yaml").write_text("model: unet\nwarmup_steps: 100\n")
    with pytest.raises(cli.BadInput, match=r"^warmup_steps \(in unet.yaml\): a setting of the ProGAN"):
        build("--config", str(tmp_path / "unet.yaml"))


def test_split_writes_the_low_and_high_stacks_the_pairs_are_made_of(tmp_path, capsys):
    from napari_pgsr.pairs import split_alternating

    sim = simulate_movie("beads", n_frames=9, shape=(32, 32), seed=1)  # an odd count: the last frame unmatched
    movie = write_movie(tmp_path / "cells.tif", sim.movie, pixel_size_um=0.16)
    assert cli.split_main([str(movie), "-o", str(tmp_path / "out")]) == 0
    said = capsys.readouterr()
    assert "cells.tif: low exposure first" in said.out
    # -o names the folder: a movie's name there made a folder of that name
    assert cli.split_main([str(movie), "-o", str(tmp_path / "cells_low.tif")]) == 2
    assert "-o is the folder for the two movies" in capsys.readouterr().err
    assert not (tmp_path / "cells_low.tif").exists()
    assert "exposures:" in said.err and "cells_high.tif: 100%" in said.err and "| 4/4" in said.err
    pairs = split_alternating(read_movie(movie))
    for kind, stack in (("low", pairs.low), ("high", pairs.high)):
        written = read_movie(tmp_path / "out" / f"cells_{kind}.tif")
        assert written.shape == (4, 32, 32) and written.pixel_size_um == pytest.approx(0.16)
        np.testing.assert_array_equal(written.data.compute(), stack.compute())
    before = (tmp_path / "out" / "cells_low.tif").read_bytes()
    assert cli.split_main([str(movie), "-o", str(tmp_path / "out"), "--high-first"]) == 2
    assert "cells_low.tif" in capsys.readouterr().err
    assert (tmp_path / "out" / "cells_low.tif").read_bytes() == before
    assert cli.split_main([str(movie), "-o", str(tmp_path / "out"), "--high-first", "--overwrite"]) == 0
    # told the other phase: each low frame (still the dim ones) is paired with the high frame before it
    np.testing.assert_array_equal(read_movie(tmp_path / "out" / "cells_high.tif").data.compute(), sim.movie[1:9:2])
    np.testing.assert_array_equal(read_movie(tmp_path / "out" / "cells_low.tif").data.compute(), sim.movie[2:9:2])
    # the written stacks say which movie frames they hold (after a left-out frame, frame i is not 2i)
    with tifffile.TiffFile(tmp_path / "out" / "cells_low.tif") as written:
        assert "movie frames (from 0): 2-8 step 2" in written.imagej_metadata["Info"]
    # and keep the movie's own description (its exposures, say): split replaced it with its own
    described = write_movie(tmp_path / "described.tif", sim.movie, pixel_size_um=0.16,
                            description="exposure 10/100 ms, interval 0.2 s")
    assert cli.split_main([str(described), "-o", str(tmp_path / "described"), "--quiet"]) == 0
    with tifffile.TiffFile(tmp_path / "described" / "described_high.tif") as written:
        assert written.imagej_metadata["Info"].endswith("; its description: exposure 10/100 ms, interval 0.2 s")
    # an upper-case suffix is a suffix too (Cells.TIF made Cells.TIF_low.tif)
    shouting = tmp_path / "Cells.OME.TIF"
    movie.rename(shouting)
    assert cli.split_main([str(shouting), "-o", str(tmp_path / "caps"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "caps").iterdir()) == ["Cells_high.tif", "Cells_low.tif"]


def test_a_split_cut_short_leaves_the_old_pair_as_it_was(tmp_path, monkeypatch):
    """The low movie was replaced before the high one was written: a failure between left a new low beside
    an old high, two files that no longer pair."""
    import napari_pgsr.io

    sim = simulate_movie("beads", 8, (16, 16), seed=3)
    movie = write_movie(tmp_path / "cells.tif", sim.movie)
    old = {kind: write_movie(tmp_path / "out" / f"cells_{kind}.tif", np.zeros((2, 4, 4), np.uint16)).read_bytes()
           for kind in ("low", "high")}
    written = []

    def write_then_fail(path, *args, **kwargs):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        return write_movie(path, *args, **kwargs)

    monkeypatch.setattr(napari_pgsr.io, "write_movie", write_then_fail)
    assert cli.split_main([str(movie), "-o", str(tmp_path / "out"), "--overwrite", "--quiet"]) == 2
    assert written and {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == {
        f"cells_{kind}.tif": data for kind, data in old.items()}  # both old, no temporary file left
    monkeypatch.undo()
    assert cli.split_main([str(movie), "-o", str(tmp_path / "fresh"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["cells_high.tif", "cells_low.tif"]
    # a folder where the high movie goes: found before the low one is replaced (it was, then the rename failed)
    (tmp_path / "out" / "cells_high.tif").unlink()
    (tmp_path / "out" / "cells_high.tif").mkdir()
    assert cli.split_main([str(movie), "-o", str(tmp_path / "out"), "--overwrite", "--quiet"]) == 2
    assert (tmp_path / "out" / "cells_low.tif").read_bytes() == old["low"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells_high.tif", "cells_low.tif"]


SPLIT_SLOWLY = """
import sys, time
import napari_pgsr.io as io
from napari_pgsr import cli
from napari_pgsr.analysis import mortensen_precision

frames = io._frames
def slow(*args, **kwargs):  # a movie of thousands of frames: minutes of writing
    for frame in frames(*args, **kwargs):
        time.sleep(0.2)
        yield frame
io._frames = slow
sys.exit(cli.split_main([sys.argv[1], "-o", sys.argv[2], "--quiet"]))
"""


def test_a_split_terminated_leaves_no_hidden_half_written_file(tmp_path):
    """SIGTERM (a batch system's time limit) left a hidden temporary file as large as the low movie."""
    import signal
    import subprocess
    import sys
    import time

    movie = write_movie(tmp_path / "cells.tif", simulate_movie("beads", 40, (16, 16), seed=3).movie)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", SPLIT_SLOWLY, str(movie), str(out)], stderr=subprocess.PIPE,
                               text=True)
    began = time.time()
    while not (out.exists() and any(out.iterdir())) and time.time() - began < 60:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "terminated; nothing was written" in err
    assert list(out.iterdir()) == []


def test_split_names_a_compressed_frame_that_does_not_decode(tmp_path, capsys):
    """imagecodecs raises RuntimeErrors: they were a 26-frame traceback naming neither file nor frame."""
    import tifffile

    frames = np.stack([np.full((16, 16), 110 if t % 2 == 0 else 1000, np.uint16) for t in range(12)])
    path = tmp_path / "zipped.tif"
    tifffile.imwrite(path, frames, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[9].dataoffsets[0], tif.pages[9].databytecounts[0]
    with open(path, "r+b") as file:
        file.seek(offset + 2)
        file.write(b"\xff" * (count - 4))
    assert cli.split_main([str(path), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "zipped.tif: frame 9 cannot be read (" in err and "the file is damaged there" in err
    assert "Traceback" not in err and not list((tmp_path / "out").glob("*.tif"))


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 1099511627776 bytes"),
                                   MemoryError()])
def test_training_out_of_memory_is_one_line_with_what_to_lower(tmp_path, movie, capsys, monkeypatch, error):
    from napari_pgsr.training import loop

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(loop, "train", out_of_memory)
    assert cli.train_main([str(movie), "--out", str(tmp_path / "m.pgsr"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "error: out of memory" in err and "smaller --batch, --patch or --width" in err and "Traceback" not in err
    monkeypatch.setattr(loop, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not dressed up as memory
        cli.train_main([str(movie), "--out", str(tmp_path / "m.pgsr"), *TINY])


def test_a_commands_warnings_are_one_plain_line(tmp_path, movie):
    """Python printed a warning with the file, line and source line in napari-pgsr that raised it."""
    import subprocess
    import sys

    model = tmp_path / "m.pgsr"
    assert cli.train_main([str(movie), "--out", str(model), *TINY]) == 0
    scaled = write_movie(tmp_path / "scaled.tif", read_movie(movie).frames[:4].astype(np.float32) / 100)
    done = subprocess.run([sys.executable, "-m", "napari_pgsr.cli", "predict", str(model), str(scaled), "-o",
                           str(tmp_path / "r.tif"), "--quiet", "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.startswith("napari-pgsr-predict: warning: scaled.tif: its grey levels"), done.stderr
    assert "UserWarning" not in done.stderr and "restore_to_file(" not in done.stderr


def test_only_napari_pgsrs_own_warnings_are_said_plainly():
    import warnings

    from napari_pgsr.cli.common import warnings_said_plainly

    @warnings_said_plainly("prog")
    def main(argv=None):
        return (warnings.formatwarning("ours", UserWarning, "/site/napari_pgsr/pairs.py", 3),
                warnings.formatwarning("theirs", RuntimeWarning, "/site/numpy/lib.py", 5, "x = y"))

    before = warnings.formatwarning
    ours, theirs = main()
    assert ours == "prog: warning: ours\n" and "numpy/lib.py:5: RuntimeWarning: theirs" in theirs
    assert warnings.formatwarning is before
