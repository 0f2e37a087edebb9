"""Training throughput of the default U-Net (depth 2, width 32) on 64x64 patches, batch 16.

    .venv/bin/python benchmarks/bench_train.py [--steps 100] [--device auto] [--cpu-bf16]

Runs the real training loop (patch sampling from a memory-mapped movie included) and prints patches/s
(goal on the 2-core CI machine: >= 50 patches/s; a widely used peer reaches about 30). `--cpu-bf16` trains
in bf16 autocast as the option of that name does; the CPU's model and bf16 hardware are printed with the
figure, as the speed-up depends on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from napari_pgsr.devices import cpu_has_native_bf16, pick_device
from napari_pgsr.io import read_movie, write_movie
from napari_pgsr.pairs import split_alternating
from napari_pgsr.simulate import simulate_movie
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.events import EventKind
from napari_pgsr.training.loop import train


def cpu_model() -> str:
    """The CPU's model name (Linux), for the record: bf16 speed-ups differ between CPUs."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def cpu_bf16_hardware() -> str:
    """Which of the bf16 instruction sets oneDNN uses this CPU has (Linux flags)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ""
    return ", ".join(flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on a CPU with bf16 hardware")
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "movie.tif"
        write_movie(path, simulate_movie("ap2", 200, (512, 512), seed=0).movie, pixel_size_um=0.16)
        pairs = split_alternating(read_movie(path))
        config = TrainConfig(steps=args.steps, batch=args.batch, patch=args.patch, device=str(device),
                             validation_every=10**9, checkpoint_every=10**9, cpu_bf16=args.cpu_bf16)
        rates = []

        def record(event) -> None:
            if event.kind is EventKind.STEP and event.step > 10:  # after warm-up
                rates.append((event.step, time.perf_counter()))

        start = time.perf_counter()
        train(config, [pairs], Path(folder) / "m.pgsr", progress=record)
        total = time.perf_counter() - start
    (first, t_first), (last, t_last) = rates[0], rates[-1]
    rate = (last - first) * args.batch / (t_last - t_first)
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; CPU "
          f"{cpu_model()}, bf16 hardware: {cpu_bf16_hardware() or 'none'}; "
          f"{'bf16 autocast' if args.cpu_bf16 and cpu_has_native_bf16() else 'fp32'}")
    print(f"U-Net depth 2, width 32, {args.patch}x{args.patch} patches, batch {args.batch}: "
          f"{rate:.0f} patches/s in the training loop (goal >= 50 on 2 CPU cores); {total:.0f} s for "
          f"{args.steps} steps including set-up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
