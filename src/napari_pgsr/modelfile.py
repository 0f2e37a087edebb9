"""Self-describing, versioned model files (.pgsr): weights plus everything needed to use and resume them.

A file is a torch zip archive holding only tensors, numbers and strings, so it loads with
`torch.load(weights_only=True)`: nothing in it is executed. Metadata travels as one JSON string.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .data import Normalization
from .atomic import atomic_path
from .models import build_model

FORMAT = "napari-pgsr-model"
FORMAT_VERSION = 1
SUFFIX = ".pgsr"


@dataclass
class ModelFile:
    """A trained restoration model with its description; `training_state` is present in checkpoints."""

    network: nn.Module
    normalization: Normalization
    metadata: dict = field(default_factory=dict)  # architecture, config, history, provenance, versions...
    training_state: dict | None = None  # optimizer, scheduler, step, split, RNG: what resume needs
    path: Path | None = None

    @property
    def context(self) -> int:
        """Neighbouring low frames on each side the network expects."""
        return int(self.metadata.get("config", {}).get("context", 0))

    def fingerprint(self) -> str:
        """A short hash of the weights and normalisation: tells two models of one file name apart (a model
        trained further in place), e.g. before an output restored by one is continued by the other."""
        digest = hashlib.sha256(json.dumps(self.normalization.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.network.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        """One line for logs and the GUI."""
        arch = self.metadata.get("architecture", {})
        history = self.metadata.get("history", {})
        config = self.metadata.get("config", {})
        if arch.get("name") == "progan":
            fading = "" if arch.get("alpha", 1.0) >= 1 else " (fading in)"
            network = (f"progan width {arch.get('width'):g}, {arch.get('resolution')} of "
                       f"{arch.get('max_resolution')} px{fading}, {config.get('gan_mode')} loss")
        else:
            network = (f"{arch.get('name')} depth {arch.get('depth')} width {arch.get('width')}, "
                       f"loss {config.get('loss')}")
        return (f"{network}, context {self.context}, {history.get('step', 0)} steps; trained on "
                f"{', '.join(self.metadata.get('provenance', {}).get('names', [])) or '?'}")


def versions() -> dict:
    """Software versions recorded with every model."""
    return {"napari_pgsr": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def save_model(path: str | os.PathLike, network: nn.Module, normalization: Normalization, metadata: dict,
               training_state: dict | None = None) -> Path:
    """Write atomically (temporary file beside the target, then rename)."""
    path = Path(path)
    network = getattr(network, "module", network)  # unwrap DistributedDataParallel
    meta = {**metadata, "architecture": network.architecture, "normalization": normalization.to_dict(),
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "versions": versions()}
    archive: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "metadata_json": json.dumps(meta),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()},
    }
    if training_state is not None:
        archive["training_state"] = training_state
    with atomic_path(path) as tmp:
        torch.save(archive, tmp)
    return path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelFile:
    """Load a .pgsr file (or a bioimage.io package exported by napari-pgsr) safely; unknown, newer or damaged
    files raise ValueError naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    from .bmz import import_bioimageio, is_bioimageio_package  # here: bmz builds on this module

    if is_bioimageio_package(path):
        return import_bioimageio(path, device)
    if (path / "rdf.yaml").is_file() or (path / "bioimageio.yaml").is_file() or \
            path.name in ("rdf.yaml", "bioimageio.yaml"):
        raise ValueError(f"{path} is an unpacked bioimage.io package: give the package's .zip")
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes zip archives
        with open(path, "rb") as handle:
            tiff = handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
        raise ValueError(f"{path} is not a readable napari-pgsr model file ("
                         + ("it is a TIFF image: give the model file first, then the movie)" if tiff else
                            "a model file is the zip archive napari-pgsr-train writes)"))
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as archive_file:  # torch.jit.save's archives hold code/ and constants.pkl
                torchscript = any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl"))
                                  for name in archive_file.namelist())
                # torch reads no checksums: 40% of single flipped bytes loaded as other weights, unsaid
                damaged = archive_file.testzip()
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as err:
            raise ValueError(f"{path} is not a readable napari-pgsr model file (a damaged zip archive: "
                             f"{type(err).__name__}: {err})") from err
        if damaged is not None:
            raise ValueError(f"{path} is damaged: its part {damaged} fails its checksum (a broken copy or "
                             "download?); copy it again, or use another checkpoint")
        if torchscript:
            raise ValueError(f"{path} is a TorchScript file, not a napari-pgsr model file; give the .pgsr file "
                             "napari-pgsr-train wrote, or the bioimage.io package (.zip) exported from it")
    try:
        archive = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # zip errors, unpickling refusals, truncated files
        # (torch's refusal goes on to advise loading unsafely, which a model file never needs)
        why = ("it holds Python objects that a safe load refuses" if "Weights only load failed" in str(err) else
               f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise ValueError(f"{path} is not a readable napari-pgsr model file ({why})") from err
    if not isinstance(archive, dict) or archive.get("format") != FORMAT:
        raise ValueError(f"{path} is not a napari-pgsr model file (no '{FORMAT}' marker)")
    check_format_version(path, archive.get("format_version"))
    try:
        metadata = json.loads(archive["metadata_json"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: damaged model file ({type(err).__name__}: {err})") from err
    network, normalization = rebuild(path, metadata, archive.get("state_dict"))
    network.to(device).eval()
    return ModelFile(network, normalization, metadata, archive.get("training_state"), path)


def check_format_version(path: Path, version, kind: str = "model file") -> None:
    """Refuse a model format version that is not a whole number from 1 to `FORMAT_VERSION`, by name."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:  # (None read "newer than" 1)
        raise ValueError(f"{path} is a damaged napari-pgsr {kind}: its format version is {version!r}; "
                         f"expected a whole number from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has model format version {version}, newer than this napari-pgsr reads "
                         f"({FORMAT_VERSION}); upgrade napari-pgsr")


def rebuild(path: Path, metadata: dict, state_dict, kind: str = "model file") -> tuple[torch.nn.Module, Normalization]:
    """The network and normalisation a model's metadata describes, with its weights; errors name the file,
    and a model written by a newer napari-pgsr says so rather than calling it damaged."""
    try:
        network = build_model(metadata["architecture"])
        network.load_state_dict(state_dict)
        return network, Normalization.from_dict(metadata["normalization"])
    except (KeyError, TypeError, RuntimeError, AttributeError, ValueError) as err:
        why = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        written_by = (metadata.get("versions") or {}).get("napari_pgsr") if isinstance(metadata, dict) else None
        if _is_newer(written_by):
            raise ValueError(f"{path} was written by napari-pgsr {written_by}, newer than this one ({__version__}), "
                             f"and holds what this version does not know ({why}); upgrade napari-pgsr") from err
        if isinstance(err, ValueError):
            raise ValueError(f"{path}: {why}") from err
        raise ValueError(f"{path}: damaged {kind} ({why})") from err


def _is_newer(version) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(version)) > Version(__version__)
    except InvalidVersion:
        return False
