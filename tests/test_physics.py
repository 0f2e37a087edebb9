import numpy as np
import pytest

from napari_pgsr.physics import EMCCD, Microscope, render_spots


def test_psf_sigma_follows_wavelength_and_na():
    scope = Microscope(numerical_aperture=1.45, wavelength_nm=510.0, pixel_size_nm=160.0)
    assert scope.sigma_nm == pytest.approx(0.21 * 510 / 1.45)
    assert scope.sigma_px == pytest.approx(0.21 * 510 / 1.45 / 160)
    assert Microscope(psf_sigma_nm=120.0).sigma_px == pytest.approx(0.75)


@pytest.mark.parametrize("photons", [2.0, 20.0, 200.0])
def test_flat_field_mean_and_variance_match_emccd_model(photons):
    camera = EMCCD()
    flat = np.full((400, 400), photons)
    frame = camera.expose(flat, np.random.default_rng(3)).astype(np.float64)
    mean_expected = float(camera.expected_adu(np.array(photons)))
    var_expected = float(camera.expected_variance_adu(np.array(photons)))
    # 160,000 samples: the mean is known to well under 1%, the variance to about 1%
    assert frame.mean() == pytest.approx(mean_expected, rel=0.01)
    assert frame.var() == pytest.approx(var_expected + 1 / 12, rel=0.03)  # + rounding to integers
    # the EM register doubles the shot-noise variance (excess noise factor F^2 = 2)
    gain = camera.em_gain / camera.electrons_per_adu
    shot_only = gain**2 * camera.mean_photoelectrons(np.array(photons))
    assert frame.var() > 1.8 * shot_only


def test_camera_clips_to_16_bits_and_keeps_dtype():
    frame = EMCCD().expose(np.full((10, 10), 1e6), np.random.default_rng(0))
    assert frame.dtype == np.uint16 and frame.max() == 65535


def test_rendered_spot_holds_all_photons_and_its_centroid_is_the_position():
    image = render_spots((41, 41), np.array([20.3]), np.array([17.8]), np.array([1000.0]), sigma_px=1.3)
    assert image.sum() == pytest.approx(1000.0, rel=1e-6)
    yy, xx = np.mgrid[0:41, 0:41]
    assert (image * yy).sum() / image.sum() == pytest.approx(20.3, abs=1e-3)
    assert (image * xx).sum() / image.sum() == pytest.approx(17.8, abs=1e-3)


def test_spots_at_the_border_lose_the_light_that_falls_outside():
    image = render_spots((20, 20), np.array([0.0]), np.array([10.0]), np.array([100.0]), sigma_px=1.0)
    assert 45 < image.sum() < 75  # about half the PSF lies above row -0.5

