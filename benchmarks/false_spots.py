"""Where a restoration's false spots are: the spots it shows that match no molecule at its input's instant.

    .venv/bin/python benchmarks/false_spots.py MODEL.pgsr [...] [--kind single_molecules]
        [--diffusion 0 --blinking 0.05 0.5] [--frames 20]

On the held-out test movies of `quality.py` (same seeds, same detection threshold search, same fits and
300-photon cut), each false spot of each model file (and of the raw high frame) is put in one class:
no molecule of the input's instant is within 2 px but one lit at the high frame's instant is (the target
showed it: a pair that disagrees), or only one too dim to count at the high instant is, or none at all
(invented); a false spot within 2 px of a molecule of the input's instant that the matching gave to
another spot (a molecule drawn twice) is counted apart. The raw high frame is scored at the low frame's
instant, as every restoration. Invented ones are listed with their position, distance to the nearest
molecule and fitted width (24 nm is the fit's lower bound: a one-pixel spike), so a spike can be told
from a drawn molecule; the fitted widths of the matched (true) spots are summarised beside them (minimum,
1st and 50th percentile), to show whether a width cut would single the invented ones out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from quality import MIN_PHOTONS, PIXEL_NM, best_threshold, test_sets

from napari_pgsr.analysis import compare_to_labels, fit_spots, suggest_spots
from napari_pgsr.inference import restore
from napari_pgsr.modelfile import load_model
from napari_pgsr.simulate import KINDS

TOLERANCE_PX = 2.0  # as quality.py's matching


def false_spots(frames: list[np.ndarray], low_truth: list, high_truth: list) -> dict:
    """Counts of true and false spots at the best threshold, the false ones by class, and the invented ones."""
    threshold = best_threshold(frames, low_truth)
    counts = {"threshold": threshold, "true": 0, "false": 0, "lit at the high instant": 0, "too dim to count": 0,
              "beside a matched molecule": 0, "invented": [], "true widths": []}
    for index, (image, (yx, photons), (high_yx, high_photons)) in enumerate(zip(frames, low_truth, high_truth)):
        found = suggest_spots(image, sigma=1.0, threshold=threshold, exclude_border=4)
        fits = [f for f in fit_spots(image, found, radius=3, sigma_guess=1.0)
                if f.flag in ("", "width at limit", "centre at limit")]
        fitted = np.array([[f.y, f.x] for f in fits]).reshape(-1, 2)
        match = compare_to_labels(fitted, yx, tolerance_px=TOLERANCE_PX, ignore=photons < MIN_PHOTONS)
        counts["true"] += match.true_positives
        counts["false"] += match.false_positives
        counts["true widths"] += [fits[spot].sigma_px for spot in match.pairs[:, 0]]
        classed = 0  # this frame's false spots put in a class below
        for spot, position in enumerate(fitted):
            near_low = np.hypot(*(yx - position).T) <= TOLERANCE_PX if len(yx) else np.zeros(0, bool)
            if near_low.any():
                continue  # matched, a dim molecule of the input's instant, or beside a matched one (below)
            classed += 1
            near_high = np.hypot(*(high_yx - position).T) <= TOLERANCE_PX if len(high_yx) else np.zeros(0, bool)
            if near_high.any() and (high_photons[near_high] >= MIN_PHOTONS).any():
                counts["lit at the high instant"] += 1
            elif near_high.any():
                counts["too dim to count"] += 1
            else:
                nearest = min((np.hypot(*(t - position).T).min() for t in (yx, high_yx) if len(t)), default=np.inf)
                counts["invented"].append((index, *position, nearest, fits[spot].sigma_px))
        counts["beside a matched molecule"] += match.false_positives - classed
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model files (.pgsr) to restore the test movie with")
    parser.add_argument("--kind", default="single_molecules", choices=KINDS)
    parser.add_argument("--frames", type=int, default=20, help="test frames (as quality.py's --test-frames)")
    parser.add_argument("--diffusion", type=float, help="every spot's diffusion (um^2/s), as in gan_phase.py")
    parser.add_argument("--blinking", type=float, nargs=2, metavar=("ON", "OFF"),
                        help="single molecules' blinking rates (per s), as in gan_phase.py")
    args = parser.parse_args()
    data = test_sets(args.frames, 256, diffusion=args.diffusion, blinking=args.blinking)[args.kind]
    sources = {"raw high": list(data["high"])}
    sources.update({str(path): list(restore(load_model(path), data["low"])) for path in args.models})
    print("| source | threshold | true | false | of them: lit at the high instant | too dim to count | invented "
          "| beside a matched molecule |")
    print("|---|---|---|---|---|---|---|---|")
    invented, widths_of = {}, {}
    for name, frames in sources.items():
        counts = false_spots(frames, data["low_truth"][1], data["high_truth"][1])
        invented[name] = counts["invented"]
        print(f"| {name} | {counts['threshold']:g} | {counts['true']} | {counts['false']} "
              f"| {counts['lit at the high instant']} | {counts['too dim to count']} | {len(counts['invented'])} "
              f"| {counts['beside a matched molecule']} |",
              flush=True)
        widths = np.asarray(counts["true widths"]) * PIXEL_NM
        if len(widths):
            widths_of[name] = (widths.min(), *np.percentile(widths, [1, 50]))
    for name, (least, first, median) in widths_of.items():
        print(f"{name}: true spots' fitted sigma {least:.0f} nm at least, 1st percentile {first:.0f} nm, "
              f"median {median:.0f} nm")
    for name, spots in invented.items():
        for frame, y, x, nearest, sigma_px in spots:
            print(f"{name}: invented spot in test frame {frame} at y {y:.1f}, x {x:.1f} px; nearest molecule "
                  f"{nearest:.1f} px; fitted sigma {sigma_px * PIXEL_NM:.0f} nm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
