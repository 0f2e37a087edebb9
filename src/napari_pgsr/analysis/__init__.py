"""Spot analysis with no GUI: sub-pixel PSF fits, spot suggestions, matching against labels."""

from .detect import suggest_spots
from .fit import SpotFit, fit_spot, fit_spots
from .match import MatchResult, compare_to_labels

__all__ = ["MatchResult", "SpotFit", "compare_to_labels", "fit_spot", "fit_spots", "suggest_spots"]
