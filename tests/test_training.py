import json
import math

import numpy as np
import pytest
import torch

from napari_pgsr.modelfile import load_model
from napari_pgsr.pairs import split_alternating
from napari_pgsr.simulate import simulate_movie
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.events import EventKind
from napari_pgsr.training.loop import train
from napari_pgsr.training.losses import pixel_loss

TINY = dict(depth=1, width=4, patch=32, batch=4, validation_every=2, checkpoint_every=2, validation_patches=4,
            device="cpu")


@pytest.fixture(scope="module")
def pairs():
    return split_alternating(simulate_movie("ap2", 48, (64, 64), seed=0).movie, name="sim")


def _weights(path):
    return load_model(path).network.state_dict()


@pytest.mark.parametrize("values, message", [
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"steps": None, "minutes": -1.0}, "minutes must be > 0, got -1.0"),
    ({"offset_max": -5}, "offset_max must be >= 0, got -5"),
    ({"model": "progan", "ema_decay": -0.5}, r"ema_decay must be in \[0, 1\), got -0.5"),
    ({"model": "progan", "lambda_gan": -1.0}, "lambda_gan must be >= 0, got -1.0"),
    ({"model": "progan", "warmup_steps": -3}, "warmup_steps must be >= 0, got -3"),
    ({"model": "progan", "phase_scale": -1.0}, "phase_scale must be > 0, got -1.0")])
def test_a_training_of_no_length_or_with_settings_out_of_range_is_refused(values, message):
    with pytest.raises(ValueError, match=f"invalid training config: .*{message}"):
        TrainConfig(**values)


def test_config_round_trips_through_yaml_and_json(tmp_path):
    config = TrainConfig(loss="mse", steps=7, context=2, offset=False, low_first=False)
    for name in ("c.yaml", "c.json"):
        assert TrainConfig.load(config.save(tmp_path / name)) == config
    (tmp_path / "bad.yaml").write_text("loss: mae\nwdith: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown training config keys \['wdith'\]"):
        TrainConfig.load(tmp_path / "bad.yaml")
    # YAML 1.1 reads 1e-3 (no dot) as text: it failed deep in training ('>' between str and int)
    (tmp_path / "hand.yaml").write_text("model: progan\nlr: 1e-3\nlambda_gan: 1e-2\nsteps: 5e3\nminutes: null\n")
    hand = TrainConfig.load(tmp_path / "hand.yaml")
    assert (hand.lr, hand.lambda_gan, hand.steps, hand.minutes) == (0.001, 0.01, 5000, None)
    assert isinstance(hand.steps, int) and isinstance(hand.lr, float)
    (tmp_path / "flags.json").write_text('{"amp": 0, "offset": 1}')  # JSON's 0 and 1 for booleans, as before
    assert (TrainConfig.load(tmp_path / "flags.json").amp, TrainConfig.load(tmp_path / "flags.json").offset) == (
        False, True)
    for text, message in (("steps: 2.5", "steps must be a whole number or null, got 2.5"),
                          ("amp: 'yes'", "amp must be true or false, got 'yes'"),
                          ("lr: fast", "lr must be a number, got 'fast'"),
                          ("loss: 1", "loss must be text, got 1"),
                          ("resolution_batches: 4:32", "resolution_batches must be text, got 272 .YAML reads 4:32 as "
                                                       "a number in base 60: quote it, '4:32'.")):
        (tmp_path / "bad.yaml").write_text(text + "\n")
        with pytest.raises(ValueError, match=f"bad.yaml: {message}"):
            TrainConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="l3")
    with pytest.raises(ValueError, match="patch 30 must be a multiple of 2\\*\\*depth = 4"):
        TrainConfig(patch=30)
    with pytest.raises(ValueError, match="gan_lr must be > 0, got 0.0; warmup_lr must be > 0, got -0.001"):
        TrainConfig(model="progan", gan_lr=0.0, warmup_lr=-1e-3)
    assert TrainConfig().offset_enabled and not TrainConfig(loss="bce").offset_enabled


def test_losses_against_hand_computed_values():
    prediction = torch.tensor([0.0, 1.0, 3.0])
    target = torch.tensor([1.0, 1.0, 1.0])
    assert pixel_loss("mae", prediction, prediction, target).item() == pytest.approx(1.0)
    assert pixel_loss("mse", prediction, prediction, target).item() == pytest.approx(5 / 3)
    logits = torch.tensor([0.0])
    assert pixel_loss("bce", logits, torch.sigmoid(logits), torch.tensor([2.0])).item() == pytest.approx(np.log(2))


def test_training_emits_events_and_writes_a_self_describing_model(tmp_path, pairs):
    events = []
    result = train(TrainConfig(steps=4, **TINY), [pairs], tmp_path / "m.pgsr", progress=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.STARTED and kinds[-1] is EventKind.FINISHED
    assert kinds.count(EventKind.STEP) == 4 and kinds.count(EventKind.VALIDATION) == 2
    assert kinds.count(EventKind.CHECKPOINT) == 1  # at step 2; step 4 is the final save
    step = next(e for e in events if e.kind is EventKind.STEP)
    assert step.values["patches_per_s"] > 0 and step.values["eta_s"] >= 0 and step.values["loss"] > 0
    model = load_model(result.path)
    meta = model.metadata
    assert meta["config"]["steps"] == 4 and meta["architecture"]["name"] == "unet"
    assert meta["history"]["step"] == 4 and len(meta["history"]["loss"]) == 4
    assert {"psnr", "ssim", "loss"} <= set(meta["history"]["validation"][-1])
    assert meta["provenance"]["names"] == ["sim"] and len(meta["provenance"]["first_pair_sha1"][0]) == 16
    assert meta["versions"]["torch"] == torch.__version__
    assert model.normalization.low_hi > model.normalization.low_lo
    json.dumps(meta)  # plain data only


def test_resume_in_the_middle_gives_the_same_weights_as_straight_through(tmp_path, pairs):
    config = TrainConfig(steps=6, **TINY)
    straight = train(config, [pairs], tmp_path / "straight.pgsr")
    seen = []
    stopped = train(config, [pairs], tmp_path / "resumed.pgsr", progress=seen.append,
                    should_stop=lambda: sum(e.kind is EventKind.STEP for e in seen) >= 3)
    assert stopped.reason == "stopped" and stopped.step == 3
    half = load_model(tmp_path / "resumed.pgsr")  # the stopped run left a usable model
    assert half.training_state["step"] == 3
    resumed = train(config, [pairs], tmp_path / "resumed.pgsr", resume=tmp_path / "resumed.pgsr")
    assert resumed.step == 6 and resumed.reason == "done"
    a, b = _weights(straight.path), _weights(resumed.path)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert load_model(resumed.path).metadata["history"]["loss"] == pytest.approx(straight.history["loss"])
    assert load_model(resumed.path).training_state["validation_refs"] == half.training_state["validation_refs"]


def test_resume_refuses_other_data(tmp_path, pairs):
    train(TrainConfig(steps=2, **TINY), [pairs], tmp_path / "m.pgsr")
    other = split_alternating(simulate_movie("ap2", 48, (64, 64), seed=9).movie, name="other")
    with pytest.raises(ValueError, match=r"trained on \['sim'\].*differ"):
        train(TrainConfig(steps=4, **TINY), [other], tmp_path / "m.pgsr", resume=tmp_path / "m.pgsr")


def test_loss_decreases_on_a_learnable_problem(tmp_path, pairs):
    config = TrainConfig(steps=60, lr=3e-3, offset=False, **{**TINY, "validation_every": 60, "width": 8})
    result = train(config, [pairs], tmp_path / "m.pgsr")
    losses = result.history["loss"]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_context_and_bce_models_train(tmp_path, pairs):
    result = train(TrainConfig(steps=2, context=2, loss="bce", **TINY), [pairs], tmp_path / "c.pgsr")
    model = load_model(result.path)
    assert model.context == 2 and model.network.in_channels == 5
    assert model.metadata["architecture"]["output_activation"] == "sigmoid"


def test_minutes_budget_stops_by_time(tmp_path, pairs):
    result = train(TrainConfig(steps=None, minutes=0.02, **TINY), [pairs], tmp_path / "t.pgsr")
    assert result.reason == "time" and result.step > 0


def test_resume_refuses_changed_settings_and_extends_the_cosine_schedule(tmp_path, pairs):
    train(TrainConfig(steps=4, **TINY), [pairs], tmp_path / "m.pgsr")
    with pytest.raises(ValueError, match=r"m.pgsr was trained with other settings \(width: 4 -> 8\)"):
        train(TrainConfig(steps=8, **{**TINY, "width": 8}), [pairs], tmp_path / "m.pgsr", resume=tmp_path / "m.pgsr")
    events = []
    train(TrainConfig(steps=8, **TINY), [pairs], tmp_path / "m.pgsr", resume=tmp_path / "m.pgsr",
          progress=events.append)
    rates = [e.values["lr"] for e in events if e.kind is EventKind.STEP]
    assert len(rates) == 4 and all(a >= b for a, b in zip(rates, rates[1:]))  # still decaying, never back up


def test_recipes_are_valid_configs_and_unknown_names_are_listed():
    from napari_pgsr.training.recipes import RECIPE_SCOPES, RECIPES, recipe_config

    assert set(RECIPE_SCOPES) == set(RECIPES)  # each recipe says what it was measured on

    for name, values in RECIPES.items():
        config = recipe_config(name, device="cpu")
        assert all(getattr(config, key) == value for key, value in values.items()) and config.device == "cpu"
    config = recipe_config("progan-spots", steps=10)
    assert config.steps == 10 and not config.offset_enabled and config.critic_noise
    with pytest.raises(ValueError, match="unknown recipe 'fast'; recipes: progan-spots"):
        recipe_config("fast")


def test_a_timed_run_resumed_for_a_number_of_steps_decays_to_the_end_of_that_cosine(tmp_path, pairs):
    tiny = {**TINY, "validation_every": 1000}
    timed = train(TrainConfig(steps=None, minutes=0.003, **tiny), [pairs], tmp_path / "t.pgsr")
    assert timed.reason == "time" and timed.step >= 1
    events, total = [], timed.step + 6
    train(TrainConfig(steps=total, **tiny), [pairs], tmp_path / "t.pgsr", resume=tmp_path / "t.pgsr",
          progress=events.append)
    rates = [event.values["lr"] for event in events if event.kind is EventKind.STEP]
    lr = TrainConfig.lr
    floor = lr / 50  # the cosine's end
    expected = [floor + (lr - floor) * (1 + math.cos(math.pi * s / total)) / 2 for s in range(timed.step + 1,
                                                                                                total + 1)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert rates[-1] == pytest.approx(floor)


def test_a_finished_run_resumed_for_more_steps_follows_the_longer_cosine(tmp_path, pairs):
    """`--steps 10`, then `--steps 20 --resume`: steps 11-20 ran at the first cosine's floor, lr / 50."""
    tiny = {**TINY, "validation_every": 1000}
    train(TrainConfig(steps=10, **tiny), [pairs], tmp_path / "m.pgsr")
    events = []
    train(TrainConfig(steps=20, **tiny), [pairs], tmp_path / "m.pgsr", resume=tmp_path / "m.pgsr",
          progress=events.append)
    resumed = [event.values["lr"] for event in events if event.kind is EventKind.STEP]
    whole = []
    train(TrainConfig(steps=20, **tiny), [pairs], tmp_path / "whole.pgsr", progress=whole.append)
    uninterrupted = [event.values["lr"] for event in whole if event.kind is EventKind.STEP][10:]
    np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-6)
    assert resumed[0] > 10 * TrainConfig.lr / 50


def test_the_random_offset_is_for_camera_counts_unless_asked_for(pairs):
    """Offsets of up to 200 camera units on a float movie scaled 0..1 left the frames as noise to the network."""
    from napari_pgsr.training.loop import _offset_max

    assert _offset_max(TrainConfig(steps=1), [pairs]) == 200  # uint16 counts
    scaled = split_alternating(simulate_movie("ap2", 48, (64, 64), seed=0).movie.astype(np.float32) / 4000,
                               name="scaled")
    eight_bit = split_alternating((simulate_movie("ap2", 48, (64, 64), seed=0).movie // 16).astype(np.uint8),
                                  name="8-bit")
    for given, kind in ((scaled, "float32"), (eight_bit, "uint8")):
        with pytest.warns(RuntimeWarning, match=rf"the random offset \(0..200 camera units\) is for raw camera "
                                                rf"counts; these frames hold {kind} values: training without it"):
            assert _offset_max(TrainConfig(steps=1), [given]) == 0
        assert _offset_max(TrainConfig(steps=1, offset=True), [given]) == 200  # asked for
        assert _offset_max(TrainConfig(steps=1, loss="mse"), [given]) == 0


def test_resuming_with_an_offset_the_checkpoint_never_had_is_refused(tmp_path):
    """On a float movie the default adds no offset; --offset on resuming passed the settings check (both read
    as 'on') and added one the checkpoint never had."""
    scaled = split_alternating(simulate_movie("ap2", 48, (64, 64), seed=0).movie.astype(np.float32) / 4000,
                               name="scaled")
    with pytest.warns(RuntimeWarning, match="training without it"):
        train(TrainConfig(steps=2, **TINY), [scaled], tmp_path / "float.pgsr")
    assert load_model(tmp_path / "float.pgsr").metadata["history"]["offset_applied"] == 0
    with pytest.raises(ValueError, match=r"float.pgsr was trained with a random offset of 0..0 camera units on "
                                         r"these data; the settings given now add 0..200"):
        train(TrainConfig(steps=4, offset=True, **TINY), [scaled], tmp_path / "more.pgsr",
              resume=tmp_path / "float.pgsr")


def test_a_unet_whose_weights_go_to_nan_stops_without_writing_them(tmp_path, pairs):
    """At lr 100 the losses were inf for 30 steps, and the run ended 'done' with a model restoring NaN."""
    from napari_pgsr.training.loop import TrainingDiverged

    config = TrainConfig(steps=30, **{**TINY, "checkpoint_every": 1, "validation_every": 2}, lr=100.0, loss="mse")
    with pytest.raises(TrainingDiverged, match=r"^training diverged: (the validation loss is (nan|inf)|the weights "
                                               r"are not finite) at step \d+ \(a learning rate of 100 too high\?\); "
                                               r".*blown.pgsr holds the checkpoint of step \d+$"):
        train(config, [pairs], tmp_path / "blown.pgsr")
    kept = load_model(tmp_path / "blown.pgsr")
    assert all(torch.isfinite(value).all() for value in kept.network.state_dict().values())
    with pytest.raises(TrainingDiverged, match=r"at step 2 .*; no model file was written$"):
        train(TrainConfig(steps=30, **{**TINY, "checkpoint_every": 1000}, lr=1e6, loss="mse"), [pairs],
              tmp_path / "none.pgsr")
    assert not (tmp_path / "none.pgsr").exists()


def test_a_gpu_that_is_not_there_is_named(monkeypatch):
    from napari_pgsr import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="'cuda:2' asked for, but torch sees 2 CUDA GPU\\(s\\): cuda:0 to cuda:1"):
        devices.pick_device("cuda:2")


def test_cpu_bf16_autocasts_only_where_the_cpu_computes_bf16(tmp_path, pairs, monkeypatch):
    from napari_pgsr import devices

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
        with devices.autocast(cpu, True, training=True, cpu_bf16=True):
            product = torch.ones(2, 2) @ torch.ones(2, 2)
        assert product.dtype == (torch.bfloat16 if native else torch.float32)
        with devices.autocast(cpu, True, training=True):  # not asked for: fp32
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    config = TrainConfig(steps=40, lr=3e-3, offset=False, cpu_bf16=True, **{**TINY, "validation_every": 40,
                                                                             "width": 8})
    losses = train(config, [pairs], tmp_path / "b.pgsr").history["loss"]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert load_model(tmp_path / "b.pgsr").metadata["config"]["cpu_bf16"]
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="cpu_bf16 ignored"):
        train(TrainConfig(steps=2, offset=False, cpu_bf16=True, **TINY), [pairs], tmp_path / "c.pgsr")



def test_validation_over_several_batches_and_with_a_target_transform(pairs):
    """validate's per-image loop reused the name of its `target` argument: the second batch called an image,
    so every training with the default 64 validation patches (four batches) stopped at its first validation."""
    from napari_pgsr.data import PatchDataset
    from napari_pgsr.models.unet import UNet
    from napari_pgsr.training.loop import validate

    val = PatchDataset(pairs, patch_size=16, split="validation", length=10)
    network = UNet(depth=1, width=4)
    plain = validate(network, val, "mae", torch.device("cpu"), batch=4)  # three batches
    same = validate(network, val, "mae", torch.device("cpu"), batch=4, target=lambda t: t)
    assert plain == same and np.isfinite(plain["psnr"])
    shifted = validate(network, val, "mae", torch.device("cpu"), batch=4, target=lambda t: t + 0.5)
    assert shifted["loss"] != plain["loss"]
