"""One-to-one matching of detected spots to labels (Hungarian), with precision, recall, F1, position error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from .fit import as_yx


@dataclass(frozen=True)
class MatchResult:
    """Counts, scores and the matched index pairs (detected index, label index)."""

    true_positives: int
    false_positives: int
    false_negatives: int
    pairs: np.ndarray  # (M, 2) indices into detected and labels
    distances: np.ndarray  # (M,) distance of each matched pair in pixels

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        wanted = self.true_positives + self.false_negatives
        return self.true_positives / wanted if wanted else 1.0

    @property
    def f1(self) -> float:
        total = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / total if total else 1.0

    @property
    def rmse(self) -> float:
        """Root mean square localisation error of matched pairs (pixels), NaN when nothing matched."""
        return float(np.sqrt(np.mean(self.distances**2))) if self.distances.size else float("nan")


def compare_to_labels(detected: np.ndarray, labels: np.ndarray, tolerance_px: float = 2.0,
                      ignore: np.ndarray | None = None) -> MatchResult:
    """Match detections to labels within `tolerance_px` minimising the total distance.

    `ignore` marks labels that may be found but need not be (too dim to count): a detection matched to
    one is neither a true nor a false positive, and missing one is no false negative.
    """
    detected, labels = as_yx(detected, "detections"), as_yx(labels, "labels")
    ignore = np.zeros(len(labels), bool) if ignore is None else np.asarray(ignore, bool)
    if ignore.shape != (len(labels),):
        raise ValueError(f"ignore needs one entry per label ({len(labels)}), got shape {ignore.shape}")
    if len(detected) and len(labels):
        distance = cdist(detected, labels)
        # a detection between a counted label and an ignored one goes to the counted one (a true positive,
        # not a false negative), whichever is nearer: matches to ignored labels cost more than any other
        cost = np.where(distance <= tolerance_px, distance + np.where(ignore, 1e3, 0.0), 1e9)
        rows, cols = linear_sum_assignment(cost)
        keep = distance[rows, cols] <= tolerance_px
        rows, cols = rows[keep], cols[keep]
    else:
        rows = cols = np.empty(0, int)
    counted = ~ignore[cols]
    matched_labels = np.zeros(len(labels), bool)
    matched_labels[cols] = True
    tp = int(counted.sum())
    fp = int(len(detected) - len(rows))
    fn = int((~matched_labels & ~ignore).sum())
    pairs = np.column_stack([rows[counted], cols[counted]]) if tp else np.empty((0, 2), int)
    distances = np.hypot(*(detected[pairs[:, 0]] - labels[pairs[:, 1]]).T) if tp else np.empty(0)
    return MatchResult(tp, fp, fn, pairs, distances)


def new_points(existing: np.ndarray, candidates: np.ndarray, min_distance: float = 1.0) -> np.ndarray:
    """The candidates farther than `min_distance` from every existing point in the same frame (to add
    suggestions to labels without labelling a spot twice); leading columns, if any, are frame indices."""
    candidates = np.asarray(candidates, dtype=np.float64)
    existing = np.asarray(existing, dtype=np.float64).reshape(-1, candidates.shape[1] if candidates.ndim == 2 else 2)
    if not len(existing) or not len(candidates):
        return candidates
    apart = np.ones(candidates.shape[1])
    apart[:-2] = 1e6  # points of other frames are never the same spot
    distance, _ = cKDTree(existing * apart).query(candidates * apart, k=1)
    return candidates[distance > min_distance]
