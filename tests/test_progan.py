"""Progressive-growing conditional GAN: components, schedule, losses, resume mid-fade, command line."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_pgsr import cli
from napari_pgsr.inference import Restorer
from napari_pgsr.io import write_movie
from napari_pgsr.modelfile import load_model
from napari_pgsr.models.progan import (EqualizedConv2d, EqualizedLinear, MinibatchStdDev, ProGANCritic,
                                       ProGANGenerator, parameter_count)
from napari_pgsr.pairs import split_alternating
from napari_pgsr.simulate import simulate_movie
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.events import EventKind
from napari_pgsr.training.gan_losses import critic_loss, generator_loss, gradient_penalty
from napari_pgsr.training.loop import train
from napari_pgsr.training.progan_loop import (_optimizers, diverged, ema_decay_at, faded_real, phase_at,
                                              phase_schedule, warmup_lr_at)


def test_equalized_layers_store_unit_normal_weights_and_keep_the_variance():
    torch.manual_seed(0)
    conv = EqualizedConv2d(256, 256, 3, padding=1, gain=1.0)
    assert conv.weight.mean().abs() < 0.01 and conv.weight.std().item() == pytest.approx(1.0, abs=0.01)
    x = torch.randn(8, 256, 16, 16)
    with torch.no_grad():
        assert conv(x)[..., 1:-1, 1:-1].var().item() == pytest.approx(1.0, rel=0.1)  # inside the zero padding
        he = EqualizedConv2d(256, 256, 3, padding=1)  # gain sqrt(2): variance 2, which a ReLU halves again
        assert he(x)[..., 1:-1, 1:-1].var().item() == pytest.approx(2.0, rel=0.1)
        dense = EqualizedLinear(1024, 512, gain=1.0)
        assert dense(torch.randn(64, 1024)).var().item() == pytest.approx(1.0, rel=0.1)
    # the scale is applied at run time: the stored weights do not carry it
    assert conv.scale == pytest.approx(1 / np.sqrt(256 * 9))


def test_minibatch_stddev_appends_the_group_mean_std():
    x = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 3, 2, 2).clone()  # sample i is i everywhere
    out = MinibatchStdDev(group_size=4)(x)
    assert out.shape == (4, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], x)
    torch.testing.assert_close(out[:, 3], torch.full((4, 2, 2), float(np.std([0, 1, 2, 3]))))
    pairs = MinibatchStdDev(group_size=2)(x)  # groups {0, 2} and {1, 3}: std 1 each
    torch.testing.assert_close(pairs[:, 3], torch.ones(4, 2, 2), atol=1e-4, rtol=0)
    # batches 4 does not divide: groups of 3 for 9 (samples i, i + 3, i + 6: std of 0, 3, 6), one of all for 7
    nine = MinibatchStdDev()(torch.arange(9.0).reshape(9, 1, 1, 1))[:, 1].flatten()
    torch.testing.assert_close(nine, torch.full((9,), float(np.std([0, 3, 6]))))
    seven = MinibatchStdDev()(torch.arange(7.0).reshape(7, 1, 1, 1))[:, 1].flatten()
    torch.testing.assert_close(seven, torch.full((7,), float(np.std(np.arange(7)))))  # (not 0: a signal)


def _grown(width=0.05, resolution=16, alpha=0.0):
    torch.manual_seed(1)
    return ProGANGenerator(1, 32, width, resolution=resolution, alpha=alpha)


def test_fade_in_starts_from_the_previous_resolution_and_ends_with_the_new_block():
    generator, x = _grown(), torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        faded = generator(x)
        generator.resolution, generator.alpha = 8, 1.0
        previous = generator(F.avg_pool2d(x, 2))
        torch.testing.assert_close(faded, F.interpolate(previous, scale_factor=2.0, mode="nearest"), atol=0, rtol=0)
        generator.resolution, generator.alpha = 16, 1.0
        new = generator(x)
        with torch.no_grad():  # at alpha 1 the previous resolution's input and output layers play no part
            generator.from_gray["8"][0].weight.add_(1.0)
            generator.to_gray["8"].weight.add_(1.0)
        torch.testing.assert_close(generator(x), new)
        generator.alpha = 0.25  # in between: a blend, neither end
        middle = generator(x)
        assert not torch.allclose(middle, new) and not torch.allclose(middle, faded)
    critic = ProGANCritic(2, 32, 0.05, resolution=16, alpha=0.0)
    low, image = torch.randn(4, 1, 16, 16), x[:1].repeat(4, 1, 1, 1)
    with torch.no_grad():
        at_zero = critic(low, image)
        critic.resolution, critic.alpha = 8, 1.0
        torch.testing.assert_close(at_zero, critic(F.avg_pool2d(low, 2), F.avg_pool2d(image, 2)), atol=0, rtol=0)


def test_growing_keeps_the_existing_weights_and_the_output():
    generator, x = _grown(resolution=8, alpha=1.0), torch.randn(2, 1, 16, 16)
    before = {name: value.clone() for name, value in generator.state_dict().items()}
    with torch.no_grad():
        small = generator(F.avg_pool2d(x, 2))
        generator.resolution, generator.alpha = 16, 0.0
        grown = generator(x)
    assert all(torch.equal(before[name], value) for name, value in generator.state_dict().items())
    torch.testing.assert_close(grown, F.interpolate(small, scale_factor=2.0, mode="nearest"), atol=0, rtol=0)
    real = torch.randn(2, 1, 16, 16)  # real images fade the same way
    torch.testing.assert_close(faded_real(real, 0.0), F.interpolate(F.avg_pool2d(real, 2), scale_factor=2.0))
    torch.testing.assert_close(faded_real(real, 1.0), real)


def test_gradient_penalty_and_drift_follow_their_formulas():
    weights = torch.randn(1, 1, 8, 8)

    def linear(low, image):  # D(x) = <w, x>: the gradient is w everywhere
        return (image * weights).flatten(1).sum(1)

    real, fake, low = torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8), torch.zeros(5, 1, 8, 8)
    expected = 10.0 * (weights.norm() - 1.0) ** 2
    torch.testing.assert_close(gradient_penalty(linear, low, real, fake), expected)

    def constant(low, image):  # no gradient at all: penalty 10 * (0 - 1)^2, drift 1e-3 * 3^2
        return torch.full((image.shape[0],), 3.0) + 0.0 * image.flatten(1).sum(1)

    loss, values = critic_loss(constant, low, real, fake)
    assert values["gradient_penalty"] == pytest.approx(10.0) and values["drift"] == pytest.approx(9e-3)
    assert loss.item() == pytest.approx(10.009) and values["wasserstein"] == pytest.approx(0.0)
    joint, parts = generator_loss(linear, low, fake, real, "joint", lambda_gan=0.5)
    assert joint.item() == pytest.approx(F.l1_loss(fake, real).item() - 0.5 * linear(low, fake).mean().item(), rel=1e-5)
    gan, _ = generator_loss(linear, low, fake, real, "gan")
    assert gan.item() == pytest.approx(-linear(low, fake).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="gan mode"):
        generator_loss(linear, low, fake, real, "wgan")


def test_generator_receptive_field_matches_the_gradient_footprint():
    generator = ProGANGenerator(1, 16, 0.02, resolution=16, residual=False)
    for p in generator.parameters():  # positive weights: every path contributes, so the footprint is exact
        p.data.uniform_(0.1, 0.2)
    size, reach = 96, 0
    for centre in range(size // 2, size // 2 + 4):  # every phase of the pooling grid
        x = torch.zeros(1, 1, size, size, requires_grad=True)
        generator(x + 1.0)[0, 0, centre, centre].backward()
        seen = torch.nonzero(x.grad[0, 0].abs().sum(0) > 0).flatten()
        reach = max(reach, centre - int(seen.min()), int(seen.max()) - centre)
    assert generator.receptive_field == 2 * reach + 1


def test_the_rot180_average_cannot_shift_the_image():
    torch.manual_seed(0)
    plain = ProGANGenerator(1, 32, 0.05, resolution=32)
    averaged = ProGANGenerator(1, 32, 0.05, resolution=32, rot180_average=True)
    for p in plain.parameters():  # random weights, so the plain network's answer is not symmetric
        p.data.normal_()
    averaged.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 32, 32)
    turned = x.flip(-2, -1)
    # it is the mean of the two answers, and turning the input turns the output
    torch.testing.assert_close(averaged(x), (plain(x) + plain(turned).flip(-2, -1)) / 2)
    torch.testing.assert_close(averaged(turned), averaged(x).flip(-2, -1), atol=1e-5, rtol=1e-5)
    assert (plain(turned) - plain(x).flip(-2, -1)).abs().max() > 1e-2
    # a spot centred on the patch stays centred: no shift survives the average
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    spot = torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / 8)[None, None]
    out = averaged(spot)[0, 0].detach()
    out = out - out.min()
    assert float((out * yy).sum() / out.sum()) == pytest.approx(15.5, abs=1e-4)
    assert float((out * xx).sum() / out.sum()) == pytest.approx(15.5, abs=1e-4)
    assert averaged.architecture["rot180_average"] is True and "rot180_average" not in plain.architecture


def test_the_critic_at_width_one_has_karras_size():
    critic = ProGANCritic(2, 256, 1.0, resolution=256)
    assert parameter_count(critic) == pytest.approx(23e6, rel=0.1)


def test_phase_schedule_fades_each_resolution_in_linearly():
    config = TrainConfig(model="progan", patch=32, phase_images=100, phase_scale=0.5, steps=10)
    assert phase_schedule(config) == [(4, False, 50), (8, True, 50), (8, False, 50), (16, True, 50),
                                      (16, False, 50), (32, True, 50), (32, False, 50)]
    assert (phase_at(config, 0).resolution, phase_at(config, 0).fading) == (4, False)
    middle = phase_at(config, 50 + 20)
    assert (middle.resolution, middle.fading, middle.alpha) == (8, True, pytest.approx(0.4))
    assert phase_at(config, 10_000).resolution == 32 and phase_at(config, 10_000).alpha == 1.0
    skip = TrainConfig(model="progan", patch=32, start_resolution=16, phase_images=10, steps=10)
    assert [p[0] for p in phase_schedule(skip)] == [16, 32, 32]
    with pytest.raises(ValueError, match="start_resolution"):
        TrainConfig(model="progan", patch=32, start_resolution=64)
    with pytest.raises(ValueError, match="resolution_batches"):
        TrainConfig(model="progan", patch=32, resolution_batches="4-64")
    for wrong in ("16:0", "16:-4", "5:64"):  # a batch of 0 failed at its phase; 5 px was never trained at
        with pytest.raises(ValueError, match=f"resolution_batches: {wrong}: each must be a resolution"):
            TrainConfig(model="progan", patch=32, resolution_batches=f"4:8,{wrong}")


@pytest.fixture(scope="module")
def small_pairs():
    return split_alternating(simulate_movie("ap2", 40, (48, 48), seed=4).movie)


def _config(**changes):
    values = dict(model="progan", patch=16, width=1 / 32, batch=4, resolution_batches="4:8,8:6", steps=12,
                  phase_images=16, validation_every=6, validation_patches=4, checkpoint_every=1000, device="cpu")
    return TrainConfig(**{**values, **changes})


def test_resume_in_the_middle_of_a_fade_is_exact(tmp_path, small_pairs):
    straight = train(_config(), [small_pairs], tmp_path / "straight.pgsr")
    assert straight.reason == "done" and np.all(np.isfinite(straight.history["loss"]))
    half = train(_config(steps=4), [small_pairs], tmp_path / "half.pgsr")
    state = load_model(tmp_path / "half.pgsr").training_state
    # 2 steps of 8 images stabilise 4 px (16 images, the phase length); 2 steps of 6 go 12 images into the
    # 16-image fade of 8 px: the checkpoint records the phase the next step trains, alpha 12 / 16
    assert state["images_seen"] == 28
    assert (state["phase"]["resolution"], state["phase"]["fading"], state["phase"]["alpha"]) == (8, True, 0.75)
    resumed = train(_config(), [small_pairs], tmp_path / "half.pgsr", resume=tmp_path / "half.pgsr")
    a, b = load_model(tmp_path / "straight.pgsr"), load_model(tmp_path / "half.pgsr")
    assert resumed.step == straight.step == 12
    for name, value in a.network.state_dict().items():
        torch.testing.assert_close(b.network.state_dict()[name], value, atol=0, rtol=0)
    for name, value in a.training_state["critic"].items():
        torch.testing.assert_close(b.training_state["critic"][name], value, atol=0, rtol=0)
    assert a.network.architecture == b.network.architecture
    assert [p["resolution"] for p in a.metadata["history"]["phases"]] == [8, 16]
    # a checkpoint on a phase boundary (4 px done after 2 steps): the resumed run restarts Adam at 8 px too
    train(_config(steps=2), [small_pairs], tmp_path / "edge.pgsr")
    train(_config(), [small_pairs], tmp_path / "edge.pgsr", resume=tmp_path / "edge.pgsr")
    edge = load_model(tmp_path / "edge.pgsr")
    for name, value in a.network.state_dict().items():
        torch.testing.assert_close(edge.network.state_dict()[name], value, atol=0, rtol=0)
    # resumed on that boundary but stopped before a step: the file keeps the stage its weights were trained
    # at (4 px), not the next step's (8 px at alpha 0, which would pool every input and change the output)
    train(_config(steps=2), [small_pairs], tmp_path / "stop.pgsr")
    before = load_model(tmp_path / "stop.pgsr")
    stopped = train(_config(), [small_pairs], tmp_path / "stop.pgsr", resume=tmp_path / "stop.pgsr",
                    should_stop=lambda: True)
    after = load_model(tmp_path / "stop.pgsr")
    assert stopped.step == 2 and after.network.architecture == before.network.architecture
    assert after.network.architecture["resolution"] == 4
    frame = small_pairs.read(0)[0][None].astype(np.float32)
    np.testing.assert_array_equal(Restorer(after, device="cpu")(frame), Restorer(before, device="cpu")(frame))


def test_warm_up_then_gan_and_the_gan_mode(tmp_path, small_pairs):
    events = []
    result = train(_config(warmup_steps=4, gan_mode="gan", steps=8), [small_pairs], tmp_path / "gan.pgsr",
                   progress=events.append)
    state = load_model(tmp_path / "gan.pgsr").training_state
    # the loop steps with the warm-up's decaying rate, then with Karras's
    rates = [event.values["lr"] for event in events if event.kind == EventKind.STEP]
    warm_config = _config(warmup_steps=4)
    assert rates == pytest.approx([warmup_lr_at(warm_config, s) for s in range(4)] + [warm_config.gan_lr] * 4)
    # warm-up images do not count for the phases: 2 GAN steps of 8 at 4 px, then 2 of 6 in the 8 px fade
    assert result.step == 8 and state["images_seen"] == 8 + 8 + 6 + 6
    assert np.all(np.isfinite(result.history["loss"]))
    # the warm-up trains the generator like the U-Net; the GAN phase uses Karras's Adam, freshly started
    config = _config(warmup_steps=4)
    warm, _ = _optimizers(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), config, warming=True)
    gan, critic = _optimizers(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), config)
    assert warm.defaults["betas"] == (0.9, 0.999) and warm.defaults["lr"] == config.warmup_lr != config.lr
    assert gan.defaults["betas"] == critic.defaults["betas"] == (0.0, 0.99) and gan.defaults["lr"] == config.gan_lr
    # its learning rate decays like the U-Net's cosine schedule, to a 50th at the warm-up's end
    assert [warmup_lr_at(config, s) for s in (0, 2, 4, 6)] == pytest.approx(
        [config.warmup_lr, config.warmup_lr * 0.51, config.warmup_lr / 50, config.warmup_lr / 50])
    assert warmup_lr_at(_config(warmup_steps=4, lr_schedule="constant"), 2) == config.warmup_lr
    assert not state["optimizer_warming"] and len(state["generator_optimizer"]["state"]) > 0
    # the EMA copies the warm-up, then ramps its decay up: 0.1 after the first GAN step, capped at ema_decay
    assert [ema_decay_at(config, s) for s in (0, 3, 4, 5)] == pytest.approx([0.0, 0.0, 0.1, 2 / 11])
    assert ema_decay_at(config, 10**7) == config.ema_decay
    # resuming inside the warm-up and exactly at its end gives the uninterrupted run's weights
    for stop in (2, 4):
        train(_config(warmup_steps=4, gan_mode="gan", steps=stop), [small_pairs], tmp_path / f"r{stop}.pgsr")
        resumed = train(_config(warmup_steps=4, gan_mode="gan", steps=8), [small_pairs], tmp_path / f"r{stop}.pgsr",
                        resume=tmp_path / f"r{stop}.pgsr")
        for name, value in result.network.state_dict().items():
            torch.testing.assert_close(resumed.network.state_dict()[name], value, atol=0, rtol=0)
        critic = load_model(tmp_path / f"r{stop}.pgsr").training_state["critic"]
        for name, value in state["critic"].items():
            torch.testing.assert_close(critic[name], value, atol=0, rtol=0)


@pytest.mark.parametrize("stop_at, validated", [(10, False), (8, True)])
def test_a_resumed_gan_that_blows_up_says_whether_it_went_back_to_a_validated_state(tmp_path, small_pairs,
                                                                                   monkeypatch, stop_at, validated):
    """Stopped between validations (step 10; validations at 4 and 8) and resumed, a run whose third validation
    blows up went back to step 10 and called it 'the last validated state'."""
    from napari_pgsr.training import progan_loop

    calls, validate = [], progan_loop.validate

    def blowing_up_at_step_12(*args, **kwargs):
        metrics = validate(*args, **kwargs)
        calls.append(1)
        return {**metrics, "loss": metrics["loss"] * (1000 if len(calls) == 3 else 1)}

    monkeypatch.setattr(progan_loop, "validate", blowing_up_at_step_12)
    config = _config(start_resolution=16, steps=20, validation_every=4, phase_images=1000)
    seen = []
    stopped = train(config, [small_pairs], tmp_path / "m.pgsr", progress=seen.append,
                    should_stop=lambda: sum(e.kind is EventKind.STEP for e in seen) >= stop_at)
    assert stopped.step == stop_at and len(calls) == 2
    resumed = train(config, [small_pairs], tmp_path / "m.pgsr", resume=tmp_path / "m.pgsr")
    record = resumed.history["divergences"][-1]
    assert resumed.reason == "diverged" and (record["step"], record["restored_step"]) == (12, stop_at)
    assert record["restored_validated"] is validated
    assert (f"holds step {stop_at}, " + ("the last validated state before it" if validated else
            "the state this run resumed from, saved between validations (not validated)")) in resumed.note


def test_divergence_is_judged_against_the_best_loss_at_the_same_resolution():
    history = [{"step": 2, "resolution": 8, "loss": 0.5}, {"step": 4, "resolution": 16, "loss": 0.1},
               {"step": 6, "resolution": 16, "loss": 0.2}]
    assert diverged(history, 3.0) is None  # 2x the best at 16 px; the 8 px loss does not count
    assert diverged(history + [{"step": 8, "resolution": 16, "loss": 0.31}], 3.0)["best_loss"] == 0.1
    assert diverged(history + [{"step": 8, "resolution": 32, "loss": 9.0}], 3.0) is None  # first at 32 px
    assert "best_loss" not in diverged(history + [{"step": 8, "resolution": 32, "loss": float("nan")}], 3.0)
    assert diverged(history + [{"step": 8, "resolution": 16, "loss": float("inf")}], 3.0)["best_loss"] == 0.1
    assert diverged(history + [{"step": 8, "resolution": 16, "loss": 5.0}], 0) is None  # 0: never
    with pytest.raises(ValueError, match="divergence_factor must be 0 .never stop. or above 1, got 0.5"):
        _config(divergence_factor=0.5)


def test_a_gan_that_blows_up_stops_and_keeps_its_last_validated_state(tmp_path, small_pairs):
    # a learning rate 500x Karras's with the adversarial term at full weight blows the generator up
    unstable = dict(start_resolution=16, warmup_steps=10, gan_lr=0.5, lambda_gan=1.0, validation_every=5)
    events = []
    result = train(_config(steps=30, **unstable), [small_pairs], tmp_path / "blown.pgsr", progress=events.append)
    assert result.reason == "diverged" and result.step == 10
    record = result.history["divergences"][0]
    assert (record["step"], record["restored_step"], record["factor"], record["restored_validated"]) == (15, 10, 3.0,
                                                                                                         True)
    assert record["loss"] > 100 * record["best_loss"]
    assert "diverged at step 15" in result.note and "holds step 10, the last validated state" in result.note
    assert events[-1].values["note"] == result.note and events[-1].values["reason"] == "diverged"
    # the file is what a run stopped at step 10 wrote: networks, EMA, optimizers, random state and history
    blown, stopped = load_model(tmp_path / "blown.pgsr"), load_model(
        train(_config(steps=10, **unstable), [small_pairs], tmp_path / "ten.pgsr").path)
    for name, value in stopped.network.state_dict().items():
        torch.testing.assert_close(blown.network.state_dict()[name], value, atol=0, rtol=0)
    for part in ("generator", "critic", "generator_optimizer", "critic_optimizer", "torch_rng"):
        torch.testing.assert_close(blown.training_state[part], stopped.training_state[part], atol=0, rtol=0)
    for key in ("step", "images_seen", "cursor", "phase", "optimizer_warming"):
        assert blown.training_state[key] == stopped.training_state[key], key
    history = blown.metadata["history"]
    assert len(history["loss"]) == 10 and [v["step"] for v in history["validation"]] == [5, 10]
    assert history["loss"] == stopped.metadata["history"]["loss"]
    # with the check off the same run trains on to the end, to a wreck; resuming the kept file with the check
    # off replays exactly that
    wreck = train(_config(steps=30, divergence_factor=0, **unstable), [small_pairs], tmp_path / "wreck.pgsr")
    assert wreck.reason == "done" and wreck.step == 30 and wreck.history["validation"][-1]["loss"] > 1.0
    again = train(_config(steps=30, divergence_factor=0, **unstable), [small_pairs], tmp_path / "blown.pgsr",
                  resume=tmp_path / "blown.pgsr")
    for name, value in wreck.network.state_dict().items():
        torch.testing.assert_close(again.network.state_dict()[name], value, atol=0, rtol=0)


def test_a_run_diverging_while_it_grows_keeps_the_stage_it_validated(tmp_path, small_pairs, monkeypatch):
    from napari_pgsr.training import progan_loop

    calls = []

    def blowing_up_at_the_third(*args, **kwargs):  # steps 2 (4 px), 4 (8 px fading in), 6 (8 px): blown up
        metrics = validate(*args, **kwargs)
        calls.append(1)
        return {**metrics, "loss": metrics["loss"] * (1000 if len(calls) == 3 else 1)}

    validate = progan_loop.validate
    monkeypatch.setattr(progan_loop, "validate", blowing_up_at_the_third)
    result = train(_config(validation_every=2), [small_pairs], tmp_path / "grown.pgsr")
    assert result.reason == "diverged" and result.step == 4
    monkeypatch.setattr(progan_loop, "validate", validate)
    stopped = load_model(train(_config(validation_every=2, steps=4), [small_pairs], tmp_path / "four.pgsr").path)
    kept = load_model(tmp_path / "grown.pgsr")
    # the model file holds the network as validated at step 4, 8 px fading in, not the next step's stage
    assert kept.network.architecture == stopped.network.architecture
    assert (kept.network.resolution, kept.network.alpha) == (stopped.network.resolution, stopped.network.alpha)
    assert kept.network.resolution == 8 and 0 < kept.network.alpha < 1
    assert kept.metadata["history"]["phases"] == stopped.metadata["history"]["phases"]
    for name, value in stopped.network.state_dict().items():
        torch.testing.assert_close(kept.network.state_dict()[name], value, atol=0, rtol=0)


def test_weights_gone_to_nan_between_validations_are_never_saved(tmp_path, small_pairs, monkeypatch):
    """A Stop (or a checkpoint, or the end) between a blow-up and the next validation wrote the wreck over
    the last good model file."""
    from napari_pgsr.training import progan_loop
    from napari_pgsr.training.loop import TrainingDiverged

    gan_step, steps = progan_loop.gan_step, []

    def blowing_up_at_step_8(generator, *args, **kwargs):
        result = gan_step(generator, *args, **kwargs)
        steps.append(1)
        if len(steps) >= 8:
            with torch.no_grad():
                for parameter in generator.parameters():
                    parameter.fill_(float("nan"))
        return result

    monkeypatch.setattr(progan_loop, "gan_step", blowing_up_at_step_8)
    # validated at step 6, blown up at 8, stopped at 9 (before the validation of step 12)
    result = train(_config(steps=12), [small_pairs], tmp_path / "stopped.pgsr", should_stop=lambda: len(steps) >= 9)
    kept = load_model(tmp_path / "stopped.pgsr")
    assert result.reason == "diverged" and kept.training_state["step"] == 6
    assert all(torch.isfinite(value).all() for value in kept.network.state_dict().values())
    assert "training diverged at step 9 (the weights are not finite): the model file holds step 6" in result.note
    # a checkpoint due at step 10, between the validations of steps 6 and 12: not written, the run goes back
    steps.clear()
    result = train(_config(steps=12, checkpoint_every=5), [small_pairs], tmp_path / "checkpoint.pgsr")
    assert result.reason == "diverged" and load_model(tmp_path / "checkpoint.pgsr").training_state["step"] == 6
    # no validation to go back to: nothing is written
    steps.clear()
    with pytest.raises(TrainingDiverged, match="the weights are not finite at step 10; nothing validated"):
        train(_config(steps=10, validation_fraction=0.0), [small_pairs], tmp_path / "none.pgsr")
    assert not (tmp_path / "none.pgsr").exists()


def test_each_critic_update_takes_a_batch_of_its_own(tmp_path, small_pairs, monkeypatch):
    """critic_steps 3 ran three updates on one batch (WGAN-GP draws a new one per critic update)."""
    from napari_pgsr.training import progan_loop

    critic_loss, seen = progan_loop.critic_loss, []

    def recording(critic, low, real, fake):
        seen.append(real.detach().clone())
        return critic_loss(critic, low, real, fake)

    monkeypatch.setattr(progan_loop, "critic_loss", recording)
    result = train(_config(steps=2, critic_steps=3, start_resolution=16, validation_every=100), [small_pairs],
                   tmp_path / "critic.pgsr")
    assert len(seen) == 6 and result.history["images_seen"] == 2 * 4  # the generator's images set the phases
    assert all(not torch.equal(seen[i], seen[j]) for i in range(6) for j in range(i + 1, 6))


def test_cpu_bf16_computes_both_networks_in_bf16_and_keeps_fp32_weights(tmp_path, small_pairs, monkeypatch):
    from napari_pgsr import devices
    from napari_pgsr.training.progan_loop import gan_step

    from napari_pgsr.training import progan_loop

    for module in (devices, progan_loop):  # (as on an AMX CPU; progan_loop picks channels-last with it)
        monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: True)
    for cpu_bf16 in (True, False):
        torch.manual_seed(0)
        generator, critic = ProGANGenerator(1, 16, 1 / 32, resolution=16), ProGANCritic(2, 16, 1 / 32, resolution=16)
        seen = {"generator": set(), "critic": set()}
        for name, network in (("generator", generator), ("critic", critic)):
            for layer in network.modules():
                if isinstance(layer, EqualizedConv2d):
                    layer.register_forward_hook(lambda m, i, out, name=name: seen[name].add(out.dtype))
        config = _config(cpu_bf16=cpu_bf16, critic_steps=2)
        g_opt, d_opt = _optimizers(generator, critic, config)
        low, real = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
        before = [p.detach().clone() for p in critic.parameters()]
        loss, values = gan_step(generator, critic, g_opt, d_opt, low, real, config, torch.device("cpu"))
        dtype = torch.bfloat16 if cpu_bf16 else torch.float32
        assert seen == {"generator": {dtype}, "critic": {dtype}}
        assert np.isfinite(float(loss.detach())) and 0 < values["gradient_penalty"] < np.inf
        assert all(p.dtype == torch.float32 for p in [*generator.parameters(), *critic.parameters()])
        assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters()))  # the critic learnt
    result = train(_config(cpu_bf16=True, warmup_steps=2, steps=6), [small_pairs], tmp_path / "bf16.pgsr")
    assert np.all(np.isfinite(result.history["loss"]))
    assert load_model(tmp_path / "bf16.pgsr").metadata["config"]["cpu_bf16"]

    def channels_last(network):  # the 3x3 convs' weights (16 channels at this width)
        weights = [m.weight for m in network.modules() if isinstance(m, EqualizedConv2d) and m.weight.shape[-1] == 3]
        return {w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights}

    assert channels_last(result.network) == {True}
    for module in (devices, progan_loop):
        monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="cpu_bf16 ignored: this CPU has no hardware bf16"):
        result = train(_config(cpu_bf16=True, steps=2), [small_pairs], tmp_path / "fp32.pgsr")
    assert channels_last(result.network) == {False}  # no bf16 computed, no channels-last


def test_train_and_predict_a_progan_from_the_command_line(tmp_path, capsys):
    movie = tmp_path / "movie.tif"
    write_movie(movie, simulate_movie("beads", 24, (40, 40), seed=2).movie, pixel_size_um=0.16)
    args = [str(movie), "--out", str(tmp_path / "gan.pgsr"), "--model", "progan", "--width", "0.03",
            "--patch", "16", "--batch", "4", "--steps", "6", "--phase-images", "8", "--lambda-gan", "0.01",
            "--rot180-average", "--validation-patches", "4", "--validation-every", "3", "--device", "cpu", "--quiet"]
    assert cli.train_main(args) == 0
    model = load_model(tmp_path / "gan.pgsr")
    assert model.network.architecture["name"] == "progan" and model.metadata["config"]["lambda_gan"] == 0.01
    assert model.network.rot180_average  # the model file rebuilds the averaging generator
    assert "progan width 0.03" in model.describe()
    assert cli.predict_main([str(tmp_path / "gan.pgsr"), str(movie), "-o", str(tmp_path / "out.tif"), "--quiet"]) == 0
    assert (tmp_path / "out.tif").exists()
    assert cli.train_main([*args, "--overwrite", "--start-resolution", "64"]) == 2
    assert "start_resolution" in capsys.readouterr().err
    # a run that blows up still writes its last validated state, and says so even with --quiet
    assert cli.train_main([*args, "--overwrite", "--steps", "30", "--warmup-steps", "10", "--start-resolution", "16",
                           "--gan-lr", "0.5", "--lambda-gan", "1", "--validation-every", "5"]) == 0
    assert "napari-pgsr-train: warning: training diverged at step 15" in capsys.readouterr().err
    assert load_model(tmp_path / "gan.pgsr").training_state["step"] == 10


def test_checkpoints_from_before_a_setting_existed_resume_as_they_were_trained():
    from napari_pgsr.training.config import as_trained

    stored = TrainConfig(model="progan", lr=2e-4, warmup_steps=100).to_dict()
    # written before these existed
    del stored["warmup_lr"], stored["rot180_average"], stored["critic_noise"], stored["critic_noise_shape"]
    values = as_trained(stored)
    assert values["warmup_lr"] == 2e-4 and values["rot180_average"] is False and values["critic_noise"] is False
    assert values["critic_noise_shape"] == "normal"
    assert "warmup_lr" not in as_trained({**stored, "warmup_steps": 0})  # no warm-up ran: nothing to keep
    unet = TrainConfig().to_dict()
    del unet["warmup_lr"]
    assert as_trained(unet) == unet


def test_rank_step_seeds_differ_across_ranks_and_steps_and_repeat_on_resume():
    from napari_pgsr.training.progan_loop import rank_step_seed

    seeds = {rank_step_seed(0, rank, step) for rank in range(4) for step in range(50)}
    assert len(seeds) == 200  # every rank and step its own draws
    assert rank_step_seed(7, 1, 12) == rank_step_seed(7, 1, 12) != rank_step_seed(8, 1, 12)


def test_validation_during_a_fade_scores_against_the_cross_faded_target(tmp_path, small_pairs, monkeypatch):
    """Trained towards the cross-fade of the pooled and the full high-exposure image, the generator was scored
    against the full one alone, so its validation loss jumped at every fade for no fault of its own."""
    from napari_pgsr.training import progan_loop

    targets, validate = [], progan_loop.validate

    def spy(*args, **kwargs):
        targets.append(kwargs["target"])
        return validate(*args, **kwargs)

    monkeypatch.setattr(progan_loop, "validate", spy)
    seen = []
    train(_config(steps=6, validation_every=1), [small_pairs], tmp_path / "m.pgsr", progress=seen.append)
    steps = [event.values for event in seen if event.kind is EventKind.STEP]
    assert len(targets) == len(steps) == 6
    checkerboard = torch.from_numpy((np.indices((8, 8)).sum(0) % 2).astype(np.float32))[None, None]
    fading = [(target, values["alpha"]) for target, values in zip(targets, steps) if values["fading"]]
    assert fading and any(not values["fading"] for values in steps)
    for target, alpha in fading:  # a checkerboard pools to 0.5 everywhere
        torch.testing.assert_close(target(checkerboard), 0.5 + (checkerboard - 0.5) * alpha)
        assert alpha < 1
    for target, values in zip(targets, steps):
        if not values["fading"]:
            torch.testing.assert_close(target(checkerboard), checkerboard)


def test_steps_within_the_warm_up_are_warned_of(tmp_path, small_pairs):
    """--recipe progan-spots (a 5000-step warm-up) with --steps 3 trained MAE alone, recorded under the recipe."""
    with pytest.warns(UserWarning, match="steps 3 end within the ProGAN's MAE warm-up of 4 steps"):
        train(_config(warmup_steps=4, steps=3), [small_pairs], tmp_path / "warm.pgsr")


def test_a_generator_that_has_not_grown_to_full_size_is_said(tmp_path, small_pairs):
    """--model progan with its defaults grows to 4 of 256 px in 2000 steps: the model, applied to whole frames
    at a scale it never saw, said so only in its description."""
    from napari_pgsr.inference import Restorer

    result = train(_config(steps=4, phase_images=1000), [small_pairs], tmp_path / "small.pgsr")
    assert "the generator has grown to 4 of 16 px" in result.note
    with pytest.warns(UserWarning, match="this ProGAN grew to 4 of 16 px only"):
        Restorer(load_model(result.path), device="cpu")
    grown = train(_config(start_resolution=16, steps=2), [small_pairs], tmp_path / "grown.pgsr")
    assert "grown to" not in (grown.note or "")


def test_a_fade_weight_outside_0_to_1_is_refused():
    """A model file with alpha -0.5 or 1.5 would have extrapolated between the faded paths."""
    for alpha in (-0.5, 1.5):
        with pytest.raises(ValueError, match=rf"alpha \(the fade-in weight\) must be in \[0, 1\], got {alpha}"):
            ProGANGenerator(1, 32, 0.05, resolution=16, alpha=alpha)
    generator = ProGANGenerator(1, 32, 0.05, resolution=16, alpha=0.25)
    with pytest.raises(ValueError, match="must be in"):
        generator.alpha = 2.0
    assert generator.alpha == 0.25
