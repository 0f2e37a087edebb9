import numpy as np
import pytest

from napari_pgsr.analysis import compare_to_labels, fit_spot, fit_spots, new_points, suggest_spots
from napari_pgsr.physics import render_spots


@pytest.mark.parametrize("sigma", [0.8, 1.3, 2.0])
def test_high_snr_fit_recovers_sigma_and_position(sigma):
    rng = np.random.default_rng(1)
    errors, sigmas = [], []
    for y, x in rng.uniform(10, 22, (10, 2)):
        image = rng.poisson(render_spots((32, 32), [y], [x], [2e5], sigma) + 20).astype(float)
        fit = fit_spot(image, round(y), round(x), radius=int(np.ceil(3 * sigma)))
        assert fit.flag == ""
        errors.append(np.hypot(fit.y - y, fit.x - x))
        sigmas.append(fit.sigma_px)
    assert max(errors) < 0.05
    assert np.mean(sigmas) == pytest.approx(sigma, rel=0.03)


def test_fit_flags_spots_at_the_border_and_rejects_points_outside():
    image = render_spots((20, 20), [1.0], [10.0], [1e4], 1.0) + 5
    assert fit_spot(image, 1, 10).flag == "edge"
    with pytest.raises(ValueError, match=r"point \(25.0, 3.0\) lies outside the 20x20 image"):
        fit_spot(image, 25, 3)


def test_suggestions_find_spots_and_nothing_in_pure_noise():
    rng = np.random.default_rng(2)
    truth = np.array([[12.2, 14.7], [40.5, 30.1], [25.0, 50.3]])
    image = rng.poisson(render_spots((64, 64), truth[:, 0], truth[:, 1], [3000] * 3, 1.0) + 30).astype(float)
    found = suggest_spots(image)
    match = compare_to_labels(found, truth, tolerance_px=1.0)
    assert match.f1 == 1.0
    assert len(suggest_spots(rng.poisson(30.0, (64, 64)).astype(float))) <= 1
    with pytest.raises(ValueError, match="one Y x X frame"):
        suggest_spots(np.zeros((2, 8, 8)))


def test_suggestions_leave_out_single_photons_of_an_emccd():
    """On a dim EMCCD frame one photon, multiplied by the gain, is one bright pixel: most of the suggestions on
    simulated 10 ms AP2 frames were such pixels. A spot the lens draws is spread over its neighbours."""
    from napari_pgsr.analysis.detect import peak_shares
    from napari_pgsr.physics import render_spots
    from napari_pgsr.simulate import simulate_movie

    sim = simulate_movie("ap2", 8, (128, 128), seed=0)
    every, kept = [], []
    for frame in range(0, 8, 2):  # the low frames
        rows = sim.spots["frame"] == frame
        truth = np.column_stack([sim.spots["y"][rows], sim.spots["x"][rows]])
        image = sim.movie[frame].astype(np.float64)
        every.append(compare_to_labels(suggest_spots(image, max_peak_share=None, exclude_border=4), truth, 2.0))
        kept.append(compare_to_labels(suggest_spots(image, exclude_border=4), truth, 2.0))
    spikes = sum(m.false_positives for m in every)
    assert spikes >= 10 and sum(m.false_positives for m in kept) <= spikes / 2
    assert sum(m.true_positives for m in kept) >= 0.9 * sum(m.true_positives for m in every) > 0
    # the simulated 174 nm PSF on 160 nm pixels, centred on a pixel, holds 0.52 of its 3 x 3 light there
    spot = render_spots((15, 15), [7.0], [7.0], [1e4], 0.46)
    pixel = np.zeros((15, 15))
    pixel[7, 7] = 1e4
    assert peak_shares(spot, [[7, 7]])[0] == pytest.approx(0.52, abs=0.01) and peak_shares(pixel, [[7, 7]])[0] == 1


def test_matching_scores_on_constructed_sets():
    labels = np.array([[0, 0], [10, 10], [20, 20], [30, 30]], float)
    detected = np.array([[0.5, 0], [10, 11.5], [50, 50], [29, 30]], float)
    match = compare_to_labels(detected, labels, tolerance_px=2.0)
    assert (match.true_positives, match.false_positives, match.false_negatives) == (3, 1, 1)
    assert match.precision == 0.75 and match.recall == 0.75 and match.f1 == 0.75
    assert match.rmse == pytest.approx(np.sqrt((0.25 + 2.25 + 1) / 3))
    # one detection between two labels is matched once (Hungarian), to the nearer one
    one = compare_to_labels([[5, 5.5]], [[5, 5], [5, 7]], tolerance_px=2.0)
    assert one.true_positives == 1 and one.false_negatives == 1 and one.pairs.tolist() == [[0, 0]]
    # a label marked as ignorable: finding it is not a false positive, missing it is no false negative
    dim = compare_to_labels([[0, 0]], [[0, 0], [10, 10]], ignore=[True, True])
    assert (dim.true_positives, dim.false_positives, dim.false_negatives) == (0, 0, 0) and dim.f1 == 1.0
    # a detection between an ignorable label and a counted one is the counted one's (the nearer ignorable one
    # took it: a false negative where the spot was found)
    between = compare_to_labels([[10, 10]], [[10, 10.5], [10, 11.5]], ignore=[True, False])
    assert (between.true_positives, between.false_positives, between.false_negatives) == (1, 0, 0)
    assert between.pairs.tolist() == [[0, 1]] and between.rmse == pytest.approx(1.5)
    # ...and two detections still take both
    both = compare_to_labels([[10, 10], [10, 12]], [[10, 10.5], [10, 11.5]], ignore=[True, False])
    assert (both.true_positives, both.false_positives, both.false_negatives) == (1, 0, 0)
    assert both.pairs.tolist() == [[1, 1]]
    empty = compare_to_labels(np.empty((0, 2)), labels)
    assert empty.recall == 0.0 and np.isnan(empty.rmse)
    assert compare_to_labels([], [5, 5]).false_negatives == 1  # no detections; one label as a bare pair
    # (frame, y, x) rows of a movie's points were read as pairs of numbers: 2 matching spots scored 1 TP, 1 FP
    with pytest.raises(ValueError, match=r"labels must be \(y, x\) rows of one frame, got shape \(2, 3\); "
                                         "pass the rows of one frame without the frame column"):
        compare_to_labels(labels[:2], np.column_stack([[0, 0], labels[:2]]))


def test_fit_spots_takes_y_x_rows_only():
    image = np.full((15, 15), 10.0)
    image[7, 5] = image[7, 9] = 100.0
    fits = fit_spots(image, [[7, 5], [7, 9]])
    assert [(round(f.y), round(f.x)) for f in fits] == [(7, 5), (7, 9)]
    assert len(fit_spots(image, [7, 5])) == 1 and fit_spots(image, np.empty((0, 2))) == []
    with pytest.raises(ValueError, match=r"points must be \(y, x\) rows of one frame, got shape \(2, 3\)"):
        fit_spots(image, [[0, 7, 5], [0, 7, 9]])  # gave 3 fits at made-up places


def test_new_points_leave_out_candidates_already_labelled():
    labels = np.array([[0, 10, 10], [0, 20, 20]], float)
    candidates = np.array([[0, 10.5, 10.2], [0, 30, 30], [1, 10, 10]], float)  # frame 1 is another spot
    np.testing.assert_array_equal(new_points(labels, candidates, 1.0), [[0, 30, 30], [1, 10, 10]])
    np.testing.assert_array_equal(new_points(np.empty((0, 3)), candidates), candidates)


def test_suggestions_ignore_nan_pixels_instead_of_finding_nothing():
    """NaN padding (a registered image) or one bad pixel left every score NaN: no suggestion at all."""
    rng = np.random.default_rng(1)
    ys, xs = np.meshgrid(np.arange(10, 60, 12.0), np.arange(10, 60, 12.0), indexing="ij")
    truth = np.column_stack([ys.ravel(), xs.ravel()])
    image = rng.poisson(render_spots((64, 64), truth[:, 0], truth[:, 1], np.full(len(truth), 2000.0), 1.0) + 20)
    image = image.astype(np.float64)
    clean = suggest_spots(image)
    assert compare_to_labels(clean, truth).f1 == 1.0
    image[30, 3] = np.nan
    np.testing.assert_array_equal(suggest_spots(image), clean)
    image[:, 36:] = np.nan  # the right part padded: the spots on the left are still found, none in the padding
    found = suggest_spots(image)
    assert compare_to_labels(found, truth[truth[:, 1] < 36]).f1 == 1.0 and (found[:, 1] < 36).all()
    assert suggest_spots(np.full((20, 20), np.nan)).shape == (0, 2)


def test_ignore_needs_one_entry_per_label():
    with pytest.raises(ValueError, match=r"ignore needs one entry per label \(2\)"):
        compare_to_labels(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [5.0, 5.0]]), ignore=[True])
