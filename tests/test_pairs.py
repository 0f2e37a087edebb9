import os
import warnings

import numpy as np
import pytest

from napari_pgsr.io import read_movie
from napari_pgsr.pairs import classify_frames, pair_stacks, pairs_at, split_alternating
from napari_pgsr.simulate import Acquisition, Scene, simulate_movie


def _movie(n=40, low_first=True, **scene):
    kind_scene = Scene(**scene) if scene else None
    return simulate_movie("ap2", n, (48, 48), seed=3, acquisition=Acquisition(low_first=low_first),
                          scene=kind_scene).movie


@pytest.mark.parametrize("low_first", [True, False])
def test_phase_detected_and_pairs_are_adjacent(low_first):
    movie = _movie(40, low_first)
    pairs = split_alternating(movie)
    assert pairs.low_first is low_first and len(pairs) == 20 and pairs.dropped == []
    np.testing.assert_array_equal(np.abs(pairs.high_index - pairs.low_index), 1)
    assert np.all(pairs.low_index % 2 == (0 if low_first else 1))
    assert pairs.ratio == pytest.approx(10.0, rel=0.1)  # 100 ms / 10 ms
    assert pairs.low.shape == pairs.high.shape == (20, 48, 48)
    np.testing.assert_array_equal(pairs.low[3].compute(), movie[pairs.low_index[3]])


def test_strong_bleaching_trend_does_not_confuse_the_phase():
    movie = _movie(80, bleach_time_s=2.0)  # the last high frames are dimmer than the first low ones
    means = movie.mean(axis=(1, 2))
    assert means[-1] < means[0] * 1.5
    pairs = split_alternating(movie)
    assert pairs.low_first and len(pairs) == 40 and pairs.dropped == []


def test_dropped_frame_is_skipped_and_reported():
    movie = np.delete(_movie(40), 13, axis=0)  # frame 13 (high) lost: ... L12 L14 ...
    pairs = split_alternating(movie)
    assert pairs.low_first and len(pairs) == 19 and pairs.dropped == [12]
    bright = movie.mean(axis=(1, 2))
    assert np.all(bright[pairs.high_index] > bright[pairs.low_index])


def test_duplicated_frame_is_skipped_and_reported():
    movie = _movie(40)
    movie = np.insert(movie, 8, movie[8], axis=0)  # frame 8 (low) twice
    pairs = split_alternating(movie)
    assert len(pairs) == 20 and pairs.dropped == [8]


def test_odd_count_drops_unmatched_last_frame():
    pairs = split_alternating(_movie(41))
    assert len(pairs) == 20 and pairs.dropped == [40]


def test_user_chooses_which_neighbour_is_the_partner_and_drops_are_still_handled():
    movie = np.delete(_movie(42, low_first=False), 20, axis=0)  # high-first; frame 20 (high) lost
    means = movie.mean(axis=(1, 2)) - 100  # above the camera offset
    after = split_alternating(movie, low_first=True)  # each low frame with the frame after it
    before = split_alternating(movie, low_first=False)  # each low frame with the frame before it
    np.testing.assert_array_equal(after.high_index, after.low_index + 1)
    np.testing.assert_array_equal(before.high_index, before.low_index - 1)
    for pairs in (after, before):
        assert np.all(means[pairs.high_index] > 5 * means[pairs.low_index])  # never swapped
    assert before.dropped == [20] and len(before) == 20  # the second of two low frames in a row
    assert after.low_first is True and after.dropped[0] == 0 and len(after) == 19


def test_two_and_three_frame_movies_pair_in_either_phase():
    for low_first in (True, False):
        for n in (2, 3):
            pairs = split_alternating(_movie(n, low_first=low_first))
            assert len(pairs) == 1 and pairs.low_first is low_first


def test_no_alternation_raises_with_the_measured_ratio():
    movie = simulate_movie("ap2", 20, (48, 48), acquisition=Acquisition(low_exposure_s=0.1)).movie
    with pytest.raises(ValueError, match=r"no alternating exposure detected: .* ratio is 1\.\d\d"):
        split_alternating(movie, name="steady.tif")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"one.tif: has 1 frame\(s\) of 8x8"):
        split_alternating(np.zeros((1, 8, 8)), name="one.tif")
    with pytest.raises(ValueError, match=r"flat.tif: expected a movie T x Y x X, got 2 dimensions"):
        split_alternating(np.zeros((8, 8)), name="flat.tif")
    movie = _movie(10).astype(np.float32)
    movie[4, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"nan.tif: frames \[4\] contain NaN"):
        split_alternating(movie, name="nan.tif")


def test_lazy_movie_from_file_gives_lazy_pairs(movie_file):
    movie = read_movie(movie_file)
    pairs = split_alternating(movie.data, name=movie_file.name)
    assert len(pairs) == 20 and pairs.low_first
    low, high = pairs.read(5, slice(10, 20), slice(0, 8))
    np.testing.assert_array_equal(low, movie.data[10, 10:20, 0:8].compute())
    np.testing.assert_array_equal(high, movie.data[11, 10:20, 0:8].compute())
    assert pairs.summary()["source"] == "ap2.tif"


def test_pairs_at_stored_indices_match_the_split_and_indices_outside_the_movie_are_refused():
    """The indices come from a layer's metadata: after the layer's movie was cut, -1 read its last frame."""
    movie = _movie(12)
    split = split_alternating(movie, name="m")
    again = pairs_at(movie, split.low_index, split.high_index, name="m", low_first=True)
    np.testing.assert_array_equal(again.low.compute(), split.low.compute())
    assert again.ratio == pytest.approx(split.ratio)
    for low, high, bad in (([0, -1], [1, 2], -1), ([0, 2], [1, 12], 12)):
        with pytest.raises(ValueError, match=rf"m: frame index {bad} is outside the movie's 12 frames \(0 to 11\)"):
            pairs_at(movie, low, high, name="m")


def test_separate_low_and_high_stacks_pair_frame_by_frame():
    movie = _movie(20)
    pairs = pair_stacks(movie[0::2], movie[1::2], name="two files")
    assert len(pairs) == 10 and pairs.low_first is None and pairs.ratio > 7
    with pytest.raises(ValueError, match=r"two files: low stack has shape \(10, 48, 48\) but high stack has "
                                         r"\(9, 48, 48\)"):
        pair_stacks(movie[0::2], movie[1:18:2], name="two files")
    with pytest.raises(ValueError, match="swapped"):
        pair_stacks(movie[1::2], movie[0::2])


def test_classification_follows_a_trend_through_a_window():
    means = np.exp(-np.arange(30) / 10) * np.where(np.arange(30) % 2, 10, 1)
    np.testing.assert_array_equal(classify_frames(means), np.arange(30) % 2 == 1)


@pytest.mark.parametrize("kind", ["ap2", "beads", "single_molecules"])
def test_exposure_ratio_recovers_the_exposure_times_whatever_the_sample(kind):
    # beads have no dark area, so the camera offset must come from the pairs themselves
    sim = simulate_movie(kind, 40, (128, 128), seed=2)
    pairs = split_alternating(sim.movie)
    assert pairs.ratio == pytest.approx(10.0, rel=0.05)
    assert pairs.baseline == pytest.approx(100.0, abs=2.0)  # the simulated EMCCD offset
    separate = pair_stacks(sim.movie[0::2], sim.movie[1::2])
    assert separate.ratio == pytest.approx(10.0, rel=0.05)


def test_two_channels_interleaved_in_one_stack_are_warned_about():
    """Spots and a membrane ring, channel after channel, were split as 20 exposure pairs of ratio 6."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    spots = 100 + 40 * sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4) for y, x in rng.uniform(5, 59, (20, 2)))
    ring = 100 + 300 * (np.abs(np.hypot(yy - 32, xx - 32) - 20) < 3)
    stack = np.array([rng.poisson(spots if t % 2 == 0 else ring) for t in range(40)], np.uint16)
    with pytest.warns(UserWarning, match=r"channels: the dim and bright frames show different structures .* two "
                      "channels interleaved"):
        split_alternating(stack, name="channels")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exposure pairs of every simulated kind pass without a word
        for kind in ("ap2", "beads", "single_molecules"):
            split_alternating(simulate_movie(kind, 20, (64, 64), seed=1).movie)


def test_a_dark_or_stray_bright_frame_leaves_its_pair_out():
    """A low frame taken in the dark (the laser did not fire) was paired and trained on as an input without
    signal; a first frame 4x too bright (charge gathered before the acquisition) pulled the ratio to 9.1."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    sample = 2 + 50 * sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4) for y, x in rng.uniform(5, 59, (20, 2)))
    sample *= 50 / sample.mean()
    movie = np.array([rng.poisson(sample * (10 if t % 2 else 1)) + 100 + rng.normal(0, 2, (64, 64))
                      for t in range(40)], np.float32)
    movie[10] = 100 + rng.normal(0, 2, (64, 64))  # dark low frame
    movie[0] = 100 + (movie[0] - 100) * 4
    pairs = split_alternating(movie)
    assert pairs.dropped == [0, 1, 10, 11] and 10 not in pairs.low_index and len(pairs) == 18
    assert pairs.ratio == pytest.approx(10.0, rel=0.02)


@pytest.mark.parametrize("vignetting", [0.04, 0.2])
def test_ratio_of_a_nearly_uniform_sample_is_not_diluted_by_noise(vignetting):
    """A dye-filled field with illumination falling 4% to the edge: the noise of the low frames diluted the
    high-on-low slope, so the offset came out at -43 ADU and a 2x movie was refused as not alternating."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:128, :128]
    sample = 50 * (1 - vignetting * ((yy - 64) ** 2 + (xx - 64) ** 2) / 64 ** 2)
    movie = np.array([rng.poisson(sample * (2 if t % 2 else 1)) + 100 + rng.normal(0, 2, sample.shape)
                      for t in range(40)], np.float32)
    pairs = split_alternating(movie)
    assert pairs.baseline == pytest.approx(100.0, abs=3.0) and pairs.ratio == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("offset, ratio, tau", [(1000, 10, None), (1000, 3, None), (100, 2, 8)])
def test_ratio_holds_with_a_large_camera_offset_and_a_bleaching_sample(offset, ratio, tau):
    """Low frames only 5 ADU above a 1000 ADU offset, or bleaching towards the offset: the baseline was capped
    at 99% of the dimmest frame (10x read as 5.5x) and late, dark pairs swamped the median (2x refused)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    sample = 2 + 50 * sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4) for y, x in rng.uniform(5, 59, (20, 2)))
    sample *= 5 / sample.mean()  # low frames: 5 ADU above the offset on average
    movie = np.array([rng.poisson(sample * (np.exp(-t / tau) if tau else 1) * (ratio if t % 2 else 1)) + offset
                      + rng.normal(0, 2, (64, 64)) for t in range(60 if tau else 40)], np.float32)
    pairs = split_alternating(movie)
    assert pairs.low_first and pairs.baseline == pytest.approx(offset, abs=1.0)
    # (bleaching between a pair's two frames makes the high one a little dimmer: 2 x exp(-1/8) = 1.76)
    assert pairs.ratio == pytest.approx(ratio * (np.exp(-1 / tau) if tau else 1), rel=0.05)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's memory accounting")
def test_frame_means_of_a_memory_mapped_movie_do_not_stay_resident(tmp_path):
    """Every page of the memory map that the means pass touched stayed in the process's resident memory: a
    200 MiB movie added 200 MiB, so a 5,000-frame 1200² movie would count 14 GB."""
    import tifffile

    def file_backed_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssFile")) / 1024

    frames = np.tile(np.array([[100], [1000]], np.uint16)[:, :, None], (60, 512, 512))  # 120 frames, 60 MiB
    tifffile.imwrite(tmp_path / "big.tif", frames, imagej=True, metadata={"axes": "TYX"})
    movie = read_movie(tmp_path / "big.tif")
    before = file_backed_mib()
    pairs = split_alternating(movie)
    assert len(pairs) == 60
    assert file_backed_mib() - before < 20
    # nor does writing the low frames out (napari-pgsr-split, Save): they kept 265 MiB of a 412 MiB movie
    from napari_pgsr.io import write_movie

    before = file_backed_mib()
    write_movie(tmp_path / "low.tif", pairs.low)
    assert file_backed_mib() - before < 20


def test_pair_stacks_takes_movies_as_read(tmp_path):
    """The README's pair_stacks(read_movie(low), read_movie(high)) failed: 'Movie' object has no attribute 'ndim'."""
    from napari_pgsr.io import write_movie
    sim = simulate_movie("beads", 20, (48, 48), seed=1)
    low = write_movie(tmp_path / "b_low.tif", sim.movie[0::2])
    high = write_movie(tmp_path / "b_high.tif", sim.movie[1::2])
    pairs = pair_stacks(read_movie(low), read_movie(high))
    assert len(pairs) == 10 and pairs.name == "b_low.tif+b_high.tif" and pairs.ratio == pytest.approx(10, rel=0.05)


@pytest.mark.parametrize("blank, dropped", [([0], [0, 39]), ([17], [16, 17]),
                                            (list(range(34, 40)), list(range(34, 40)))])
def test_blank_frames_are_left_out_without_their_neighbours_and_do_not_move_the_offset(blank, dropped):
    """An all-zero frame (a camera's blank first frame, the unwritten end of an aborted acquisition) read a 10x
    movie as 2.5x above an offset of 0, cost four pairs around it, and refused a 2x movie as not alternating."""
    clean = split_alternating(_movie(40))
    movie = _movie(40)
    movie[blank] = 0
    pairs = split_alternating(movie)  # (with frame 0 blank, 1 pairs with 2 and 39 with none: 19 pairs either way)
    assert sorted(pairs.dropped) == dropped and len(pairs) == 20 - len(dropped) // 2
    assert not set(blank) & set(pairs.low_index.tolist() + pairs.high_index.tolist())
    assert pairs.baseline == pytest.approx(clean.baseline, abs=1.0) and pairs.ratio == pytest.approx(clean.ratio,
                                                                                                   rel=0.02)
    two_x = simulate_movie("ap2", 40, (48, 48), seed=3, acquisition=Acquisition(low_exposure_s=0.05)).movie
    two_x[0] = 0
    assert split_alternating(two_x).ratio == pytest.approx(2.0, rel=0.05)
    # a movie with its offset over-subtracted, whose late low frames' means are below 0, keeps them all
    subtracted = simulate_movie("ap2", 80, (48, 48), seed=3, scene=Scene(bleach_time_s=3.0)).movie
    subtracted = subtracted.astype(np.float32) - 110
    assert subtracted[-2].mean() < 0 and len(split_alternating(subtracted)) >= 39


def test_clipped_high_frames_are_warned_about_and_do_not_move_the_offset():
    """0.6% of the high pixels at 65535 read the offset 100 as 68, and nothing said the targets were clipped."""
    expected = simulate_movie("ap2", 40, (64, 64), seed=3).expected.astype(np.float64)
    movie = np.clip(100 + (expected - 100) * 100 + np.random.default_rng(0).normal(0, 3, expected.shape), 0,
                    65535).astype(np.uint16)
    assert 0.002 < np.mean(movie[1::2] == 65535) < 0.02
    with pytest.warns(UserWarning, match=r"of the high-exposure pixels are at the camera's maximum \(65535\)"):
        pairs = split_alternating(movie, name="clipped")
    assert pairs.baseline == pytest.approx(100, abs=8) and pairs.ratio == pytest.approx(10, rel=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unclipped: no word
        split_alternating(np.minimum(movie, 65534))
    with pytest.warns(UserWarning, match=r"two files \(high\): .* at the camera's maximum"):  # stacks too
        pair_stacks(movie[0::2], movie[1::2], name="two files")
