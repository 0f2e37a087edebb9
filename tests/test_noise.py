import numpy as np
import pytest
import torch

from napari_pgsr.modelfile import load_model
from napari_pgsr.pairs import split_alternating
from napari_pgsr.physics import EMCCD
from napari_pgsr.simulate import simulate_movie
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.loop import train
from napari_pgsr.training.noise import NoiseModel, camera_noise, fit_noise_model, noise_couples
from napari_pgsr.training.progan_loop import as_recorded


def test_the_photon_transfer_line_is_recovered_from_noisy_frames():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    clean = 50.0 + 950.0 * (xx + yy) / 510.0  # a smooth ramp over the range of values

    def frame():
        return clean + rng.normal(0.0, np.sqrt(3.0 * clean - 100.0))

    model = fit_noise_model([[(frame(), frame()) for _ in range(3)]])
    assert model.slope == pytest.approx(3.0, rel=0.05)
    assert model.variance([100.0, 900.0]) == pytest.approx([200.0, 2600.0], rel=0.08)
    flat = [tuple(np.full((64, 64), 100.0) + rng.normal(0, 1, (64, 64)) for _ in range(2)) for _ in range(2)]
    with pytest.raises(ValueError, match=r"too narrow a range .*: \d+ of 24 intensity bins hold 200 pixels or more"):
        fit_noise_model([flat])
    with pytest.raises(ValueError, match="at least 2 couples"):
        fit_noise_model([flat[:1]])


def _couples(kind: str, seeds=(0, 1, 2)):
    movies = [split_alternating(simulate_movie(kind, 40, (256, 256), seed=seed).movie) for seed in seeds]
    return noise_couples(movies, [(m, p) for m, movie in enumerate(movies) for p in range(len(movie))])


@pytest.mark.parametrize("kind", ["ap2", "beads"])
def test_the_simulated_emccd_noise_is_recovered_at_the_background_and_at_spots(kind):
    """Beads lie on a flat, dark background: a line fitted from one frame's pixels against their neighbours
    (the earlier method) gave them 34 ADU² per ADU and no noise below 117 ADU, a fifth of the pixels."""
    camera = EMCCD()
    model = fit_noise_model(_couples(kind))
    gain = camera.em_gain / camera.electrons_per_adu  # ADU per photoelectron
    for value in (120.0, 140.0, 500.0, 3000.0):  # dark and mean background, a spot's flank, a bright spot
        photons = (value - camera.baseline_adu) / gain / camera.quantum_efficiency
        assert model.variance(value) == pytest.approx(camera.expected_variance_adu(photons), rel=0.12)


def test_a_dark_emccd_background_keeps_its_noise_and_constant_borders_are_ignored():
    """Half a photoelectron per pixel: the EM register's output is far from Gaussian (most pixels hold
    none, a few hold hundreds of ADU), and the fit must not cut those tails as if they were moving spots."""
    camera, rng = EMCCD(), np.random.default_rng(3)
    ramp = np.linspace(0.5, 300.0, 128)[None, :].repeat(128, axis=0)
    photons = np.where(np.arange(128)[None, :] < 96, 0.5 / camera.quantum_efficiency, ramp)
    couples = [(camera.expose(photons, rng).astype(float), camera.expose(photons, rng).astype(float))
               for _ in range(6)]
    model = fit_noise_model([couples])
    dark = camera.expected_adu(np.array(0.5 / camera.quantum_efficiency))
    assert model.variance(dark) == pytest.approx(camera.expected_variance_adu(0.5 / camera.quantum_efficiency),
                                                 rel=0.15)
    padded = [(np.pad(a, ((0, 0), (0, 20))), np.pad(b, ((0, 0), (0, 20)))) for a, b in couples]  # zero columns
    assert fit_noise_model([padded]).slope == pytest.approx(model.slope, rel=0.05)


def test_noise_couples_take_disjoint_consecutive_training_pairs_of_each_movie():
    movies = [split_alternating(simulate_movie("beads", 40, (64, 64), seed=seed).movie) for seed in (0, 1)]
    # movie 0: pairs 0-9 for training; movie 1: only every other pair (no consecutive couples)
    refs = [(0, p) for p in range(10)] + [(1, p) for p in range(0, 20, 2)]
    couples = noise_couples(movies, refs, count=4)
    assert len(couples) == 1 and len(couples[0]) == 4  # movie 0 alone, 4 couples (count // 1 usable movie)
    for couple, start in zip(couples[0], (0, 2, 6, 8)):  # disjoint couples, spread over pairs 0-9
        np.testing.assert_array_equal(couple[0], movies[0].read(start)[1])
        np.testing.assert_array_equal(couple[1], movies[0].read(start + 1)[1])
    cropped = noise_couples(movies, refs, largest=32)
    assert cropped[0][0][0].shape == (32, 32)
    np.testing.assert_array_equal(cropped[0][0][0], movies[0].read(0)[1][16:48, 16:48])  # the centre
    with pytest.raises(ValueError, match="two separate couples of consecutive training pairs"):
        noise_couples(movies, [(1, p) for p in range(0, 20, 2)])


def test_camera_noise_in_the_networks_units_has_the_modelled_variance_and_passes_gradients():
    model = NoiseModel(slope=20.0, intercept=-1985.0)
    a, b = model.normalised(lo=100.0, hi=1100.0)
    y = torch.full((4, 1, 64, 64), 0.3, requires_grad=True)  # 400 ADU
    torch.manual_seed(0)
    expected = model.variance(400.0) / 1000.0**2
    assert float(camera_noise(y, a, b).var()) == pytest.approx(expected, rel=0.05)
    # a 4 x 4 average holds a 16th of the variance
    assert float(camera_noise(y, a, b, pooled=4).var()) == pytest.approx(expected / 16, rel=0.05)
    # while a resolution fades in, the real images are half 2 x 2 averages: so is the noise the critic sees
    fading = as_recorded(y, a, b, pooled=1, alpha=0.0) - y
    assert float(fading.detach().var()) == pytest.approx(expected / 4, rel=0.05)
    assert torch.equal(fading[..., 0::2, 0::2], fading[..., 1::2, 1::2])  # constant over each 2 x 2 block
    as_recorded(y, a, b, pooled=1, alpha=1.0).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_gamma_camera_noise_is_skewed_like_low_light_noise_with_the_same_variance():
    from scipy import stats

    model = NoiseModel(slope=20.0, intercept=-2000.0)  # baseline 100 ADU
    a, b = model.normalised(lo=100.0, hi=1100.0)
    torch.manual_seed(0)
    y = torch.full((8, 1, 64, 64), 0.03)  # 130 ADU: 30 above the baseline, shape 30 / 20 = 1.5
    noise = camera_noise(y, a, b, shape="gamma")
    assert float(noise.mean()) == pytest.approx(0.0, abs=2e-4)
    assert float(noise.var()) == pytest.approx(model.variance(130.0) / 1000.0**2, rel=0.05)
    assert stats.skew(noise.numpy().ravel()) == pytest.approx(2 / np.sqrt(1.5), rel=0.1)
    pooled = camera_noise(y, a, b, pooled=2, shape="gamma")  # the mean of 4 draws: a quarter of the variance
    assert float(pooled.var()) == pytest.approx(model.variance(130.0) / 1000.0**2 / 4, rel=0.05)
    assert stats.skew(pooled.numpy().ravel()) == pytest.approx(1 / np.sqrt(1.5), rel=0.1)
    with pytest.raises(ValueError, match="normal or gamma"):
        camera_noise(y, a, b, shape="poisson")


def test_training_with_critic_noise_records_the_noise_model_and_resumes_exactly(tmp_path, monkeypatch):
    from napari_pgsr.training import progan_loop

    with pytest.raises(ValueError, match="critic_noise needs the camera's own levels.*--no-offset"):
        TrainConfig(model="progan", critic_noise=True)
    with pytest.raises(ValueError, match="critic_noise is a ProGAN setting"):
        TrainConfig(critic_noise=True, offset=False)
    pairs = split_alternating(simulate_movie("ap2", 24, (48, 48), seed=4).movie)
    config = dict(model="progan", patch=16, width=1 / 32, batch=4, start_resolution=16, phase_images=16,
                  validation_every=1000, validation_patches=4, checkpoint_every=1000, device="cpu",
                  critic_noise=True, offset=False, lambda_gan=0.1)
    straight = train(TrainConfig(steps=6, **config), [pairs], tmp_path / "straight.pgsr")
    assert np.all(np.isfinite(straight.history["loss"]))
    slope = straight.history["critic_noise"]["slope"]
    assert 10 < slope < 40  # the simulated EMCCD's line: 20 ADU² per ADU
    train(TrainConfig(steps=3, **config), [pairs], tmp_path / "half.pgsr")
    with monkeypatch.context() as patch:  # a resumed run keeps the line it recorded, whatever the fit gives now
        patch.setattr(progan_loop, "fit_noise_model", lambda *args: pytest.fail("the noise model was fitted again"))
        train(TrainConfig(steps=6, **config), [pairs], tmp_path / "half.pgsr", resume=tmp_path / "half.pgsr")
    a, b = load_model(tmp_path / "straight.pgsr"), load_model(tmp_path / "half.pgsr")
    for name, value in a.network.state_dict().items():
        torch.testing.assert_close(b.network.state_dict()[name], value, atol=0, rtol=0)
    # without the camera's noise the critic sees other images: the run differs
    plain = train(TrainConfig(steps=6, **{**config, "critic_noise": False}), [pairs], tmp_path / "plain.pgsr")
    assert plain.history["loss"] != straight.history["loss"]
