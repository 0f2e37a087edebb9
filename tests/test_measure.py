import numpy as np
import pandas as pd
import pytest
from scipy.special import erf

from scipy.integrate import quad

from napari_pgsr.analysis import (CameraCalibration, average_profile, iter_measure_across, iter_measure_spots,
                                  measure_across, measure_spots, mortensen_mle_precision, mortensen_precision,
                                  read_points_csv, snap_to_maximum, write_points_csv)
from napari_pgsr.generators import run_to_end
from napari_pgsr.physics import EMCCD, Microscope, render_spots


def spot_grid(rng, size=256, step=12):
    """Spots on a jittered grid, far enough apart not to overlap."""
    grid = np.stack(np.meshgrid(np.arange(8, size - 6, step), np.arange(8, size - 6, step)), -1).reshape(-1, 2)
    return grid + rng.uniform(-0.5, 0.5, grid.shape)


def test_position_error_at_low_exposure_matches_mortensen_with_emccd_excess_noise():
    # the simulator's 10 ms frame of an AP2 pit: ~80 photons on 5 background photons per pixel
    rng = np.random.default_rng(0)
    camera, sigma = EMCCD(), Microscope().sigma_px
    truth = spot_grid(rng)
    frame = camera.expose(render_spots((256, 256), truth[:, 0], truth[:, 1], np.full(len(truth), 80.0), sigma) + 5,
                          rng)
    table = measure_spots(frame, np.rint(truth), pixel_size_nm=160, camera=CameraCalibration.from_emccd(camera))
    good = table[table["flag"] == ""]
    assert len(good) >= 0.85 * len(truth)  # the rest: fits that collapse onto one noisy pixel, flagged
    assert set(table["flag"]) <= {"", "width at limit"}
    error_per_axis = np.sqrt(np.mean((good["y"] - truth[good["point"], 0]) ** 2
                                     + (good["x"] - truth[good["point"], 1]) ** 2) / 2)
    predicted = np.sqrt(np.mean(good["precision_px"] ** 2))
    assert error_per_axis == pytest.approx(predicted, rel=0.3)
    # no fit beats the maximum-likelihood bound (72 photoelectrons on 4.5 + CIC background per pixel)
    bound = mortensen_mle_precision(sigma, 0.9 * 80, 0.9 * 5 + camera.clock_induced_charge, 2.0)
    assert bound < error_per_axis < 1.5 * bound
    assert good["precision_nm"].median() == pytest.approx(160 * good["precision_px"].median())
    # photons are photoelectrons: QE 0.9 of the 80 photons
    assert good["photons"].median() == pytest.approx(72, rel=0.15)
    # without the EMCCD excess noise the predicted precision is sqrt(2) better
    plain = measure_spots(frame, np.rint(truth[:5]), camera=CameraCalibration(100.0, 0.1, excess_noise=1.0))
    ratio = table["precision_px"][:5].to_numpy() / plain["precision_px"].to_numpy()
    assert ratio == pytest.approx(np.full(5, np.sqrt(2)), rel=1e-6)


def test_an_scmos_read_noise_enters_the_precision_as_background():
    """On an sCMOS (excess noise 1) with 3 e- read noise over 1 photon of background per pixel, the read noise
    is most of each pixel's variance; a precision without it promised better than the fits reached."""
    rng = np.random.default_rng(1)
    sigma, read_noise = Microscope().sigma_px, 3.0
    truth = spot_grid(rng)
    light = render_spots((256, 256), truth[:, 0], truth[:, 1], np.full(len(truth), 60.0), sigma) + 1.0
    errors, with_noise, without = [], [], []
    for _ in range(4):  # four frames of the same spots
        frame = 100.0 + rng.poisson(light) + rng.normal(0.0, read_noise, light.shape)  # (1 e- per grey level)
        tables = [measure_spots(frame, np.rint(truth), camera=CameraCalibration(100.0, 1.0, 1.0, None, noise))
                  for noise in (read_noise, 0.0)]
        good = (tables[0]["flag"] == "").to_numpy()
        errors.append(np.concatenate([(tables[0]["y"] - truth[:, 0])[good], (tables[0]["x"] - truth[:, 1])[good]]))
        with_noise.append(tables[0]["precision_px"][good]), without.append(tables[1]["precision_px"][good])
    error = np.sqrt(np.mean(np.concatenate(errors) ** 2))
    # (measured: 0.137 px; 0.123 predicted with the read noise, 0.096 without)
    assert error == pytest.approx(np.sqrt(np.mean(np.concatenate(with_noise) ** 2)), rel=0.2)
    assert error > 1.3 * np.sqrt(np.mean(np.concatenate(without) ** 2))
    # the formula: r^2 / F more background photons per pixel
    assert mortensen_precision(1.2, 100.0, 3.0, 2.0, read_noise_electrons=2.0) == \
        pytest.approx(mortensen_precision(1.2, 100.0, 5.0, 2.0))


@pytest.mark.parametrize("tau", [0.0, 0.05, 0.3, 2.0])
def test_maximum_likelihood_precision_is_mortensens_integral_and_below_least_squares(tau):
    sigma, photons = 0.46, np.array([50.0, 400.0])
    sa2 = sigma**2 + 1 / 12
    background = tau * photons / (2 * np.pi * sa2)
    integral = quad(lambda t: np.log(t) / (1 + t / tau), 0, 1)[0] if tau else 0.0
    expected = np.sqrt(2.0 * sa2 / photons / (1 + integral))
    np.testing.assert_allclose(mortensen_mle_precision(sigma, photons, background, 2.0), expected, rtol=1e-9)
    least_squares = [mortensen_precision(sigma, n, b, 2.0) for n, b in zip(photons, background)]
    # without background the fits differ by the factor 16/9 in variance; with much of it they agree
    ratio = mortensen_mle_precision(sigma, photons, background, 2.0) / least_squares
    assert np.all(ratio < 1) and (tau or ratio == pytest.approx(np.full(2, 0.75)))


def test_snr_and_sbr_follow_their_stated_formulas():
    rng = np.random.default_rng(1)
    amplitude, sigma, background, noise = 3000.0, 1.5, 100.0, 4.0
    peak = amplitude * erf(0.5 / (np.sqrt(2) * sigma)) ** 2  # a pixel centred on the spot
    assert peak == pytest.approx(amplitude / (2 * np.pi * sigma**2), rel=0.05)  # ~ the Gaussian's height
    snrs, sbrs = [], []
    for _ in range(20):
        image = render_spots((41, 41), [20.3], [19.8], [amplitude], sigma) + background + rng.normal(0, noise, (41, 41))
        row = measure_spots(image, [[20, 20]], radius=5).iloc[0]
        snrs.append(row["snr"])
        sbrs.append(row["sbr"])
        assert row["flag"] == ""
    assert np.median(snrs) == pytest.approx(peak / noise, rel=0.1)
    assert np.median(sbrs) == pytest.approx(peak / background, rel=0.05)
    # SBR is relative to the camera baseline when one is given
    image = render_spots((41, 41), [20.0], [20.0], [amplitude], sigma) + background
    row = measure_spots(image, [[20, 20]], radius=5, camera=CameraCalibration(baseline_adu=60.0)).iloc[0]
    assert row["sbr"] == pytest.approx(peak / 40.0, rel=1e-3)
    assert row["fwhm_px"] == pytest.approx(2.3548 * sigma, rel=1e-3)


def test_border_overlapping_and_outside_points_are_flagged_not_crashed_on():
    image = render_spots((40, 40), [1.0, 20.0, 21.5, 30.0], [20.0, 10.0, 11.0, 30.0], [5e3] * 4, 1.0) + 10
    table = measure_spots(image, [[1, 20], [20, 10], [21.5, 11], [30, 30], [55, 3], [-2, 5]], pixel_size_nm=100)
    assert table["flag"].tolist() == ["edge", "overlap", "overlap", "", "outside image", "outside image"]
    assert table["point"].tolist() == list(range(6))
    assert np.isnan(table.loc[4, "fwhm_nm"]) and table.loc[4, "y"] == 55
    assert table.loc[3, "fwhm_nm"] == pytest.approx(235.5, rel=0.01)
    assert np.isnan(measure_spots(image, [[30, 30]])["fwhm_nm"][0])  # no pixel size, no nm
    assert measure_spots(image, [30, 30])["fwhm_px"][0] == measure_spots(image, [[30, 30]])["fwhm_px"][0]  # one
    # a neighbour just outside the window still sends light into it; a blank image has no spot to measure
    pair = render_spots((40, 40), [20.0, 20.0], [10.0, 14.5], [5e3] * 2, 1.0) + 10
    assert measure_spots(pair, [[20, 10], [20, 14.5]])["flag"].tolist() == ["overlap", "overlap"]
    assert measure_spots(np.zeros((20, 20)), [[10, 10]])["flag"][0] == "no signal"
    # in pure noise most fits are flagged: they collapse onto a noise spike, spread out, or stay below SNR 3
    flags = [measure_spots(np.random.default_rng(seed).normal(100, 3, (30, 30)), [[15, 15]])["flag"][0]
             for seed in range(20)]
    assert sum(flag != "" for flag in flags) >= 14 and any("no signal" in flag for flag in flags)
    # a label 4-6 px beside a spot: the fit's centre runs to the window's edge, towards the spot's tail
    beside = pd.concat([measure_spots(image, [[30, x]]) for x in (34, 35, 36)])
    assert beside["flag"].tolist() == ["centre at limit"] * 3
    assert beside["x"].tolist() == pytest.approx([30.5, 31.5, 32.5])
    # inside pixel 0 is inside; NaN coordinates are refused by name
    assert measure_spots(image, [[-0.3, 20]])["flag"][0] != "outside image"
    with pytest.raises(ValueError, match=r"point 1 has a coordinate that is not a number"):
        measure_spots(image, [[5, 5], [np.nan, 3]])
    # NaN pixels (a frame not restored yet) are named, not reported as a bad starting point of the fit
    holes = image.copy()
    holes[29:31, 30] = np.nan
    assert measure_spots(holes, [[30, 30], [20, 10]])["flag"].tolist() == [
        "fit failed: 2 NaN/inf pixels in the 7x7 fit window", ""]


def test_points_and_frames_of_movies():
    movie = np.full((3, 30, 30), 10.0)
    movie[1] += render_spots((30, 30), [12.0], [15.0], [5e3], 1.0)
    movie[2] += render_spots((30, 30), [20.0], [8.0], [5e3], 1.0)
    # (frame, y, x) points on a movie: each measured on its own frame
    table = measure_spots(movie, [[1, 12, 15], [2, 20, 8], [7, 5, 5]])
    assert table["frame"].tolist() == [1, 2, 7]
    assert table["y"][:2].to_numpy() == pytest.approx([12, 20], abs=1e-3)
    assert table["flag"][2] == "outside image"
    # 2-D points on a movie: the chosen frame, or a clear error
    with pytest.raises(ValueError, match=r"points are 2-D .* a movie: .*\(napari-pgsr-measure --frame N\)"):
        measure_spots(movie, [[12, 15]])
    assert measure_spots(movie, [[12, 15]], frame=1)["frame"].tolist() == [1]
    # 3-D points on a single frame: only the points of the chosen frame
    with pytest.raises(ValueError, match="carry a frame index"):
        measure_spots(movie[1], [[1, 12, 15]])
    assert measure_spots(movie[1], [[1, 12, 15], [2, 20, 8]], frame=1)["y"].to_numpy() == pytest.approx([12], abs=1e-3)
    # ...numbered as in the labels (they were renumbered from 0, naming the wrong label)
    on_frame_2 = measure_spots(movie[2], [[1, 12, 15], [2, 20, 8], [2, 5, 25]], frame=2)
    assert on_frame_2["point"].tolist() == [1, 2] and on_frame_2["y"][0] == pytest.approx(20, abs=1e-3)
    with pytest.raises(ValueError, match="no points to measure"):
        measure_spots(movie[1], np.empty((0, 2)))
    # 3-D points on a movie with a frame asked for: that frame's points (--frame 2 measured every frame)
    only_2 = measure_spots(movie, [[1, 12, 15], [2, 20, 8], [2, 5, 25]], frame=2)
    assert only_2["frame"].tolist() == [2, 2] and only_2["point"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="none of the 2 points lies on frame 0"):
        measure_spots(movie, [[1, 12, 15], [2, 20, 8]], frame=0)


def test_nan_pixels_around_a_spot_leave_its_noise_measured_from_the_others():
    """One NaN in the background ring (a registered image's padding) made its noise NaN: SNR NaN, and the
    'no signal' test skipped, so empty background passed as a usable spot."""
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 5.0, (40, 40)) + render_spots((40, 40), [20.0], [20.0], [2e4], 1.0)
    image[:, 25:] = np.nan  # 5 px from the spot: in its ring, not in its fit window
    spot, empty = measure_spots(image, [[20, 20], [20, 10]]).itertuples()
    assert np.isfinite(spot.snr) and spot.snr > 20 and spot.flag == ""
    assert "no signal" in empty.flag or "width at limit" in empty.flag
    mostly_nan = np.full((40, 40), np.nan)  # only the 5 x 5 fit window has values: 4 ring pixels
    mostly_nan[18:23, 18:23] = image[18:23, 18:23]
    assert measure_spots(mostly_nan, [[20, 20]], radius=2)["flag"][0] == "background unknown"


def test_measure_across_gives_one_table_and_a_summary_per_image():
    rng = np.random.default_rng(3)
    truth = spot_grid(rng, 96, 16)
    expected = render_spots((96, 96), truth[:, 0], truth[:, 1], np.full(len(truth), 4000.0), 1.0) + 20
    images = {"high": rng.poisson(expected).astype(np.float32),
              "low": rng.poisson(expected / 10).astype(np.float32)}
    report = measure_across(images, truth, pixel_size_nm=100)
    assert report.table.shape[0] == 2 * len(truth)
    assert report.table["image"].tolist() == ["high"] * len(truth) + ["low"] * len(truth)
    summary = report.summary.set_index("image")
    assert summary.loc["high", "spots"] == len(truth) and summary.loc["high", "fitted"] == len(truth)
    assert summary.loc["high", "median_fwhm_nm"] == pytest.approx(235.5, rel=0.03)
    assert summary.loc["high", "median_snr"] > 3 * summary.loc["low", "median_snr"]
    assert summary.loc["high", "suggested_f1"] == 1.0
    # the medians on the spots usable on both images compare the same spots (each image's own usable fits
    # differ: dim spots are flagged on the low image only)
    on_both = set(report.table[(report.table["image"] == "low") & (report.table["flag"] == "")]["point"])
    assert (summary["usable_on_all"] == len(on_both)).all() and 0 < len(on_both) <= summary.loc["low", "fitted"]
    high = report.table[(report.table["image"] == "high") & report.table["point"].isin(on_both)]
    assert summary.loc["high", "median_fwhm_nm_on_all"] == pytest.approx(high["fwhm_nm"].median())
    # the per-image call and the table rows agree
    alone = measure_spots(images["low"], truth, pixel_size_nm=100)
    pd.testing.assert_frame_equal(report.table[report.table["image"] == "low"].drop(columns="image")
                                  .reset_index(drop=True), alone)
    profile = report.profiles["high"]
    assert profile["profile"][0] == pytest.approx(1.0, abs=0.1) and profile["profile"].iloc[-1] < 0.05
    with pytest.raises(ValueError, match=r"image 'small' has shape \(50, 50\) but 'high' has \(96, 96\)"):
        measure_across({"high": images["high"], "small": np.zeros((50, 50))}, truth)


def test_measuring_thousands_of_labels_reports_progress_often_and_gives_the_same_table():
    rng = np.random.default_rng(5)
    truth = spot_grid(rng, 300, 6)[:450]  # 450 labels on one frame
    image = rng.poisson(render_spots((300, 300), truth[:, 0], truth[:, 1], np.full(len(truth), 3000.0), 1.0) + 20)
    steps = []
    table = run_to_end(iter_measure_spots(image, truth, pixel_size_nm=100), steps.append)
    assert steps == [200, 400, 450]  # every 200 fits and at the frame's end: a progress bar, a chance to cancel
    pd.testing.assert_frame_equal(table, measure_spots(image, truth, pixel_size_nm=100))
    movie = np.stack([image, image, image])  # (frame, y, x) labels: a step after each frame too
    labels = np.column_stack([np.repeat([0, 2], [250, 3]), np.concatenate([truth[:250], truth[:3]])])
    steps = []
    run_to_end(iter_measure_spots(movie, labels), steps.append)
    assert steps == [200, 250, 253]
    across = []
    report = run_to_end(iter_measure_across({"a": movie, "b": movie}, labels), across.append)
    assert across[0] == (0, 506, "a") and across[-1] == (506, 506, "")
    assert (253, 506, "b") in across and [step[0] for step in across] == sorted(step[0] for step in across)
    # after an image's fits, a step per labelled frame (0 and 2) of its suggestion scores and average profile
    assert across.count((253, 506, "a: suggestions")) == 2 and across.count((253, 506, "a: profile")) == 2
    assert across.count((506, 506, "b: suggestions")) == 2
    assert len(report.table) == 506
    # labels in frames the movie lacks are rows too ('outside image'): counted, so the bar still ends full
    steps = []
    outside = run_to_end(iter_measure_spots(movie, [[9, 5, 5], [0, 30, 30], [7, 5, 5]]), steps.append)
    assert steps == [1, 2, 3] and outside["flag"].tolist() == ["outside image", "", "outside image"]


def test_average_profile_of_a_wider_psf_falls_more_slowly():
    truth = np.array([[10.2, 10.7], [30.4, 29.9]])
    narrow = render_spots((40, 40), truth[:, 0], truth[:, 1], [1e4, 1e4], 0.8) + 5
    wide = render_spots((40, 40), truth[:, 0], truth[:, 1], [1e4, 1e4], 1.6) + 5
    at_1px = [average_profile(im, measure_spots(im, truth, radius=5), radius=5).set_index("r_px")["profile"][1.125]
              for im in (narrow, wide)]
    assert at_1px[0] < at_1px[1]


def test_points_csv_round_trip_in_napari_format_and_plain_tables(tmp_path):
    from napari_builtins.io import csv_to_layer_data

    points = np.array([[0, 12.5, 3.25], [2, 40.0, 7.0]])
    path = write_points_csv(tmp_path / "labels.csv", points)
    assert path.read_text().splitlines()[0] == "index,axis-0,axis-1,axis-2"
    np.testing.assert_array_equal(read_points_csv(path), points)
    np.testing.assert_array_equal(csv_to_layer_data(str(path))[0], points)  # napari reads it as a Points layer
    # an empty labels layer of a movie keeps its frame axis (it was written, and read back, as 2-D)
    empty = write_points_csv(tmp_path / "empty.csv", np.empty((0, 3)))
    assert empty.read_text().splitlines()[0] == "index,axis-0,axis-1,axis-2"
    assert read_points_csv(empty).shape == (0, 3)
    (tmp_path / "yx.csv").write_text("x,y\n3,4\n5,6\n")
    np.testing.assert_array_equal(read_points_csv(tmp_path / "yx.csv"), [[4, 3], [6, 5]])
    (tmp_path / "bare.csv").write_text("4,3\n6,5\n")
    np.testing.assert_array_equal(read_points_csv(tmp_path / "bare.csv"), [[4, 3], [6, 5]])
    (tmp_path / "bad.csv").write_text("name,size\na,3\n")
    with pytest.raises(ValueError, match=r"bad.csv: expected napari points .* found columns \['name', 'size'\]"):
        read_points_csv(tmp_path / "bad.csv")
    # ImageJ's Measure of points on a stack: 1-based Slice, X/Y in um; read as y, x it put every label on frame 0
    (tmp_path / "fiji.csv").write_text(" ,X,Y,Slice\n1,1.2,0.8,3\n2,2.4,1.6,7\n")
    with pytest.raises(ValueError, match=r"fiji.csv looks like an ImageJ/Fiji Measure table .*'frame, y, x' in "):
        read_points_csv(tmp_path / "fiji.csv")


def test_snap_goes_to_the_brightest_pixel_nearby():
    image = render_spots((30, 30), [10.0], [12.0], [1e4], 1.0) + 5
    assert snap_to_maximum(image, 11.2, 13.4) == (10.0, 12.0)
    assert snap_to_maximum(image, 20.0, 20.0, radius=2) != (10.0, 12.0)  # too far: stays in its 2 px disc
    assert snap_to_maximum(image, 40.0, 3.0) == (40.0, 3.0)


def test_saturated_spots_are_flagged_not_reported_wider():
    """A clipped spot has a flat top the fit widens to reach: the 16-bit maximum (or the level given) flags it."""
    truth = np.array([[15.0, 15.0], [15.0, 40.0]])
    expected = render_spots((30, 56), truth[:, 0], truth[:, 1], np.array([1e6, 4e4]), 1.0) + 100
    image = np.clip(expected, 0, 65535).astype(np.uint16)  # the first spot clips (centre ~147k)
    assert (image[14:17, 14:17] == 65535).sum() >= 1 and image[15, 40] < 65535
    table = measure_spots(image, truth)
    assert table["flag"].tolist() == ["saturated", ""]
    assert table["sigma_px"][0] > 1.05 and table["sigma_px"][1] == pytest.approx(1.0, abs=0.02)  # why it matters
    # a 12-bit camera in a 16-bit file clips at 4095: the level given; a float image (a restoration) never clips
    twelve_bit = np.clip(expected / 16, 0, 4095).astype(np.uint16)
    assert measure_spots(twelve_bit, truth)["flag"].tolist() == ["", ""]
    assert measure_spots(twelve_bit, truth, camera=CameraCalibration(saturation_adu=4095))["flag"][0] == "saturated"
    assert measure_spots(expected.astype(np.float32), truth)["flag"].tolist() == ["", ""]
    assert CameraCalibration.from_emccd(EMCCD()).saturation(np.float32) == 65535.0


def test_snr_of_photon_counts_on_a_dark_background():
    """Most of the ring at 0 photons (a MAD of 0): the noise stays defined and is the background's."""
    rng = np.random.default_rng(2)
    truth = spot_grid(rng, 96, 16)
    image = rng.poisson(render_spots((96, 96), truth[:, 0], truth[:, 1], np.full(len(truth), 2000.0), 1.0) + 0.3)
    table = measure_spots(image, truth)
    assert np.isfinite(table["snr"]).all() and (table["background_sd"] > 0).all()
    assert (table["background_sd"] < 1.0).all()  # ~ sqrt(0.3) photons, not the spots' light


@pytest.mark.parametrize("background_photons", [0.5, 20.0])
def test_background_sd_on_an_emccd_sees_the_em_gain_tail_and_not_unlabelled_neighbours(background_photons):
    """A dim EMCCD background is mostly read noise plus an EM-gain tail: 1.4826 x MAD read 5.9 ADU at 0.5
    photons/px where the SD is 10.3, so SNR came out 1.8x too high on raw low frames. An unlabelled bright
    neighbour in the ring (a plain SD of the ring reads ~150 ADU) must still be left out."""
    camera = EMCCD()
    rows, cols = np.meshgrid(np.arange(10, 120, 14.0), np.arange(10, 120, 14.0), indexing="ij")
    labelled = np.column_stack([rows.ravel(), cols.ravel()])
    unlabelled = labelled[::2] + [5.0, 1.0]  # every other spot has a neighbour 5 px away in its ring
    spots = np.concatenate([labelled, unlabelled])
    photons = render_spots((128, 128), spots[:, 0], spots[:, 1], np.full(len(spots), 2000.0), Microscope().sigma_px)
    image = camera.expose(photons + background_photons, np.random.default_rng(0))
    true_sd = float(np.sqrt(camera.expected_variance_adu(np.array(background_photons))))
    table = measure_spots(image, labelled, camera=CameraCalibration.from_emccd(camera))
    alone, crowded = table["background_sd"][1::2], table["background_sd"][::2]
    assert np.median(alone) == pytest.approx(true_sd, rel=0.15)
    assert np.median(crowded) == pytest.approx(true_sd, rel=0.15)


def test_suggestion_scores_leave_out_frames_not_restored_yet():
    """A restoration stopped part way (NaN frames) has lost no spots there: its recall counts restored frames."""
    rng = np.random.default_rng(4)
    truth = spot_grid(rng, 64, 16)
    frame = rng.poisson(render_spots((64, 64), truth[:, 0], truth[:, 1], np.full(len(truth), 3000.0), 1.1) + 20)
    movie = np.stack([frame, frame, frame, frame]).astype(np.float32)
    movie[2:] = np.nan  # 2 of 4 frames written
    points = np.concatenate([np.column_stack([np.full(len(truth), t), truth]) for t in range(4)])
    summary = measure_across({"restored": movie}, points).summary
    assert (summary["suggested_recall"][0], summary["suggested_f1"][0]) == (1.0, 1.0)
    assert summary["suggested"][0] == 2 * len(truth)
    nothing = measure_across({"restored": movie}, points[points[:, 0] >= 2]).summary
    assert np.isnan(nothing["suggested_f1"][0])  # no label on a restored frame: no score, not a perfect one


def test_a_frame_outside_the_movie_and_an_empty_points_file_are_refused_by_name(tmp_path):
    movie = np.zeros((3, 20, 20))
    with pytest.raises(ValueError, match=r"frame 7 is outside the movie \(3 frames: 0 to 2\)"):
        measure_spots(movie, [[10, 10]], frame=7)
    empty = tmp_path / "labels.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"labels.csv is empty: expected spot labels"):
        read_points_csv(empty)


def test_fwhm_histogram_counts_every_usable_spot():
    """Bins span the 1st-99th percentiles; the spots beyond fell out of the histogram without a word."""
    from napari_pgsr.analysis.across import SpotReport
    from napari_pgsr.analysis.plots import plot_report
    rng = np.random.default_rng(0)
    widths = np.concatenate([rng.normal(200, 10, 200), [900, 1000, 5]])
    table = pd.DataFrame({"image": "a", "flag": "", "fwhm_nm": widths, "fwhm_px": widths / 100,
                          "snr": rng.uniform(5, 50, widths.size)})
    figure = plot_report(SpotReport(table, pd.DataFrame(), {}))
    heights = figure.axes[0].patches[0].get_path().vertices[1::2, 1][:20]
    assert heights.sum() == len(widths) and "outer 1% in end bins" in figure.axes[0].get_xlabel()


def test_fits_to_empty_emccd_background_are_no_signal():
    """The peak test passed 18% of fits to empty background as usable spots 60-110 nm wide: a fit that
    collapses onto one pixel the EM gain made bright has its whole amplitude as its peak."""
    from napari_pgsr.analysis import CameraCalibration
    from napari_pgsr.physics import EMCCD, Microscope, render_spots

    camera, rng = EMCCD(), np.random.default_rng(1)
    yy, xx = np.meshgrid(np.arange(10, 290, 14), np.arange(10, 290, 14), indexing="ij")
    points = np.column_stack([yy.ravel(), xx.ravel()]) + rng.uniform(-0.5, 0.5, (400, 2))
    usable = {}
    for photons in (0.0, 80.0):
        image = camera.expose(render_spots((300, 300), points[:, 0], points[:, 1], np.full(400, photons),
                                           Microscope().sigma_px) + 5.0, rng)
        table = measure_spots(image, points, pixel_size_nm=160, camera=CameraCalibration.from_emccd(camera))
        usable[photons] = int((table["flag"] == "").sum())
    assert usable[0.0] <= 0.08 * 400 and usable[80.0] >= 0.85 * 400
