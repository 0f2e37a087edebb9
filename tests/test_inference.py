import numpy as np
import pytest
import torch

from napari_pgsr.data import Normalization
from napari_pgsr.inference import Restorer, restore
from napari_pgsr.modelfile import ModelFile
from napari_pgsr.models.progan import ProGANGenerator
from napari_pgsr.models.unet import UNet


def _model(context=0, depth=2):
    torch.manual_seed(0)
    net = UNet(in_channels=1 + 2 * context, depth=depth, width=4)
    for p in net.parameters():  # far from identity, so seams would show
        p.data += 0.2 * torch.randn_like(p)
    return ModelFile(net.eval(), Normalization(100.0, 300.0, 100.0, 2100.0), {"config": {"context": context}})


@pytest.mark.parametrize("shape", [(1, 150, 203), (1, 97, 61), (3, 64, 230)])
def test_tiled_output_equals_whole_frame_output(shape):
    model = _model(context=(shape[0] - 1) // 2)
    image = np.random.default_rng(0).normal(0.3, 0.2, shape).astype(np.float32)
    whole = Restorer(model, tile=1024).restore_normalised(image)
    tiled = Restorer(model, tile=96 if model.network.depth == 2 else 48, batch=3).restore_normalised(image)
    assert whole.shape == shape[1:]
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 150, 203), (3, 97, 61), (1, 2, 64)])
def test_whole_frames_restored_on_the_device_match_the_tiling_path(shape):
    # whole frames are normalised, padded and de-normalised by torch on the device; tiles by NumPy
    model = _model(context=(shape[0] - 1) // 2)
    norm = model.normalization
    movie = np.random.default_rng(1).integers(100, 400, (4, *shape)).astype(np.uint16)
    restorer = Restorer(model, tile=1024, batch=4)
    assert restorer.fits_one_tile(*shape[1:])
    expected = [norm.high_inverse(restorer.restore_normalised(norm.low(stack.astype(np.float32))))
                for stack in movie]
    together = restorer.restore_many(list(movie))
    alone = restorer(movie[2])
    for got, want in zip(together, expected):
        assert got.shape == shape[1:] and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(alone, expected[2], rtol=1e-5, atol=1e-3)
    for out in [*together, alone]:  # results never live in the reused staging buffer
        assert not np.shares_memory(out, restorer._staged.numpy())


def test_nan_borders_stay_where_they_are_instead_of_spreading_over_the_networks_reach():
    """A registered movie's NaN padding (2 rows, 3 columns here) made 17% of the output NaN from 1.6%."""
    model = _model(context=1)
    movie = np.random.default_rng(2).uniform(100, 400, (3, 90, 70)).astype(np.float32)
    movie[:, :2] = np.nan
    movie[:, :, -3:] = np.nan
    filled = np.where(np.isnan(movie), np.float32(np.nanmedian(movie)), movie)
    for restorer in (Restorer(model), Restorer(model, tile=48)):  # whole frames on the device; tiles
        out = restorer(movie)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(movie[1]))
        np.testing.assert_allclose(out[2:, :-3], restorer(filled)[2:, :-3], rtol=1e-4, atol=1e-2)  # (median ties)


def test_batches_of_whole_frames_stay_within_the_memory_budget():
    # one frame fitting the budget does not mean four do: a batch is split into passes that fit
    model = _model()
    movie = np.random.default_rng(2).integers(100, 400, (5, 1, 64, 96)).astype(np.uint16)
    restorer = Restorer(model, batch=5)
    restorer._memory_budget = lambda: 2.5 * 64 * 96 * restorer._bytes_per_pixel()
    batches, forward = [], restorer.forward
    restorer.forward = lambda x: (batches.append(x.shape[0]), forward(x))[1]
    assert restorer.fits_one_tile(64, 96) and restorer.frames_per_pass(64, 96) == 2
    together = restorer.restore_many(list(movie))
    assert batches == [2, 2, 1]
    for got, stack in zip(together, movie):
        np.testing.assert_allclose(got, restorer(stack), rtol=1e-5, atol=1e-3)
    # compiled: one batch shape (3 frames per pass here), decided once even when free memory changes
    compiled = Restorer(model, batch=4, compile=True)
    compiled._memory_budget = lambda: 3.5 * 64 * 96 * compiled._bytes_per_pixel()
    shapes = []
    compiled.forward.compiled = lambda x: (shapes.append(x.shape[0]), compiled.network(x))[1]
    first = compiled.restore_many(list(movie[:4]))
    compiled._memory_budget = lambda: 1.5 * 64 * 96 * compiled._bytes_per_pixel()
    compiled.restore_many(list(movie[:3]))
    assert shapes == [3, 3, 3]  # 2 + 2 frames, each pass filled up to the one compiled shape
    np.testing.assert_allclose(first[3], together[3], rtol=1e-5, atol=1e-3)


def test_the_memory_estimate_counts_a_progans_full_resolution_channels():
    norm, config = Normalization(100.0, 300.0, 100.0, 2100.0), {"config": {"context": 0}}

    def per_pixel(network):
        return Restorer(ModelFile(network.eval(), norm, config), device="cpu")._bytes_per_pixel()

    # the progan-spots generator (width 0.125, 64 px) has 32 channels at 64 px, as the default U-Net at level 0;
    # its width was taken for 0.125 x 32 = 4 channels, and a 768² frame took 6x the memory budgeted
    assert ProGANGenerator(1, 64, 0.125, resolution=64).top_channels == UNet(width=32).top_channels == 32
    assert per_pixel(ProGANGenerator(1, 64, 0.125, resolution=64)) == per_pixel(UNet(width=32))
    assert per_pixel(ProGANGenerator(1, 64, 0.125, resolution=64, rot180_average=True)) == 2 * per_pixel(
        UNet(width=32))  # each input runs twice
    assert per_pixel(ProGANGenerator(1, 256, 1.0, resolution=256)) == per_pixel(UNet(width=64))  # Karras: 64 at 256 px


def test_tiles_per_pass_stay_within_the_memory_budget():
    model = _model()
    frame = np.random.default_rng(3).integers(100, 400, (1, 150, 203)).astype(np.uint16)
    restorer = Restorer(model, tile=64, batch=4)
    expected = restorer(frame)
    restorer._memory_budget = lambda: 2.5 * 64 * 64 * restorer._bytes_per_pixel()
    batches, forward = [], restorer.forward
    restorer.forward = lambda x: (batches.append(x.shape[0]), forward(x))[1]
    np.testing.assert_allclose(restorer(frame), expected, rtol=1e-5, atol=1e-4)
    assert len(batches) > 2 and max(batches) == 2


def test_restore_denormalises_to_high_exposure_units_and_keeps_shape():
    model = _model()
    torch.nn.init.zeros_(model.network.head.weight)
    torch.nn.init.zeros_(model.network.head.bias)  # identity in normalised units
    frames = np.full((3, 40, 50), 200.0, np.float32)  # normalised low = 0.5
    out = restore(model, frames, tile=64)
    assert out.shape == (3, 40, 50) and out.dtype == np.float32
    np.testing.assert_allclose(out, 100 + 0.5 * 2000, rtol=1e-6)  # normalised 0.5 in high units
    assert restore(model, frames[0]).shape == (40, 50)


def test_context_model_uses_reflected_neighbours():
    model = _model(context=1, depth=1)
    frames = np.random.default_rng(1).normal(150, 30, (4, 24, 24)).astype(np.float32)
    out = restore(model, frames)
    first = Restorer(model)(frames[[1, 0, 1]])  # frame 0's neighbours reflect at the start
    np.testing.assert_allclose(out[0], first, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="give a movie"):
        restore(model, frames[0])


def test_overlap_smaller_than_receptive_field_is_refused():
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        Restorer(_model(), tile=64, overlap=8)


def test_smallest_allowed_overlap_leaves_no_gaps():
    model = _model()
    margin = (model.network.receptive_field - 1) // 2
    image = np.random.default_rng(3).normal(0.3, 0.2, (1, 230, 517)).astype(np.float32)
    whole = Restorer(model, tile=4096).restore_normalised(image)
    for overlap in (2 * margin, 2 * margin + 1, 2 * margin + 3):
        tiled = Restorer(model, tile=96, overlap=overlap).restore_normalised(image)
        np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_a_tile_too_close_to_the_overlap_is_refused_not_left_with_gaps():
    """Tile 48 with overlap 46 stepped by the pooling grid (4 px), leaving 60% of the frame at a constant."""
    model = _model()
    with pytest.raises(ValueError, match=r"tile 48 with an overlap of 46 px leaves tiles 2 px apart, less than this "
                                         r"network's pooling grid of 4 px.*choose a tile of at least 52"):
        Restorer(model, tile=48, overlap=46)
    image = np.random.default_rng(3).normal(0.3, 0.2, (1, 150, 200)).astype(np.float32)
    whole = Restorer(model, tile=4096).restore_normalised(image)
    np.testing.assert_allclose(Restorer(model, tile=52, overlap=46).restore_normalised(image), whole, atol=1e-4)


def test_restored_frames_index_like_a_sequence():
    from napari_pgsr.inference import RestoredFrames

    model = _model(depth=1)
    frames = np.random.default_rng(1).normal(150, 30, (4, 24, 24)).astype(np.float32)
    lazy = RestoredFrames(Restorer(model), frames, np.arange(4))
    np.testing.assert_array_equal(lazy[-1], lazy[3])
    assert lazy[1:3, 2:5, :4].shape == (2, 3, 4)
    for outside in (4, -5):  # (-5 was named "frame -1 of 4")
        with pytest.raises(IndexError, match=rf"^frame {outside} is outside the 4 restored frames$"):
            lazy[outside]


def test_frames_far_from_the_training_grey_levels_are_warned_of(tmp_path):
    """The normalisation is fixed in camera units: a float copy scaled 0-3 of a 100-300 grey-level movie
    restored to nonsense with no word."""
    import warnings

    from napari_pgsr.inference import restore_to_file, warn_of_foreign_intensities
    from napari_pgsr.io import read_movie, write_movie

    norm = Normalization(100.0, 300.0, 100.0, 2100.0)
    rng = np.random.default_rng(0)
    like_training = rng.uniform(100, 300, (64, 64)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_of_foreign_intensities(norm, like_training, "same") is None
        assert warn_of_foreign_intensities(norm, like_training * 1.5, "a little brighter") is None
        background = rng.normal(100, 3, (32, 32))  # a crop of background: narrow, but at the training's levels
        assert warn_of_foreign_intensities(norm, background, "background crop") is None
    for name, frame in [("scaled copy", like_training / 100), ("ten times brighter", like_training * 10),
                        ("offset 2000", like_training + 2000)]:
        with pytest.warns(UserWarning, match=rf"{name}: its grey levels \(.* are far from those of the low-exposure "
                                             r"frames the model was trained on \(100 to 300\)"):
            warn_of_foreign_intensities(norm, frame, name)
    movie = write_movie(tmp_path / "scaled.tif", np.stack([like_training / 100] * 2))
    with pytest.warns(UserWarning, match=r"scaled.tif: its grey levels \(.*percentiles of frame 0\)"):
        restore_to_file(Restorer(_model(), device="cpu"), read_movie(movie), tmp_path / "out.tif")
    # an alternating movie restored whole: its high frames are no input the model knows
    alternating = write_movie(tmp_path / "alternating.tif", np.stack([like_training, like_training * 10] * 2))
    with pytest.warns(UserWarning, match=r"alternating.tif: its grey levels \(.*percentiles of frame 1\).*an "
                                         r"alternating movie\? Restore its low frames \(--frames low\)"):
        restore_to_file(Restorer(_model(), device="cpu"), read_movie(alternating), tmp_path / "all.tif")


def test_tall_frames_tile_as_wide_ones_and_a_deep_network_that_fits_nowhere_computes_least():
    """A 2048 x 256 frame was costed as 2048² and tiled; a grown GAN (900 px of overlap) that fitted no tile
    ran a 1200² frame as 16 tiles of 1024², 11.7x its pixels, over the budget all the same."""
    restorer = Restorer(_model(), device="cpu")
    restorer._memory_budget = lambda: 1.01 * 2048 * 256 * restorer._bytes_per_pixel()
    assert restorer.tile_for(256, 2048) == restorer.tile_for(2048, 256) == 2048
    deep = Restorer(ModelFile(ProGANGenerator(1, 256, width=1 / 64, resolution=256).eval(),
                              Normalization(100.0, 300.0, 100.0, 2100.0), {"config": {"context": 0}}), device="cpu")
    assert deep.overlap > 800
    deep._memory_budget = lambda: 0.5 * 1200 * 1200 * deep._bytes_per_pixel()  # no tile fits
    deep._memory_limit = lambda: 2.0 * 1200 * 1200 * deep._bytes_per_pixel()  # memory holds the whole frame
    assert deep.tile_for(1200, 1200) >= 1200  # the whole frame: one pass
    # an 8192² frame in one pass would not: the largest saving among the tiles memory holds
    assert deep.tile_for(8192, 8192) ** 2 <= 2.0 * 1200 * 1200 and deep.tile_for(8192, 8192) > deep.tile
    deep._memory_limit = lambda: 0.0
    assert deep.tile_for(1200, 1200) == deep.tile  # none held: the fallback tile


def test_a_tile_asked_for_and_enlarged_for_a_deep_network_is_said():
    deep = ModelFile(ProGANGenerator(1, 256, width=1 / 64, resolution=256).eval(),
                     Normalization(100.0, 300.0, 100.0, 2100.0), {"config": {"context": 0}})
    with pytest.warns(UserWarning, match=r"tile 256 is smaller than this network's overlap of \d+ px needs: tiles "
                                         r"of \d+ px are used"):
        restorer = Restorer(deep, tile=256, device="cpu")
    assert restorer.tile > 256


def test_fp32_on_a_gpu_is_not_computed_in_tf32():
    """cuDNN computes float32 convolutions in TF32 by default on newer GPUs: '--precision fp32' was reduced."""
    restorer = Restorer(_model(), device="cpu", precision="fp32")
    restorer.device = torch.device("cuda")  # (the choice only; nothing runs on it)
    assert torch.backends.cudnn.allow_tf32
    with restorer._precision():
        assert not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.allow_tf32
