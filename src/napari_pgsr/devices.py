"""Device choice (auto: CUDA, then MPS, then CPU) and mixed precision, shared by training and inference."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA (this process's local rank under torchrun), then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's own message lists dozens of backends
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):  # (xpu, hip, meta...: a torch assertion deep in the run)
        raise ValueError(f"device {name!r} is not one napari-pgsr runs on; expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():  # one GPU per torchrun rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU")
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s): "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available")
    return device


def available_memory() -> float:
    """Bytes of RAM a process can take: Linux's MemAvailable, which counts the page cache a big movie just
    read has filled (free memory alone would shrink after every movie), else the free pages, else 4 GiB."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4.0 * 2**30


def available_devices() -> list[str]:
    """Devices a user can choose from (for GUIs and --help)."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16; Linux's /proc/cpuinfo flags): there
    oneDNN's bf16 convolutions run faster than fp32 (U-Net training: 2.5-2.9x with AMX, 1.8x with AVX512-BF16
    alone), elsewhere they are emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast(device: torch.device, enabled: bool = True, training: bool = False, cpu_bf16: bool = False):
    """bf16 autocast on GPUs that support it; fp16 only for inference (training in fp16 would need a
    gradient scaler); on a CPU only when asked (`cpu_bf16`) and computed in hardware."""
    if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if not enabled or device.type not in ("cuda", "mps"):
        return contextlib.nullcontext()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if not bf16 and training:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if bf16 else torch.float16)


class CompiledForward:
    """A network's forward pass through torch.compile, with the weights frozen into the graph (on CPUs oneDNN
    then packs them once: 1.1-1.6x faster here). Each new input shape compiles once (seconds);
    where compiling fails (no C++ compiler, say) it warns and runs the network as it is."""

    def __init__(self, network: torch.nn.Module):
        self.network, self.failed = network, False
        self.compiled = torch.compile(network, dynamic=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            from torch._inductor import config as inductor_config

            try:
                with inductor_config.patch(freezing=True):  # compiling happens on calls; freeze weights there
                    return self.compiled(x)
            except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, say so
                self.failed = True
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); running the "
                              "model uncompiled", RuntimeWarning, stacklevel=2)
        return self.network(x)
