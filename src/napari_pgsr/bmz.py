"""Export a trained model to the BioImage Model Zoo format (bioimage.io, model spec 0.5) and read it back.

The package is a zip that bioimage.io tools run without napari-pgsr: the weights as a PyTorch state dict
with the network's own source file (bioimageio.core, ilastik: needs only torch) and as TorchScript (deepImageJ
in Fiji, QuPath, the BioEngine: no Python), the model file's normalisation as fixed linear pre- and
post-processing (raw intensities in, raw intensities out), test tensors, a cover and a README. The whole
model-file metadata (architecture, config, normalisation, training history) travels in
`config.napari_pgsr`, so `import_bioimageio` rebuilds the same `ModelFile` from the package, loading the
state dict with `torch.load(weights_only=True)`.

Writing needs the `bioimageio` extra (`pip install "napari-pgsr[bioimageio]"`); reading back needs only
napari-pgsr.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml

from . import __version__
from .data import Normalization
from .atomic import atomic_path
from .modelfile import FORMAT, FORMAT_VERSION, ModelFile, check_format_version, rebuild
from .training.recipes import RECIPE_SCOPES

CONFIG_KEY = "napari_pgsr"
WEIGHTS_NAME = "weights.pt"
TORCHSCRIPT_NAME = "weights_torchscript.pt"
TEST_SIZE = 64
CITATIONS = {
    "unet": ("Weigert et al. (2018) Content-aware image restoration: pushing the limits of fluorescence "
             "microscopy. Nature Methods 15, 1090-1097", "10.1038/s41592-018-0216-7"),
    "progan": ("Karras et al. (2018) Progressive growing of GANs for improved quality, stability, and "
               "variation. ICLR", "10.48550/arXiv.1710.10196"),
}


def _missing_extra() -> ImportError:
    return ImportError("exporting to bioimage.io needs bioimageio.spec and bioimageio.core: "
                       "pip install 'napari-pgsr[bioimageio]'")


def low_frames(pairs, count: int) -> np.ndarray:
    """The first `count` low-exposure frames of `pairs` (count x Y x X)."""
    if len(pairs) < count:
        raise ValueError(f"{pairs.name}: {len(pairs)} exposure pairs, {count} needed for the test input")
    return np.stack([pairs.read_low(pair) for pair in range(count)]).astype(np.float32)


def movie_low_frames(data, count: int, *, alternating: bool | None, name: str,
                     low_first: bool | None = None) -> np.ndarray:
    """The first `count` low-exposure frames (count x Y x X) of a movie (array or `Movie`): of its exposure
    pairs when it alternates (`low_first` None: detected), else its first frames (a movie of low-exposure
    frames, or one frame). `alternating` None: whichever the movie is (an alternating movie's first frames
    gave a context model low, high, low as its neighbours)."""
    from .pairs import NoAlternation, split_alternating

    shape = tuple(data.shape)
    if alternating is None and len(shape) == 3 and shape[0] >= 4:
        try:
            return low_frames(split_alternating(data, low_first=low_first, name=name), count)
        except NoAlternation:
            pass  # a movie of low frames: its first frames
    elif alternating:
        return low_frames(split_alternating(data, low_first=low_first, name=name), count)
    frames = getattr(data, "frames", data)  # (a Movie reads frames from its file)
    frames = frames[None] if len(shape) == 2 else frames
    if len(shape) not in (2, 3) or len(frames) < count:
        raise ValueError(f"{name}: {count} frames (T x Y x X) needed for the test input, got shape {shape}")
    return np.asarray(frames[:count], np.float32)


def test_input(model: ModelFile, frames: np.ndarray | None = None, size: int = TEST_SIZE,
               seed: int = 0) -> np.ndarray:
    """1 x C x size x size raw low-exposure input for the package's test tensors: the centre crop of `frames`
    (T x Y x X consecutive low-exposure frames of the user's data, C of them for a context model), else of a
    simulated AP2 movie's, scaled so its percentiles are those the model was trained on."""
    channels = 2 * model.context + 1
    if frames is None:
        from .pairs import split_alternating
        from .simulate import simulate_movie
        frames = low_frames(split_alternating(simulate_movie("ap2", 2 * channels, (size, size),
                                                             seed=seed).movie, name="simulated AP2"), channels)
        # in the model's units: the simulated camera counts lay at 460-1300 x the training range of a model
        # of a float movie scaled 0..1
        norm = model.normalization
        lo, hi = np.percentile(frames, norm.percentiles)
        frames = norm.low_lo + (frames - lo) * np.float32((norm.low_hi - norm.low_lo) / max(hi - lo, 1e-6))
    frames = np.asarray(frames[:channels], np.float32)
    if frames.ndim != 3 or len(frames) < channels or min(frames.shape[1:]) < size:
        raise ValueError(f"test frames must be at least {channels} x {size} x {size} (T x Y x X), "
                         f"got shape {frames.shape}")
    top, left = (frames.shape[1] - size) // 2, (frames.shape[2] - size) // 2
    return np.ascontiguousarray(frames[None, :, top:top + size, left:left + size])


def _expected_output(network: torch.nn.Module, norm: Normalization, x: np.ndarray) -> np.ndarray:
    """What the packaged pipeline must give: normalise, network in fp32, activation, de-normalise."""
    with torch.inference_mode():
        raw = network(torch.from_numpy(norm.low(x)))
        return norm.high_inverse(network.activate(raw).numpy()).astype(np.float32)


def _torchscript(network: torch.nn.Module, example: torch.Tensor, step: int, path: Path) -> None:
    """Save `network` traced on `example` as TorchScript at `path`. A trace records the branches one input
    took: the network's padding to its pooling grid is left out, which the package allows (its sizes are
    multiples of `step`); checked on another allowed size and batch before saving."""
    with warnings.catch_warnings():
        # torch deprecates tracing in favour of torch.export, which the Java tools cannot run; and it warns
        # that the padding branch is taken as fixed
        warnings.filterwarnings("ignore", "`torch.jit.trace", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(network, example)
    other = torch.rand(2, example.shape[1], example.shape[2] + step, example.shape[3] + 2 * step,
                       generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = network(other), traced(other)
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"the TorchScript trace of the {type(network).__name__} differs from it on "
                           f"{tuple(other.shape)} inputs")
    torch.jit.save(traced, path)


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure
    figure = Figure(figsize=(4, 2), layout="constrained")
    for axes, image, title in zip(figure.subplots(1, 2), (x[0, x.shape[1] // 2], y[0, 0]),
                                  ("low exposure", "restored")):
        lo, hi = np.percentile(image, (1, 99.8))
        axes.imshow(image, cmap="magma", vmin=lo, vmax=hi)
        axes.set_title(title, fontsize=9)
        axes.set_xticks([]), axes.set_yticks([])
    figure.savefig(path, dpi=100)


def _readme(model: ModelFile) -> str:
    meta = model.metadata
    config = meta.get("config", {})
    norm = model.normalization
    lines = [f"# {model.describe()}", "",
             "Restores low-exposure fluorescence frames to the quality of the paired high exposure. Trained with "
             f"napari-pgsr {meta.get('versions', {}).get('napari_pgsr', '?')} on alternating low/high exposure movies.",
             "", "## Input and output", "",
             f"- input `low`: batch x {2 * model.context + 1} x Y x X float32, raw camera intensities of the low "
             f"exposure frame{'s t-%d..t+%d (channels)' % (model.context, model.context) if model.context else ''} "
             "(the normalisation fitted on the training data is the package's pre-processing: "
             f"(x - {norm.low_lo:g}) / {norm.low_hi - norm.low_lo:g});",
             "- output `restored`: batch x 1 x Y x X float32 in the high exposure's intensities "
             f"(post-processing: y * {norm.high_hi - norm.high_lo:g} + {norm.high_lo:g}).", "",
             "Frames larger than memory allows are restored in overlapping tiles by the running tool.", "",
             f"Weights: a PyTorch state dict (`{WEIGHTS_NAME}`, with the network's source) and TorchScript "
             f"(`{TORCHSCRIPT_NAME}`, traced: give it the sizes the package declares, as the tools do).", "",
             "## Training", "", f"- config: `{json.dumps(config, sort_keys=True)}`",
             f"- steps: {meta.get('history', {}).get('step', '?')}",
             f"- data: {', '.join(meta.get('provenance', {}).get('names', [])) or '?'}", "",
             "## Validation", "",
             "napari-pgsr validates its training on held-out pairs (PSNR, SSIM against the high exposure) and its "
             "restorations by what a microscopist measures: spots found, positions and PSF width against the raw "
             "high exposure. Restoration can narrow, widen, move, lose or invent spots: measure them on labelled "
             "frames of your own sample (napari-pgsr's Spots widget) before trusting them."]
    scope = RECIPE_SCOPES.get(config.get("recipe", ""))
    if scope:
        lines += ["", f"This model's recipe was {scope}."]
    return "\n".join(lines) + "\n"


def export_bioimageio(model: ModelFile, output: str | os.PathLike, *, name: str | None = None,
                      authors: list[str] | None = None, license: str = "CC-BY-4.0",
                      test_frames: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write `model` as a bioimage.io model package (zip) at `output`, atomically; returns the path. An
    existing `output` is kept unless `overwrite`."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; choose another name or allow overwriting")
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5 as spec
    except ImportError as err:
        raise _missing_extra() from err
    try:  # before the seconds of tracing, and in one line (pydantic's own message lists every SPDX id: 20 kB)
        spec.LicenseId(license)
    except Exception:
        raise ValueError(f"license {license!r} is not an SPDX licence identifier (such as CC-BY-4.0, MIT, "
                         "BSD-3-Clause or Apache-2.0; see https://spdx.org/licenses)") from None
    network = copy.deepcopy(model.network).float().cpu().eval()  # the caller's model stays as it is
    architecture = dict(network.architecture)
    kind = architecture.pop("name")
    step = 2 ** network.depth  # the network pads to this multiple itself; tools tile in it
    # tools that tile crop this margin of every block: the network's whole reach, as napari-pgsr's own tiling
    # crops, so no seams; a multiple of `step`, so blocks keep the pooling grid of the whole frame
    halo = step * -(-(network.receptive_field // 2) // step)
    min_size = step * -(-max(TEST_SIZE, 2 * halo + step) // step)  # a valid size above twice the halo
    if test_frames is not None and min(np.shape(test_frames)[1:]) < min_size:
        raise ValueError(f"the sample frames are {' x '.join(map(str, np.shape(test_frames)[1:]))} pixels, but this "
                         f"{kind} sees {halo} px around each pixel, so the package's smallest input is {min_size} x "
                         f"{min_size}: give a larger sample movie, or none (a simulated one is used)")
    x = test_input(model, test_frames, size=min_size)
    norm = model.normalization
    y = _expected_output(network, norm, x)
    citation, doi = CITATIONS[kind]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        np.save(folder / "test_input.npy", x)
        np.save(folder / "test_output.npy", y)
        for stem, tensor in (("sample_input", x), ("sample_output", y)):  # for the zoo's previews
            tifffile.imwrite(folder / f"{stem}.tif", tensor[0], photometric="minisblack")  # C x Y x X
        torch.save({key: value.contiguous() for key, value in network.state_dict().items()}, folder / WEIGHTS_NAME)
        _torchscript(network, torch.from_numpy(norm.low(x)), step, folder / TORCHSCRIPT_NAME)
        source = folder / f"{kind}.py"
        source.write_text(inspect.getsource(inspect.getmodule(type(network))))
        _cover(x, y, folder / "cover.png")
        (folder / "README.md").write_text(_readme(model))
        # identifiers: t_minus_1, t, t_plus_1 for the frames before, at and after the restored one
        channel_names = [f"t_{'minus' if offset < 0 else 'plus'}_{abs(offset)}" if offset else "t"
                         for offset in range(-model.context, model.context + 1)]
        low = spec.TensorId("low")
        space = [spec.SpaceInputAxis(id=spec.AxisId(axis), size=spec.ParameterizedSize(min=min_size, step=step))
                 for axis in ("y", "x")]
        low_range = norm.low_hi - norm.low_lo
        inputs = [spec.InputTensorDescr(
            id=low, description="raw low-exposure frame(s)",
            test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_input.tif"),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in channel_names]),
                  *space],
            preprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
                           spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=1.0 / low_range,
                                                                               offset=-norm.low_lo / low_range))])]
        post = [spec.SigmoidDescr()] if architecture.get("output_activation") == "sigmoid" else []
        post.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=norm.high_hi - norm.high_lo,
                                                                        offset=norm.high_lo)))
        outputs = [spec.OutputTensorDescr(
            id=spec.TensorId("restored"), description="restored frame, in high-exposure intensities",
            test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_output.tif"),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("restored")]),
                  *[spec.SpaceOutputAxisWithHalo(id=spec.AxisId(axis), halo=halo, size=spec.SizeReference(
                      tensor_id=low, axis_id=spec.AxisId(axis))) for axis in ("y", "x")]],
            postprocessing=post)]
        torch_version = spec.Version(torch.__version__.split("+")[0])
        weights = spec.WeightsDescr(
            pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                source=folder / WEIGHTS_NAME, pytorch_version=torch_version,
                architecture=spec.ArchitectureFromFileDescr(
                    source=source, callable=spec.Identifier(type(network).__name__), kwargs=architecture)),
            torchscript=spec.TorchscriptWeightsDescr(source=folder / TORCHSCRIPT_NAME, pytorch_version=torch_version,
                                                     parent="pytorch_state_dict"))
        metadata = {**_thinned_history(model.metadata), "architecture": network.architecture,
                    "normalization": norm.to_dict()}
        description = spec.ModelDescr(
            name=name or f"napari-pgsr {kind} restoration",
            description=f"Low- to high-exposure restoration of fluorescence frames: {model.describe()}",
            authors=[spec.Author(name=author) for author in (authors or ["napari-pgsr user"])],
            cite=[spec.CiteEntry(text=citation, doi=spec.Doi(doi))], license=spec.LicenseId(license),
            documentation=spec.FileDescr(source=folder / "README.md"),
            covers=[spec.FileDescr(source=folder / "cover.png")],
            tags=["napari-pgsr", "denoising", "restoration", "fluorescence-light-microscopy", "2d", "pytorch", kind],
            inputs=inputs, outputs=outputs, weights=weights,
            config={"bioimageio": {"reproducibility_tolerance": [{
                        "absolute_tolerance": _absolute_tolerance(norm, y), "relative_tolerance": 1e-3}]},
                    CONFIG_KEY: {"format": FORMAT, "format_version": FORMAT_VERSION, "exported_by": __version__,
                                 "metadata_json": json.dumps(metadata)}})
        save_bioimageio_package(description, output_path=folder / "package.zip")
        with atomic_path(output) as tmp:
            shutil.copyfile(folder / "package.zip", tmp)
    return output


def _absolute_tolerance(norm: Normalization, test_output: np.ndarray) -> float:
    """How far another machine's output may stray, in output units: fp32 sums in another order (other threads,
    another CPU) move it ~1e-6 of the high range, so 1e-4 of it (the default 1e-3 is in raw camera units, too
    tight near zero); the spec refuses more than 1% of the test output's maximum (a dim test frame), worked
    out in float32, so the cap is a hair below it."""
    return float(max(0.0, min(1e-4 * (norm.high_hi - norm.high_lo), 0.0099 * float(test_output.max()))))


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """A zip holding an rdf.yaml (or bioimageio.yaml)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n in archive.namelist() for n in ("rdf.yaml", "bioimageio.yaml"))
    except (zipfile.BadZipFile, OSError):
        return False


def import_bioimageio(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelFile:
    """The `ModelFile` of a package written by `export_bioimageio`; a package of another tool, or one of a
    newer napari-pgsr model format, raises ValueError naming the file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            rdf_name = next(n for n in ("rdf.yaml", "bioimageio.yaml") if n in archive.namelist())
            rdf = yaml.safe_load(archive.read(rdf_name))
            ours = (rdf.get("config") or {}).get(CONFIG_KEY)
            if not ours:
                raise ValueError(f"{path} is a bioimage.io package but not one exported by napari-pgsr "
                                 "(no config.napari_pgsr); run it with bioimageio.core")
            if ours.get("format") != FORMAT:
                raise ValueError(f"{path}: damaged bioimage.io package (config.napari_pgsr names format "
                                 f"{ours.get('format')!r}, expected {FORMAT!r})")
            check_format_version(path, ours.get("format_version"), "model")
            weights_name = rdf["weights"]["pytorch_state_dict"]["source"]
            try:
                state = torch.load(io.BytesIO(archive.read(weights_name)), map_location=device, weights_only=True)
            except pickle.UnpicklingError as err:  # (torch's message goes on to advise loading unsafely)
                raise ValueError(f"{path}: its weights ({weights_name}) hold Python objects that a safe load "
                                 "refuses") from err
        metadata = json.loads(ours["metadata_json"])
    except StopIteration:
        raise ValueError(f"{path} is a zip but not a bioimage.io package (no rdf.yaml)") from None
    except (zipfile.BadZipFile, KeyError, TypeError, AttributeError, RuntimeError, yaml.YAMLError,
            json.JSONDecodeError) as err:  # (AttributeError: a yaml entry that is not a mapping)
        raise ValueError(f"{path}: damaged bioimage.io package ({type(err).__name__}: {err})") from err
    network, normalization = rebuild(path, metadata, state, "bioimage.io package")
    return ModelFile(network.to(device).eval(), normalization, metadata, None, path)



LOSS_POINTS = 2000  # the per-step loss curve in a package: rdf.yaml grew by 2.3 MB per 100 000 steps


def _thinned_history(metadata: dict) -> dict:
    """The metadata with its per-step training loss averaged over blocks of `loss_every` steps so it holds at
    most `LOSS_POINTS` values (validation records are kept whole): the package's rdf.yaml carries it."""
    history = metadata.get("history")
    losses = history.get("loss") if isinstance(history, dict) else None
    if not isinstance(losses, list) or len(losses) <= LOSS_POINTS:
        return metadata
    every = int(np.ceil(len(losses) / LOSS_POINTS))
    means = [float(np.mean(losses[start:start + every])) for start in range(0, len(losses), every)]
    return {**metadata, "history": {**history, "loss": means, "loss_every": every}}


def check_package(path: str | os.PathLike) -> tuple[bool, str]:
    """bioimageio.core's own test of a package: it validates the description, runs the model on the test
    input with the declared pre- and post-processing and compares with the test output. (passed, summary)"""
    try:
        from bioimageio.core import test_model
    except ImportError as err:
        raise _missing_extra() from err
    summary = test_model(Path(path))
    return summary.status == "passed", summary.format()
