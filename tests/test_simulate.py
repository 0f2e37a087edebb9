import numpy as np
import pytest
from scipy import ndimage

from napari_pgsr import simulate
from napari_pgsr.io import read_movie
from napari_pgsr.physics import EMCCD, Microscope
from napari_pgsr.simulate import Acquisition, Scene, low_frame_spots, simulate_movie


def test_deterministic_from_seed():
    a = simulate_movie("single_molecules", 6, (32, 48), seed=5)
    b = simulate_movie("single_molecules", 6, (32, 48), seed=5)
    c = simulate_movie("single_molecules", 6, (32, 48), seed=6)
    assert a.movie.shape == (6, 32, 48) and a.movie.dtype == np.uint16
    np.testing.assert_array_equal(a.movie, b.movie)
    np.testing.assert_array_equal(a.spots["x"], b.spots["x"])
    assert not np.array_equal(a.movie, c.movie)


@pytest.mark.parametrize("kind", simulate.KINDS)
def test_every_kind_alternates_exposures_and_has_spots(kind):
    sim = simulate_movie(kind, 10, (64, 64), seed=0)
    np.testing.assert_allclose(sim.exposures_s, [0.01, 0.1] * 5)
    signal = sim.expected.mean(axis=(1, 2)) - EMCCD().baseline_adu
    assert np.all(signal[1::2] > 5 * signal[0::2])  # 10x the light, minus bleaching and a little CIC
    assert sim.spots["frame"].size > 0
    assert set(np.unique(sim.spots["frame"])) <= set(range(10))


def test_movie_mean_matches_the_noise_free_expectation(ap2_small):
    residual = ap2_small.movie.astype(np.float64) - ap2_small.expected
    assert abs(residual.mean()) < 0.5  # ADU, over 160k pixels of noise with std ~ 5-30 ADU


def test_high_first_and_any_size():
    sim = simulate_movie("beads", 4, (50, 70), acquisition=Acquisition(low_first=False))
    assert sim.movie.shape == (4, 50, 70)
    np.testing.assert_allclose(sim.exposures_s, [0.1, 0.01, 0.1, 0.01])
    assert not sim.low_first


def test_spot_positions_recovered_by_centroid_at_high_signal():
    # bright (10,000 photons, below 16-bit saturation), static, isolated beads with the default PSF
    scene = Scene(kind="beads", spots_per_um2=0.01, spot_rate=1e5, cell_background_rate=0.0,
                  outside_background_rate=10.0, with_cell=False, diffusion_um2_s=0.0, bleach_time_s=1e9)
    sim = simulate_movie("beads", 2, (128, 128), seed=2, scene=scene)
    frame = sim.movie[1].astype(np.float64) - EMCCD().baseline_adu
    truth = np.column_stack([sim.spots["y"], sim.spots["x"]])[sim.spots["frame"] == 1]
    inside = np.all((truth > 4) & (truth < 123), axis=1)
    spacing = np.linalg.norm(truth[:, None] - truth[None], axis=-1) + np.eye(len(truth)) * 99
    isolated = inside & (spacing.min(axis=1) > 8)
    assert isolated.sum() >= 3
    for y, x in truth[isolated]:
        r, c = int(round(y)), int(round(x))
        window = frame[r - 3:r + 4, c - 3:c + 4]
        cy, cx = ndimage.center_of_mass(np.clip(window, 0, None))
        assert abs(r - 3 + cy - y) < 0.1 and abs(c - 3 + cx - x) < 0.1


def test_psf_width_of_simulated_spots_follows_optics():
    scope = Microscope(psf_sigma_nm=240.0)  # 1.5 px, so the width is easy to measure
    scene = Scene(kind="beads", spots_per_um2=0.01, spot_rate=5e6, with_cell=False, cell_background_rate=0.0,
                  outside_background_rate=0.0, diffusion_um2_s=0.0, bleach_time_s=1e9)
    sim = simulate_movie("beads", 2, (96, 96), seed=4, microscope=scope, scene=scene)
    y, x = sim.spots["y"][sim.spots["frame"] == 1][0], sim.spots["x"][sim.spots["frame"] == 1][0]
    r, c = int(round(y)), int(round(x))
    window = sim.expected[1].astype(np.float64) - EMCCD().baseline_adu
    window = window[max(r - 6, 0):r + 7, max(c - 6, 0):c + 7]
    yy = np.arange(window.shape[0])
    profile = window.sum(axis=1) / window.sum()
    mean = (profile * yy).sum()
    sigma = np.sqrt((profile * (yy - mean) ** 2).sum() - 1 / 12)  # minus pixel-integration variance
    assert sigma == pytest.approx(1.5, rel=0.05)


def test_unknown_kind_and_bad_shape_are_explained():
    with pytest.raises(ValueError, match="unknown sample kind 'cells'"):
        simulate_movie("cells")
    with pytest.raises(ValueError, match="at least 8x8"):
        simulate_movie("ap2", 4, (4, 4))


def test_command_line_writes_movie_truth_and_expectation(tmp_path, capsys):
    out = tmp_path / "sm.ome.tif"
    assert simulate.main(["--kind", "single_molecules", "--frames", "6", "--size", "40", "48", "--expected",
                          "-o", str(out)]) == 0
    movie = read_movie(out)
    assert movie.shape == (6, 40, 48) and movie.pixel_size_um == pytest.approx(0.16)
    assert read_movie(tmp_path / "sm_expected.tif").shape == (6, 40, 48)
    table = np.loadtxt(tmp_path / "sm_spots.csv", delimiter=",", skiprows=1, ndmin=2)
    header = (tmp_path / "sm_spots.csv").read_text().splitlines()[0]
    assert header == "frame,id,y,x,photons" and table.shape[1] == 5
    assert "wrote" in capsys.readouterr().out
    # the low frames' spots, numbered as the low stack's frames: labels for a `--frames low` restoration
    low = np.loadtxt(tmp_path / "sm_low_spots.csv", delimiter=",", skiprows=1, ndmin=2)
    np.testing.assert_array_equal(low[:, 1:], table[table[:, 0] % 2 == 0][:, 1:])  # low first: frames 0, 2, 4
    np.testing.assert_array_equal(low[:, 0], table[table[:, 0] % 2 == 0][:, 0] // 2)
    # existing outputs are kept unless --overwrite; one frame (no pair) is refused before anything is written
    before = out.read_bytes()
    assert simulate.main(["--frames", "4", "--size", "32", "-o", str(out)]) == 2
    err = capsys.readouterr().err  # one line, as the other commands say it (no usage dump)
    assert err.startswith("napari-pgsr-simulate: error: ") and "sm.ome.tif" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    assert simulate.main(["--frames", "4", "--size", "32", "-o", str(out), "--overwrite"]) == 0
    assert read_movie(out).shape == (4, 32, 32)
    assert simulate.main(["--frames", "1", "--size", "32", "-o", str(tmp_path / "one.tif")]) == 2
    assert "--frames: at least 2 (a low and a high exposure), got 1" in capsys.readouterr().err
    assert not (tmp_path / "one.tif").exists()


def test_low_frame_spots_follow_the_pairs_of_a_high_first_movie():
    sim = simulate_movie("beads", 7, (32, 32), seed=2, acquisition=Acquisition(low_first=False))
    low = low_frame_spots(sim)
    # high first: low frames 1, 3, 5 are pairs 0-2; the last frame (6, high, unmatched) has no pair
    assert set(low["frame"]) == {0, 1, 2}
    for pair, frame in enumerate((1, 3, 5)):
        np.testing.assert_array_equal(low["y"][low["frame"] == pair], sim.spots["y"][sim.spots["frame"] == frame])


def test_simulation_reports_frame_times_and_bleaching():
    sim = simulate_movie("ap2", 4, (32, 32), seed=0)
    # 10 ms low, 10 ms readout, 100 ms high, readout, ...: midpoints at 5, 70, 135 and 200 ms
    np.testing.assert_allclose(sim.mid_times_s, [0.005, 0.070, 0.135, 0.200])
    assert np.all(np.diff(sim.bleach) < 0) and 0.99 < sim.bleach[0] < 1.0


def test_molecules_blink_at_their_rates_within_exposures():
    """The chain took 1 - exp(-k dt) for each switch (the on share drifted from 9.1% to 10.3%), and a molecule
    was on or off for a whole exposure."""
    scene = simulate.SCENES["single_molecules"]
    emitters = simulate._Emitters(scene, 50_000, (64, 64), np.ones((64, 64)), 0.0, 100.0,
                                  np.random.default_rng(0))
    _, _, on = emitters.advance(np.arange(0, 20, 0.0125))
    design = scene.on_rate_hz / (scene.on_rate_hz + scene.off_rate_hz)
    assert on[:, :80].mean() == pytest.approx(design, rel=0.03) and on[:, -400:].mean() == pytest.approx(design,
                                                                                                          rel=0.03)
    sim = simulate_movie("single_molecules", 40, (96, 96), seed=3)
    full = scene.spot_rate * sim.exposures_s * sim.bleach
    share = sim.spots["photons"] / full[sim.spots["frame"]]
    high = sim.spots["frame"] % 2 == 1
    assert share.max() <= 1 + 1e-9 and 0.2 < np.mean(share[high] < 0.95) < 0.8  # on for part of 100 ms


def test_spots_blur_as_they_move_within_an_exposure():
    """A spot was drawn once, where it was at mid-exposure: 174 nm wide where 100 ms of diffusion gives 179."""
    from napari_pgsr.analysis.fit import fit_spot

    scene = Scene(kind="beads", spots_per_um2=0.005, spot_rate=1e6, cell_background_rate=0.0,
                  outside_background_rate=0.0, with_cell=False, diffusion_um2_s=0.01, bleach_time_s=1e9)
    scope, widths = Microscope(), []
    for seed in range(30):
        sim = simulate_movie("beads", 2, (64, 64), seed=seed, scene=scene)
        rows = sim.spots["frame"] == 1
        image = sim.expected[1].astype(np.float64) - EMCCD().baseline_adu
        widths += [fit_spot(image, y, x).fwhm_px * scope.pixel_size_nm
                   for y, x in zip(sim.spots["y"][rows], sim.spots["x"][rows]) if 6 < min(y, x) and max(y, x) < 58]
    blurred = 2.3548 * np.sqrt(scope.sigma_nm**2 + 0.01e6 * 0.1 / 3)  # sigma^2 + D T / 3 over a 100 ms exposure
    assert len(widths) >= 8 and np.mean(widths) == pytest.approx(blurred, rel=0.01)
