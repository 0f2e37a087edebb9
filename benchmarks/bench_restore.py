"""Restoration speed and memory for the default U-Net (depth 2, width 32): seconds per 256² and 1200² frame,
megapixels/s, the ratio of achieved convolution FLOP/s to this machine's own measured limit (large 3x3
convolutions timed in the same run, fp32 and bf16), the speed-up over a plain whole-frame `model(x)` call
per frame, for fp32 and bf16, eager and torch.compile'd; and peak RSS while streaming movies of several
lengths to OME-Zarr (it must not grow with the length).

    python benchmarks/bench_restore.py [--frames 4] [--sizes 256 1200] [--long 20 60]
        [--rounds 3] [--rss-precision fp32|bf16] [--rss-compile] [--device auto]
        [--variants fp32 fp32-compiled bf16 bf16-compiled]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_pgsr.data import Normalization
from napari_pgsr.devices import pick_device
from napari_pgsr.heap import reusing_freed_memory
from napari_pgsr.inference import Restorer
from napari_pgsr.modelfile import ModelFile
from napari_pgsr.models import build_model


def unet_model() -> ModelFile:
    torch.manual_seed(0)
    network = build_model({"name": "unet", "in_channels": 1, "depth": 2, "width": 32})
    return ModelFile(network, Normalization(100.0, 400.0, 100.0, 4000.0), {"config": {"context": 0}})


def conv_flops_per_pixel(network: nn.Module, size: int = 256) -> float:
    """Multiply-adds x 2 of every convolution for one size x size frame, per input pixel (hooks count them)."""
    total = [0.0]

    def count(module, inputs, output):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total[0] += 2.0 * module.in_channels * module.out_channels * kernel * output.shape[-2] * output.shape[-1]

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        network(torch.zeros(1, 1, size, size))
    for hook in hooks:
        hook.remove()
    return total[0] / size**2


def machine_conv_limit(device, bf16: bool = False, seconds: float = 1.0) -> float:
    """This device's convolution limit: the best FLOP/s of three large 3x3 convolutions (19 GFLOP each:
    64 channels at 512², 128 at 256², 256 at 128²; channels-last), fp32 or bf16. Where the tensors fit in
    the caches they run much faster than a 64-channel 512² one, so one shape alone understates the limit."""
    best = 0.0
    for channels, size in ((64, 512), (128, 256), (256, 128)):
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device).eval()
        conv = conv.to(memory_format=torch.channels_last)
        x = torch.randn(1, channels, size, size, device=device).to(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            conv(x)
            best = max(best, 2.0 * channels * channels * 9 * size * size / _best_seconds(lambda: conv(x), device,
                                                                                        seconds))
    return best


def _best_seconds(call, device, seconds: float) -> float:
    """The fastest of repeated calls over about `seconds` (this machine's timings vary by ~10% run to run)."""
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def frames_per_second(restorer: Restorer, frames: list[np.ndarray], batch: int) -> float:
    """Frames/s of the restorer over `frames`, batched and with freed memory kept for reuse as while
    streaming; the best of two passes."""
    def one_pass():
        for first in range(0, len(frames), batch):
            restorer.restore_many([f[None] for f in frames[first:first + batch]])

    with reusing_freed_memory(restorer.device.type == "cpu"):
        # first call at the timed batch shape: allocations, compiling, cuDNN's choice of algorithms
        restorer.restore_many([f[None] for f in frames[:batch]])
        # on a GPU a pass over 64 small frames lasts milliseconds: repeat passes for a second, best one counts
        quick = len(frames) > 4 and restorer.device.type == "cpu"
        return len(frames) / _best_seconds(one_pass, restorer.device, 0.0 if quick else 1.0)


PLAIN = """
import sys
import numpy as np
import torch
sys.path.insert(0, {here!r})
from bench_restore import _best_seconds, unet_model
network = unet_model().network.float().to(memory_format=torch.contiguous_format).train(False)
rng = np.random.default_rng(0)
frames = [rng.poisson(150.0, ({size}, {size})).astype(np.float32) for _ in range({count})]
network(torch.from_numpy(frames[0][None, None]))

def one_pass():
    for frame in frames:
        network(torch.from_numpy(frame[None, None])).detach()

print(len(frames) / _best_seconds(one_pass, torch.device("cpu"), 1.0))
"""


def plain_frames_per_second(size: int, count: int) -> float:
    """The naive way: one whole-frame `model(x)` per frame, default autograd mode, NCHW, in a fresh process
    (glibc's memory handling untouched by heap.py's settings for our jobs)."""
    code = PLAIN.format(here=str(Path(__file__).resolve().parent), size=size, count=count)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return float(run.stdout.strip().splitlines()[-1])


def write_long_movie(path: Path, frames: int, size: int) -> Path:
    """A movie of Poisson noise frames, written frame by frame (never whole in memory)."""
    from napari_pgsr.io import write_movie

    rng = np.random.default_rng(0)

    side = size

    class Frames:
        shape, ndim, dtype = (frames, side, side), 3, np.dtype(np.uint16)

        def __init__(self):
            self.size = frames * side * side

        def __getitem__(self, index):
            return rng.poisson(150.0, (side, side)).astype(np.uint16)

    return write_movie(path, Frames(), pixel_size_um=0.16)


CHILD = """
import json, sys, time

def peak_mib():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

from napari_pgsr.inference import Restorer, restore_to_file
from napari_pgsr.io import read_movie
sys.path.insert(0, {here!r})
from bench_restore import unet_model
movie = read_movie({movie!r})
restorer = Restorer(unet_model(), device="cpu", precision={precision!r}, compile={compiled!r})
before = peak_mib()
start = time.perf_counter()
restore_to_file(restorer, movie, {output!r})
print(json.dumps({{"peak_rss_mib": peak_mib(),
                  "rss_before_mib": before, "seconds": time.perf_counter() - start}}))
"""


def peak_rss_child(movie: Path, output: Path, precision: str = "fp32", compiled: bool = False) -> dict:
    """Stream `movie` to an OME-Zarr store in a fresh process; its peak RSS (MiB) before and during."""
    code = CHILD.format(here=str(Path(__file__).resolve().parent), movie=str(movie), output=str(output),
                        precision=precision, compiled=compiled)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


VARIANTS = {"fp32": ("fp32", False), "fp32-compiled": ("fp32", True), "bf16": ("bf16", False),
            "bf16-compiled": ("bf16", True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="frames timed per size")
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 1200])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of baseline and variants (medians reported)")
    parser.add_argument("--long", type=int, nargs="*", default=[20, 60], help="movie lengths for peak RSS")
    parser.add_argument("--rss-size", type=int, default=1200)
    parser.add_argument("--rss-precision", default="fp32", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--rss-compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    device = pick_device(args.device)
    variants = [VARIANTS[name] for name in args.variants]
    model = unet_model()
    flops_per_pixel = conv_flops_per_pixel(model.network)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"U-Net depth 2 width 32: {flops_per_pixel / 1e3:.1f} kFLOP per pixel; machine limit: best of three "
          "large 3x3 convolutions, channels-last, timed in every round (the machine's speed drifts)")
    rng = np.random.default_rng(0)
    print("| frame | precision | compiled | tile | restorer frames/s | s/frame | MP/s | achieved GFLOP/s "
          "| of the limit (same precision, median of rounds) | plain model(x) frames/s | speed-up (median of rounds) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        frames = [rng.poisson(150.0, (size, size)).astype(np.float32) for _ in range(args.frames)]
        restorers = [Restorer(unet_model(), device=str(device), precision=precision, compile=compiled)
                     for precision, compiled in variants]
        # rounds of the baseline and every variant in turn: each speed-up compares timings taken minutes
        # apart at most, so the machine's drift cancels
        plain, fps, limits = [], [[] for _ in variants], {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            plain.append(plain_frames_per_second(size, len(frames)) if device.type == "cpu" else float("nan"))
            for precision in limits:
                limits[precision].append(machine_conv_limit(device, bf16=precision == "bf16"))
            for timings, restorer in zip(fps, restorers):
                timings.append(frames_per_second(restorer, frames, restorer.frames_per_batch))
        print(f"| {size}² limits (median of rounds) | fp32 {np.median(limits['fp32']) / 1e9:.0f} GFLOP/s | bf16 "
              f"{np.median(limits['bf16']) / 1e9:.0f} GFLOP/s | | | | | | | | |")
        for (precision, compiled), restorer, timings in zip(variants, restorers, fps):
            rate = float(np.median(timings))
            speedup = float(np.median(np.array(timings) / np.array(plain)))
            achieved = rate * size * size * flops_per_pixel
            share = float(np.median(np.array(timings) * size * size * flops_per_pixel / np.array(limits[precision])))
            print(f"| {size}² | {precision} | {'yes' if compiled else 'no'} | {restorer.tile_for(size, size)} "
                  f"| {rate:.2f} | {1 / rate:.3f} | {rate * size * size / 1e6:.2f} | {achieved / 1e9:.0f} "
                  f"| {100 * share:.0f}% | {np.median(plain):.2f} | {speedup:.2f}x |", flush=True)
    folder = Path(tempfile.mkdtemp())
    for length in args.long:
        movie = write_long_movie(folder / f"long{length}.tif", length, args.rss_size)
        result = peak_rss_child(movie, folder / f"out{length}.zarr", args.rss_precision, args.rss_compile)
        print(f"streaming {length} frames of {args.rss_size}² to OME-Zarr ({args.rss_precision}"
              f"{', compiled' if args.rss_compile else ''}): peak RSS {result['peak_rss_mib']:.0f} MiB "
              f"(after setup {result['rss_before_mib']:.0f} MiB), {result['seconds']:.1f} s, "
              f"{length / result['seconds']:.2f} frames/s", flush=True)
        movie.unlink()
        shutil.rmtree(folder / f"out{length}.zarr")


if __name__ == "__main__":
    main()
