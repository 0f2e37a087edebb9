"""'Train' dock widget: gather settings, run the core training loop in a worker, show progress, loss and a
preview; Stop leaves a usable model file, Resume continues it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, SpinBox, create_widget)
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import evented

from ..devices import cpu_has_native_bf16
from ..io import read_movie
from ..models import DISPLAY_NAMES
from ..pairs import Pairs, split_alternating
from ..training.config import GAN_MODES, LOSSES, NOISE_SHAPES, TrainConfig
from ..training.events import EventKind, TrainingEvent
from ..training.recipes import RECIPE_SCOPES, RECIPES, recipe_values
from ._loss_plot import LossPlot
from ._train_jobs import ResumedSettings, StoppedBeforeTraining, pairs_from_layers, training_job
from ._workers import in_own_thread, start


class RunState(Enum):
    """Where a training run stands."""

    IDLE = "idle"
    TRAINING = "training"
    STOPPING = "stopping"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


@evented
@dataclass
class RunStatus:
    """Observable state of the current run (the widget's views follow its events)."""

    state: RunState = RunState.IDLE
    step: int = 0
    total: int = 0
    message: str = ""
    model_path: str = ""


def _devices() -> list[str]:
    """Device choices. Imports torch and the training modules now, on the GUI thread when the widget opens
    (not when napari starts): a first import inside the worker holds the interpreter for a moment and
    would make the viewer stutter."""
    import torch._dynamo  # noqa: F401 - torch.optim imports it on first use (about a second)

    from ..devices import available_devices
    from ..training import loop  # noqa: F401

    return ["auto", *available_devices()]


class TrainWidget(Container):
    """Train a restoration model on exposure pairs (layers or movie files) without blocking napari."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer, self._worker, self._stop = viewer, None, threading.Event()
        self._preview = None  # the layer showing the preview
        self._preview_scaled = False
        self.status = RunStatus()
        defaults = TrainConfig()
        self.low = create_widget(label="Low layer", annotation="napari.layers.Image")
        self.high = create_widget(label="High layer", annotation="napari.layers.Image")
        self.movies = FileEdit(label="or movie files", mode="rm", filter="*.tif *.tiff")
        self.recipe = ComboBox(label="Recipe", choices=[("(own settings)", ""), *((name, name) for name in RECIPES)],
                               tooltip=self._RECIPE_TIP)
        self.model = ComboBox(label="Model", choices=[(name, key) for key, name in DISPLAY_NAMES.items()])
        self.loss = ComboBox(label="Loss", choices=list(LOSSES), value=defaults.loss)
        self.offset = CheckBox(text="random offset 0..200 (MAE)", value=True)
        self.channels = SpinBox(label="Width", value=defaults.width, min=4, max=256)
        self.patch = SpinBox(label="Patch", value=defaults.patch, min=16, max=1024, step=16)
        self.batch = SpinBox(label="Batch", value=defaults.batch, min=1, max=512)
        self.steps = SpinBox(label="Steps", value=defaults.steps, min=1, max=10_000_000)
        self.minutes = FloatSpinBox(label="or minutes", value=0.0, min=0.0, max=10_000.0,
                                    tooltip="0: train for the number of steps")
        self.context = SpinBox(label="Context frames", value=0, min=0, max=8)
        self.cpu_bf16 = CheckBox(text="bf16 on the CPU", value=False, enabled=cpu_has_native_bf16(),
                                 tooltip="bf16 autocast on a CPU that computes bf16 in hardware (AMX, "
                                         "AVX512-BF16): 1.9-2.9x faster training on an AMX CPU; greyed out "
                                         "on other CPUs")
        # ProGAN settings, shown when it is the chosen model
        self.gan_width = FloatSpinBox(label="GAN width", value=0.25, min=0.01, max=4.0, step=0.05,
                                      tooltip="multiplier of Karras's channels (1.0: 512 ... 64; critic 23 M)")
        self.gan_width.native.setDecimals(3)  # 0.125: 64 channels at 4-32 px
        self.gan_mode = ComboBox(label="GAN loss", choices=list(GAN_MODES), value=defaults.gan_mode,
                                 tooltip="joint: MAE + lambda * adversarial (SRGAN); gan: adversarial only")
        self.lambda_gan = FloatSpinBox(label="lambda GAN", value=defaults.lambda_gan, min=0.0, max=10.0, step=1e-3)
        self.start_resolution = ComboBox(label="Start resolution", choices=[4, 8, 16, 32, 64, 128, 256], value=4)
        self.phase_images = SpinBox(label="Images per phase", value=20_000, min=1, max=10_000_000,
                                    tooltip="images per fade-in and per stabilisation (Karras: 600,000)")
        self.warmup_steps = SpinBox(label="MAE warm-up steps", value=defaults.warmup_steps, min=0, max=10_000_000,
                                    tooltip="generator steps with MAE alone before the critic joins")
        self.critic_steps = SpinBox(label="Critic steps", value=defaults.critic_steps, min=1, max=100,
                                    tooltip="critic updates per generator update")
        self.rot180_average = CheckBox(text="rot180 average (no image shift)", value=defaults.rot180_average,
                                       tooltip="average G(x) with its answer for x turned by 180 degrees: the "
                                               "generator cannot shift the image (2x generator cost)")
        self.critic_noise = CheckBox(text="critic sees camera noise", value=defaults.critic_noise,
                                     tooltip="add camera noise (fitted from the training frames) to the generator's "
                                             "output before the critic judges it, so inventing noise earns nothing; "
                                             "turns the random offset off")
        self.critic_noise_shape = ComboBox(label="Critic noise shape", choices=list(NOISE_SHAPES),
                                           value=defaults.critic_noise_shape,
                                           tooltip="gamma: skewed like low-light camera noise; normal: Gaussian")
        self.warmup_lr = FloatSpinBox(label="Warm-up learning rate", value=defaults.warmup_lr, min=1e-5, max=1.0,
                                      step=1e-4, tooltip="Adam rate of the MAE warm-up (cosine decay)")
        self.warmup_lr.native.setDecimals(5)
        self.gan_lr = FloatSpinBox(label="GAN learning rate", value=defaults.gan_lr, min=1e-5, max=1.0, step=1e-4,
                                   tooltip="Adam rate of generator and critic once the critic joins (Karras: 1e-3)")
        self.gan_lr.native.setDecimals(5)
        self.divergence_factor = FloatSpinBox(
            label="Stop when loss exceeds (x best)", value=defaults.divergence_factor, min=0.0, max=1000.0, step=0.5,
            tooltip="stop a GAN that blew up: when a validation loss exceeds this many times the best so far at "
                    "the same resolution, keep the last validated state (0: never stop; factors up to 1 would "
                    "stop any run, so the box skips them)")
        self._last_divergence_factor = defaults.divergence_factor
        self.divergence_factor.changed.connect(self._skip_factors_up_to_one)
        self.critic_noise.changed.connect(self._critic_noise_needs_no_offset)
        self.offset.changed.connect(self._offset_excludes_critic_noise)
        self._gan_widgets = [self.gan_width, self.gan_mode, self.lambda_gan, self.start_resolution,
                             self.phase_images, self.warmup_steps, self.warmup_lr, self.critic_steps,
                             self.gan_lr, self.rot180_average, self.critic_noise, self.critic_noise_shape,
                             self.divergence_factor]
        self.device = ComboBox(label="Device", choices=_devices(), value="auto")
        self.output = FileEdit(label="Model file", mode="w", filter="*.pgsr", value=Path.home() / "model.pgsr")
        self.preview_every = SpinBox(label="Preview every", value=50, min=0, max=100_000,
                                     tooltip="steps between previews of the first validation frame (0: none)")
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.resume_button = PushButton(text="Resume")
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.info = Label(label="Status", value="idle")
        self.plot = LossPlot()
        self.extend([self.low, self.high, self.movies, self.recipe, self.model, self.loss, self.offset, self.channels,
                     *self._gan_widgets, self.patch, self.batch, self.steps, self.minutes, self.context,
                     self.cpu_bf16, self.device,
                     self.output,
                     self.preview_every, self.train_button, self.stop_button, self.resume_button, self.progress,
                     self.info])
        self.native.layout().addWidget(self.plot.canvas)
        self.train_button.changed.connect(lambda: self.run(resume=False))
        self.resume_button.changed.connect(lambda: self.run(resume=True))
        self.stop_button.changed.connect(self.stop)
        self.model.changed.connect(self._show_model_settings)
        self.loss.changed.connect(self._show_model_settings)
        self.recipe.changed.connect(self.apply_recipe)
        self._applying_recipe = False
        for widget in (self.model, self.loss, self.offset, self.channels, *self._gan_widgets, self.patch,
                       self.batch, self.steps, self.minutes, self.context, self.cpu_bf16):
            widget.changed.connect(self._settings_edited)
        self._show_model_settings()
        self.status.events.state.connect(self._on_state)
        self._pick_pair_layers()
        viewer.layers.events.inserted.connect(self._pick_pair_layers)
        # a closed widget must stop following the layer list (its Qt parts are gone)
        self.native.destroyed.connect(lambda *_: viewer.layers.events.inserted.disconnect(self._pick_pair_layers))

    def _pick_pair_layers(self, event=None):
        """Default to the newest '<name> low' / '<name> high' layers of the Exposure pairs widget; later, only a
        new pair (just split) replaces what is chosen, not any layer added (points, a restoration)."""
        added = getattr(event, "value", None)
        if added is not None and not added.name.endswith((" low", " high")):
            return
        for layer in reversed(self._viewer.layers):
            if layer.name.endswith(" low") and layer.name[:-4] + " high" in self._viewer.layers:
                self.low.reset_choices()
                self.high.reset_choices()
                self.low.value, self.high.value = layer, self._viewer.layers[layer.name[:-4] + " high"]
                return

    def _show_model_settings(self, *_) -> None:
        """U-Net: loss and channel width; ProGAN: width multiplier, GAN loss, schedule; patch = final size."""
        progan = self.model.value == "progan"
        for widget in self._gan_widgets:
            widget.visible = progan
        self.channels.visible = self.loss.visible = not progan
        self.offset.enabled = progan or self.loss.value == "mae"  # MSE and BCE train without it
        self.patch.label = "Final resolution" if progan else "Patch"
        if progan and self.patch.value & (self.patch.value - 1):
            self.patch.value = 64  # a power of two

    def apply_recipe(self, name: str) -> None:
        """Show recipe `name`'s settings in the widgets, the ones it does not name at their defaults, as the
        command line's --recipe does (the model first: it decides which are shown)."""
        self.recipe.tooltip = RECIPE_SCOPES.get(name, self._RECIPE_TIP)
        if not name:
            return
        show_info(f"Recipe {name}: {RECIPE_SCOPES[name]}")
        values, defaults = recipe_values(name), TrainConfig(model=recipe_values(name)["model"]).to_dict()
        self._applying_recipe = True
        try:
            self.model.value = values.pop("model")
            self.minutes.value = 0.0
            for key in sorted(self._CONFIG_WIDGETS | set(values)):
                widget, value = self._recipe_widget(key), values.get(key, defaults.get(key))
                if widget is not None and value is not None:
                    widget.value = value
        finally:
            self._applying_recipe = False

    def _settings_edited(self, *_) -> None:
        """A setting changed by hand: what is shown is no longer the recipe."""
        if not self._applying_recipe:
            self.recipe.value = ""

    def _recipe_widget(self, key: str):
        """The widget that shows config field `key` (None for fields the widget leaves at their default)."""
        if key == "width":
            return self.gan_width if self.model.value == "progan" else self.channels
        return getattr(self, key, None) if key in self._CONFIG_WIDGETS else None

    _RECIPE_TIP = "fill in settings measured to work (README: recipes); change any after"

    # config fields with a widget of the same name
    # (not cpu_bf16: like the device, a choice about this computer that a recipe leaves alone)
    _CONFIG_WIDGETS = frozenset({"loss", "offset", "patch", "batch", "steps", "context", "gan_mode",
                                 "lambda_gan", "start_resolution", "phase_images", "warmup_steps", "warmup_lr",
                                 "critic_steps", "rot180_average", "critic_noise", "critic_noise_shape", "gan_lr",
                                 "divergence_factor"})

    def _critic_noise_needs_no_offset(self, on: bool) -> None:
        """The fitted noise model holds for the camera's own levels, not for offset ones."""
        if on:
            self.offset.value = False

    def _skip_factors_up_to_one(self, value: float) -> None:
        """Factors in (0, 1] are refused by the config: stepping down lands on 0 (never stop), up on 1.5."""
        if 0 < value <= 1:
            self.divergence_factor.value = 0.0 if value < self._last_divergence_factor else 1.5
            return
        self._last_divergence_factor = value

    def _offset_excludes_critic_noise(self, on: bool) -> None:
        if on:
            self.critic_noise.value = False

    def config(self) -> TrainConfig:
        """The settings shown, as the core's typed config."""
        minutes = self.minutes.value or None
        progan = self.model.value == "progan"
        gan = {"gan_mode": self.gan_mode.value, "lambda_gan": self.lambda_gan.value,
               "start_resolution": self.start_resolution.value, "phase_images": self.phase_images.value,
               "width": self.gan_width.value, "loss": "mae", "warmup_steps": self.warmup_steps.value,
               "warmup_lr": self.warmup_lr.value, "critic_steps": self.critic_steps.value,
               "rot180_average": self.rot180_average.value, "critic_noise": self.critic_noise.value,
               "critic_noise_shape": self.critic_noise_shape.value, "gan_lr": self.gan_lr.value,
               "divergence_factor": self.divergence_factor.value} if progan else {}
        # the box is the MAE's (as on the command line, MSE and BCE train without the offset); ticked, it is
        # the command line's default: on for raw camera counts
        offset = None if self.offset.value or not (progan or self.loss.value == "mae") else False
        return TrainConfig(**{"model": self.model.value, "loss": self.loss.value, "offset": offset,
                              "width": self.channels.value, "patch": self.patch.value, "batch": self.batch.value,
                              "steps": None if minutes else self.steps.value, "minutes": minutes,
                              "context": self.context.value, "device": self.device.value,
                              "recipe": self.recipe.value,  # "" once a setting is edited by hand
                              "cpu_bf16": self.cpu_bf16.value and self.cpu_bf16.enabled,
                              "validation_every": max(1, min(100, self.steps.value // 10)), **gan})

    def length_of_training(self) -> TrainConfig:
        """What a resumed run takes from this widget: the steps or minutes, the device and bf16 (the rest is
        the model file's, read in the worker)."""
        minutes = self.minutes.value or None
        return TrainConfig(steps=None if minutes else self.steps.value, minutes=minutes, device=self.device.value,
                           cpu_bf16=self.cpu_bf16.value and self.cpu_bf16.enabled)

    def _show_resumed(self, settings: ResumedSettings) -> None:
        """Set the widgets to the settings the resumed model was trained with, and plot its curves so far."""
        config = settings.config
        self.plot.show_history(settings.history)
        self._applying_recipe = True  # (shown, not edited: the recipe box is left as it is)
        try:
            self.model.value = config.model
            for key in sorted((self._CONFIG_WIDGETS | {"width"}) - {"steps"}):
                widget = self._recipe_widget(key)
                try:
                    if widget is not None:
                        widget.value = config.offset_enabled if key == "offset" else getattr(config, key)
                except ValueError:  # beyond the widget's range (set on the command line): trained as stored
                    pass
        finally:
            self._applying_recipe = False
        show_info(f"Train: resuming {settings.path.name} with the settings it was trained with ({config.model}, "
                  f"width {config.width:g}, patch {config.patch}, batch {config.batch}, lr {config.lr:g}); the "
                  "steps, minutes and device are this widget's")

    def training_pairs(self) -> Callable[[], list[Pairs]]:
        """What makes the pairs, in the worker: from the chosen movie files, else the chosen low/high layers."""
        files = [Path(p) for p in (self.movies.value or []) if str(p) not in ("", ".")]
        if files:
            missing = [str(p) for p in files if not p.exists()]
            if missing:
                raise FileNotFoundError(f"movie file not found: {', '.join(missing)}")
            return lambda: [split_alternating(read_movie(p)) for p in files]
        low, high = self.low.value, self.high.value
        if low is None or high is None:
            raise ValueError("choose a low and a high layer (Exposure pairs widget) or movie files")
        return lambda: [pairs_from_layers(low, high)]

    def run(self, resume: bool = False) -> None:
        """Start (or resume) training in a worker."""
        if self.status.state in (RunState.TRAINING, RunState.STOPPING):
            return
        output = Path(self.output.value)
        try:
            if resume and not output.exists():
                raise ValueError(f"nothing to resume: {output} does not exist")
            if not resume and output.exists():  # (a second click on Train replaced the trained model)
                raise ValueError(f"{output} exists: Resume continues it; to train a new model, choose another "
                                 "model file")
            config = self.length_of_training() if resume else self.config()
            make_pairs = self.training_pairs()
        except (ValueError, FileNotFoundError) as err:
            show_error(f"Train: {err}")
            return
        self._preview_scaled = False
        self._stop.clear()
        self.plot.clear()
        self.status.step, self.status.total = 0, config.steps or 0
        self.status.model_path = str(output)
        self.status.state = RunState.TRAINING
        # in a thread of its own: closing napari mid-run stops it like Stop does, and the model is saved
        self._worker = start(in_own_thread, training_job, config, make_pairs, output, output if resume else None,
                             self._stop, self.preview_every.value, on_yield=self._on_event,
                             on_return=self._on_result, on_finish=self._on_finish, context="Train", computes=True,
                             owner=self.native, on_abort=self._stop.set)

    def stop(self) -> None:
        """Stop at the next step; the model is saved."""
        if self.status.state is RunState.TRAINING:
            self._stop.set()
            self.status.state = RunState.STOPPING

    def _on_event(self, event: TrainingEvent | ResumedSettings) -> None:
        if isinstance(event, ResumedSettings):
            self._show_resumed(event)
            return
        if isinstance(event, str):  # what the worker is doing before the first step
            self.info.value = event
            return
        values = event.values
        if event.kind is EventKind.STARTED:
            self.progress.max = event.total_steps or 1
            self.info.value = f"training on {values['device']}: {values['train_pairs']} pairs"
        elif event.kind is EventKind.STEP:
            self.status.step = event.step
            self.progress.value = min(event.step, self.progress.max) if event.total_steps else 0
            eta = _clock(values["eta_s"])
            self.info.value = (f"step {event.step}: loss {values['loss']:.4f}, {values['patches_per_s']:.0f} "
                               f"patches/s, ETA {eta}")
            self.plot.add("training", event.step, values["loss"])
        elif event.kind is EventKind.VALIDATION:
            self.plot.add("validation", event.step, values["loss"])
        elif event.kind is EventKind.PREVIEW:
            layer = self._preview_layer(values["image"])
            if not self._preview_scaled:  # once: each contrast change costs a redraw
                low, high = np.percentile(values["image"], (0.1, 99.9))
                layer.contrast_limits = (float(low), float(max(high, low + 1e-6)))
                self._preview_scaled = True

    def _preview_layer(self, image: np.ndarray):
        name, layers = "training preview", self._viewer.layers
        if self._preview not in layers and name in layers and isinstance(layers[name], napari.layers.Image):
            self._preview = layers[name]  # an earlier run's
        if self._preview in layers:
            self._preview.data = image
            return self._preview
        scale = self.low.value.scale[-2:] if self.low.value is not None else (1, 1)
        self._preview = self._viewer.add_image(image, name=name, scale=scale, colormap="gray")
        return self._preview

    def _on_result(self, result) -> None:
        if isinstance(result, StoppedBeforeTraining):
            self.status.state = RunState.STOPPED
            show_info(f"Train: {result.message}")
            return
        self.status.state = RunState.STOPPED if result.reason == "stopped" else RunState.DONE
        show_info(f"Train: {result.reason} at step {result.step}; model written to {result.path}")
        if result.note:
            show_warning(f"Train: {result.note}")

    def _on_finish(self) -> None:
        self.plot.redraw()
        if self.status.state in (RunState.TRAINING, RunState.STOPPING):  # ended without a result: an error
            self.status.state = RunState.FAILED
        self._worker = None

    def _on_state(self, state: RunState) -> None:
        running = state in (RunState.TRAINING, RunState.STOPPING)
        self.train_button.enabled = self.resume_button.enabled = not running
        self.stop_button.enabled = state is RunState.TRAINING
        if not running:
            self.info.value = f"{state.value} at step {self.status.step}"


def _clock(seconds: float) -> str:
    """M:SS, or H:MM:SS from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
