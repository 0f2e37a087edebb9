"""I/O benchmark: open a >= 4 GB movie lazily, read random frames, and sample training patches from it.

    .venv/bin/python benchmarks/bench_io.py [--gigabytes 4.3] [--folder /tmp]

Prints open time (goal < 1 s), RSS after opening and after reading 10 random frames (goal < 300 MB),
the time to split the movie into exposure pairs, and PatchDataset patches/s of 64x64 (goal > 2,000/s).
Each measurement runs in a fresh process so that writing the file does not count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_movie(path: Path, gigabytes: float, size: int = 1200) -> int:
    """Write a uint16 ImageJ TIFF of simulated alternating frames (a few simulated pairs, repeated)."""
    import warnings

    import tifffile

    from napari_pgsr.simulate import simulate_movie

    n_frames = int(np.ceil(gigabytes * 1e9 / (size * size * 2) / 2) * 2)
    sim = simulate_movie("ap2", 8, (size, size), seed=0)
    with warnings.catch_warnings():  # ImageJ's own layout for files over 4 GB: one IFD, contiguous data
        warnings.filterwarnings("ignore", message=".*truncating ImageJ file")
        movie = tifffile.memmap(path, shape=(n_frames, size, size), dtype=np.uint16, imagej=True,
                                resolution=(1 / 0.16, 1 / 0.16), metadata={"axes": "TYX", "unit": "um"})
    for start in range(0, n_frames, 8):
        stop = min(start + 8, n_frames)
        movie[start:stop] = sim.movie[: stop - start]
    movie.flush()
    del movie
    return n_frames


def measure(path: str) -> dict:
    """Run in a fresh process: open, read frames, split, sample patches."""
    import psutil

    from napari_pgsr.io import read_movie
    from napari_pgsr.pairs import split_alternating

    process = psutil.Process()
    mib = lambda: process.memory_info().rss / 2**20  # noqa: E731
    out = {"rss_start_mib": mib()}
    start = time.perf_counter()
    movie = read_movie(path)
    out["open_s"] = time.perf_counter() - start
    out["rss_after_open_mib"] = mib()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for index in rng.choice(movie.shape[0], 10, replace=False):
        np.asarray(movie.data[int(index)].compute()).sum()
    out["read_10_frames_s"] = time.perf_counter() - start
    out["rss_after_10_frames_mib"] = mib()
    start = time.perf_counter()
    pairs = split_alternating(movie)  # the documented call; a napari layer's movie.data works the same
    out["split_s"] = time.perf_counter() - start
    out["pairs"], out["ratio"] = len(pairs), round(pairs.ratio, 2)
    import torch  # imported only now: torch alone adds ~200 MB of RSS

    from napari_pgsr.data import PatchDataset

    dataset = PatchDataset(pairs, patch_size=64, length=20_000)
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    out["patches_per_s"] = len(dataset) / (time.perf_counter() - start)
    layer_pairs = split_alternating(movie.data)  # what the widget passes: the layer's dask array
    layer_dataset = PatchDataset(layer_pairs, patch_size=64, length=5_000, normalization=dataset.normalization)
    start = time.perf_counter()
    for i in range(len(layer_dataset)):
        layer_dataset[i]
    out["patches_per_s_from_layer_data"] = len(layer_dataset) / (time.perf_counter() - start)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=2, persistent_workers=False)
    start = time.perf_counter()
    n = sum(batch[0].shape[0] for batch in loader)
    out["patches_per_s_loader_2_workers"] = n / (time.perf_counter() - start)
    out["peak_rss_mib"] = mib()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=4.3)
    parser.add_argument("--folder", default=None, help="where to put the temporary movie")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "big_movie.tif"
        start = time.perf_counter()
        n_frames = make_movie(path, args.gigabytes)
        size_gb = path.stat().st_size / 1e9
        print(f"movie: {n_frames} frames of 1200x1200 uint16, {size_gb:.2f} GB, written in "
              f"{time.perf_counter() - start:.1f} s -> {path}")
        try:  # start from a cold page cache where allowed (root on Linux)
            subprocess.run(["sync"], check=False)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            print("page cache dropped: cold-cache figures")
        except OSError:
            print("page cache not dropped (needs root): warm-cache figures")
        result = subprocess.run([sys.executable, __file__, "--measure", str(path)], capture_output=True,
                                text=True, check=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"open:                      {figures['open_s'] * 1000:8.1f} ms      (goal < 1000 ms)")
    print(f"RSS at start:              {figures['rss_start_mib']:8.1f} MiB")
    print(f"RSS after opening:         {figures['rss_after_open_mib']:8.1f} MiB     (goal < 300 MB)")
    print(f"RSS after 10 random frames:{figures['rss_after_10_frames_mib']:8.1f} MiB     (goal < 300 MB)"
          f"  [{figures['read_10_frames_s'] * 1000:.0f} ms to read them]")
    print(f"split into pairs:          {figures['split_s']:8.2f} s       ({figures['pairs']} pairs, ratio "
          f"{figures['ratio']}x)")
    print(f"PatchDataset 64x64:        {figures['patches_per_s']:8.0f} patches/s in one process "
          "(goal > 2000)")
    print(f"  from a layer's dask data:{figures['patches_per_s_from_layer_data']:8.0f} patches/s")
    print(f"DataLoader, 2 workers:     {figures['patches_per_s_loader_2_workers']:8.0f} patches/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
