"""The README's main job (command 1), headless."""

from pathlib import Path

import pytest

from napari_pgsr import demo
from napari_pgsr.io import read_movie


def test_demo_core_steps_print_what_they_did(tmp_path, capsys):
    args = ["--no-viewer", "--frames", "20", "--size", "64", "--output", str(tmp_path), "--steps", "2", "--width", "4"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "simulated ap2 movie: 20 frames of 64x64 px" in out
    assert "exposure pairs: low exposure first" in out and "10 pairs" in out
    assert read_movie(tmp_path / "ap2_sample.tif").shape == (20, 64, 64)
    assert (tmp_path / "ap2_sample_spots.csv").exists() and (tmp_path / "ap2_sample_low_spots.csv").exists()
    assert "training a U-Net (depth 2, width 4) for 2 steps" in out
    assert read_movie(tmp_path / "ap2_sample_restored.tif").shape == (10, 64, 64)
    before = (tmp_path / "ap2_sample.tif").stat().st_mtime_ns
    assert demo.main(args) == 0  # a second run reuses the sample, never rewrites it
    again = capsys.readouterr().out
    assert "using the sample movie already" in again and "using the model already" in again
    assert (tmp_path / "ap2_sample.tif").stat().st_mtime_ns == before


def test_demo_headless_viewer_docks_widget_and_saves_screenshot(tmp_path, capsys, monkeypatch, qapp):
    monkeypatch.setenv("NAPARI_PGSR_SYNC", "1")
    shot = Path(tmp_path) / "shot.png"
    assert demo.main(["--headless", "--frames", "20", "--size", "64", "--output", str(tmp_path),
                      "--screenshot", str(shot), "--steps", "2", "--width", "4"]) == 0
    out = capsys.readouterr().out
    assert "napari: ap2_sample low | ap2_sample high | ap2_sample_restored side by side, spot labels on each" in out
    assert "docked: Exposure pairs, Train, Restore, Spots" in out
    # the Spots widget measured the suggested spots of the first high frame on low, high and restored
    assert "ap2_sample high: " in out and "ap2_sample_restored: " in out and "median FWHM" in out
    # the Spots widget holds the simulated camera's calibration, so the table's photons are photons
    assert "camera set to the simulated EMCCD: baseline 100 grey levels, 0.1 e- per grey level" in out
    assert shot.stat().st_size > 10_000


def _core_args(folder, steps: int) -> list[str]:
    return ["--no-viewer", "--frames", "20", "--size", "64", "--output", str(folder), "--steps", str(steps),
            "--width", "4"]


def _on_message(monkeypatch, text: str, action):
    """Run `action` (a Ctrl-C, say) once the demo has said something containing `text`; returns the real say."""
    say = demo.say

    def hooked(message: str) -> None:
        say(message)
        if text in message:
            action()
    monkeypatch.setattr(demo, "say", hooked)
    return say


def test_demo_resumes_an_interrupted_training_and_restores_with_the_finished_model(tmp_path, capsys, monkeypatch):
    from napari_pgsr.modelfile import load_model

    args = _core_args(tmp_path, steps=4)

    def second_ctrl_c():
        raise KeyboardInterrupt  # at once, after the checkpoint of step 2
    say = _on_message(monkeypatch, "step 3:", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        demo.main(args)
    model_path = tmp_path / "ap2_sample_unet.pgsr"
    assert load_model(model_path).training_state["step"] == 2
    args[-1] = "8"  # run again with another width: the unfinished run resumes with the width it started with
    assert not (tmp_path / "ap2_sample_restored.tif").exists()
    monkeypatch.setattr(demo, "say", say)
    capsys.readouterr()
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert f"resuming the unfinished training in {model_path} at step 2 (width 4)" in out
    state = load_model(model_path).training_state
    assert (state["step"], state["reason"]) == (4, "done")
    assert demo.main([*args[:-1], "8"]) == 0  # a finished model made with another width is kept, and said to be
    assert ("using the model already in" in (out := capsys.readouterr().out)
            and "(width 4, 4 steps: --width and --steps apply to a new --output folder)" in out)
    # a model trained again (here: deleted and retrained) makes the restored movie again
    restored = tmp_path / "ap2_sample_restored.tif"
    before = restored.stat().st_mtime_ns
    model_path.unlink()
    assert demo.main([*args[:-4], "--steps", "3", "--width", "4"]) == 0
    out = capsys.readouterr().out
    assert "using the sample movie already" in out and "restored 10 low-exposure frames" in out
    assert restored.stat().st_mtime_ns > before
    assert demo.main([*args[:4], "32", *args[5:]]) == 0  # another size: the kept sample is said to differ
    assert "(20 frames of 64x64 px: --frames and --size apply to a new --output folder)" in capsys.readouterr().out


def test_ctrl_c_during_the_demos_training_saves_the_model_and_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    """It ended in a 30-line KeyboardInterrupt traceback from inside the optimiser."""
    import os
    import signal

    from napari_pgsr.modelfile import load_model

    args = _core_args(tmp_path, steps=8)
    _on_message(monkeypatch, "step 2:", lambda: os.kill(os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)  # (ignored in a background job, as CI runs it)
    assert demo.main(args) == 130
    out = capsys.readouterr().out
    state = load_model(tmp_path / "ap2_sample_unet.pgsr").training_state
    assert state["reason"] == "stopped" and 2 <= state["step"] < 8
    assert f"stopped at step {state['step']}; the model is saved in" in out and "run the demo again to resume" in out
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C does again what it did
