"""How well a pair's high frame stands for the scene its low frame saw.

    .venv/bin/python benchmarks/pair_consistency.py [--frames 20] [--out pair_consistency.md]

Every restoration is judged against the scene at the instant its input (the low frame) was taken, but it
learns from the high frame, taken 65 ms later (between the exposures' midpoints). Molecules that blink or
move in between make the target differ from the input's scene: a model that reproduced its targets
exactly, sample by sample, would score what the raw high frame does against the low frame's instant (one
that learns a summary of them, such as MAE's median, can score above it). For the held-out test movies
of `quality.py` (same seeds, same spot cut; `--diffusion` and `--blinking` change the scene), per kind:

- from the simulator's spot table, molecule by molecule: the share of the high frames' countable spots
  (at least 300 photons in 100 ms) that were dark at the low frame's midpoint (a model that draws them
  invents a spot), the share of the low frames' countable spots that are dark in the high frame (the
  target lacks them), and the RMS displacement (nm) of the molecules shown in both;
- the raw high frame scored by `quality.evaluate` against its own instant and against the low frame's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from quality import MIN_PHOTONS, PIXEL_NM, evaluate, test_sets


def blinking_and_motion(simulation, pairs) -> dict:
    """Molecule-by-molecule changes between each pair's low and high frame (see the module docstring)."""
    spots = simulation.spots
    to_high = simulation.exposures_s.max() / simulation.exposures_s
    counts = {"high": 0, "dark_in_low": 0, "low": 0, "dark_in_high": 0}
    moves = []
    for low, high in zip(pairs.low_index, pairs.high_index):
        shown = {}
        for frame in (low, high):
            rows = spots["frame"] == frame
            shown[frame] = {int(i): (y, x, p * to_high[frame]) for i, y, x, p in
                            zip(spots["id"][rows], spots["y"][rows], spots["x"][rows], spots["photons"][rows])}
        for this, other, total, dark in ((high, low, "high", "dark_in_low"), (low, high, "low", "dark_in_high")):
            countable = [i for i, (_, _, photons) in shown[this].items() if photons >= MIN_PHOTONS]
            counts[total] += len(countable)
            counts[dark] += sum(i not in shown[other] for i in countable)
        moves += [np.subtract(shown[high][i][:2], shown[low][i][:2]) for i in shown[low].keys() & shown[high].keys()]
    moves = np.reshape(moves, (-1, 2))
    return {"dark_in_low": counts["dark_in_low"] / max(counts["high"], 1),
            "dark_in_high": counts["dark_in_high"] / max(counts["low"], 1),
            "spots": counts["high"],
            "displacement_nm": PIXEL_NM * float(np.sqrt(np.mean(np.sum(moves**2, axis=1)))) if len(moves)
            else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="test frames per kind (quality.py's default)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--diffusion", type=float, help="every kind's diffusion (um^2/s) instead of its own")
    parser.add_argument("--blinking", type=float, nargs=2, metavar=("ON", "OFF"),
                        help="single molecules' blinking rates (per s) instead of 0.5 and 5")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    lines = ["| sample | high-frame spots dark at the low instant | low-frame spots dark at the high instant "
             "| RMS displacement (nm) | raw high vs its own instant: F1 / precision / RMSE (nm) / sigma (nm) "
             "| raw high vs the low instant: F1 / precision / RMSE (nm) / sigma (nm) |",
             "|---|---|---|---|---|---|"]
    for kind, data in test_sets(args.frames, args.size, diffusion=args.diffusion, blinking=args.blinking).items():
        changes = blinking_and_motion(data["simulation"], data["pairs"])
        scores = []
        for instant in ("high_truth", "low_truth"):
            images, spots = data[instant]
            row = evaluate("raw high", list(data["high"]), images, spots)
            scores.append(f"{row['f1']:.3f} / {row['precision']:.3f} / {row['rmse_nm']:.1f} / {row['sigma_nm']:.1f}")
        lines.append(f"| {kind} | {changes['dark_in_low']:.1%} (of {changes['spots']}) | {changes['dark_in_high']:.1%} "
                     f"| {changes['displacement_nm']:.1f} | {scores[0]} | {scores[1]} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
