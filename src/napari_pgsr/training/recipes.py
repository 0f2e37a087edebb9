"""Named training settings that were measured to work, for the command line, the Train widget and scripts.

A recipe is a starting point: any setting given beside it wins."""

from __future__ import annotations

from .config import TrainConfig

RECIPES: dict[str, dict] = {
    # The ProGAN settings that kept the physics on simulated AP2 movies: a long MAE warm-up, then the joint
    # loss at lambda 0.01 with 5 critic updates per step, the 180-degree average (no image shift) and a
    # critic that sees camera noise (no invented noise). Two seeds trained on AP2 drew AP2 spots within 5% of
    # the truth with spot precision not below the same seed's U-Net (benchmarks/results/
    # quality_recipe_gpu_h100.md); on beads and single molecules, not seen in training, they drew spots the
    # wrong width and invented some (with the critic-noise fit of 1c472d8, one CPU run to +1400: spikes a third
    # to a half of the PSF wide, gan_phase_ap2_new_noise_fit_cpu.md); trained on single molecules it found a
    # few spots that were not there and lost or misplaced real ones (one seed drew them on its 2 px up-sampling
    # lattice; quality_recipe_sm_gpu_h100.md), where 30% of the simulated molecules blink between a pair's frames:
    # on pairs that agree three CPU runs kept their width to +2200, two invented none and one about 1 in 140
    # against the U-Nets' none (gan_phase_sm_consistent_pairs_cpu.md); trained on beads it drew them 29% too
    # narrow or 2.5x too wide (with the critic-noise fit of before 1c472d8; both runs blew up), and with the
    # fit since then two CPU runs (seeds 0 and 1) drew them 73.9 / 73.4 nm wide with precision 1.000 / 0.999,
    # as the U-Nets (74.2-74.3 nm, 0.994-0.995; quality_recipe_beads_gpu_h100.md). Trained on all three kinds
    # at once (one CPU run) it held on beads only: at no checkpoint to +2800 did AP2 and single molecules
    # both hold (AP2 6% too wide at +2200, single molecules invented at +2800; gan_phase_mixed_kinds_cpu.md).
    # About 6 minutes on one H100.
    "progan-spots": dict(model="progan", width=0.125, patch=64, start_resolution=64, batch=16, steps=7200,
                         warmup_steps=5000, gan_mode="joint", lambda_gan=0.01, critic_steps=5,
                         rot180_average=True, critic_noise=True, critic_noise_shape="gamma", offset=False),
}

# What each recipe was measured on, told to whoever picks it (command line, Train widget)
RECIPE_SCOPES: dict[str, str] = {
    "progan-spots": "measured to work on simulated AP2 and beads movies only, each trained and tested on its "
                    "own kind (AP2: two GPU runs; beads: two CPU runs); trained on AP2 it drew beads and single "
                    "molecules the wrong width (up to 62% too wide; with the current camera-noise fit, one CPU "
                    "run, as spikes a third to a half as wide) and found single molecules that were not there, "
                    "trained on single molecules it found spots that were not there (precision 0.96 against the "
                    "U-Net's 1.00) and placed them 2-3.5x less accurately (its simulated "
                    "molecules blink between a pair's two frames; with pairs that agree, of three CPU runs two "
                    "invented none and one about 1 in 140), and trained on beads on a GPU with an earlier "
                    "camera-noise fit it drew them 29% too narrow or 2.5x too wide; trained on all three kinds at "
                    "once (one CPU run) it held on beads only; so check the restored spots on "
                    "labelled frames of your sample (Spots widget), or use the U-Net for other kinds of sample",
}


def recipe_values(name: str) -> dict:
    """The settings of recipe `name` and its name (`recipe`, recorded in the model file)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return {**RECIPES[name], "recipe": name}


def recipe_config(name: str, **changes) -> TrainConfig:
    """The config of recipe `name`, with `changes` (e.g. device, steps) on top."""
    return TrainConfig.from_dict({**recipe_values(name), **changes})
