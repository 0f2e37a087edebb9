"""Spot analysis with no GUI: sub-pixel PSF fits, SNR and precision, spot suggestions, matching against
labels, and one table over raw and restored images."""

from .across import SpotReport, iter_measure_across, measure_across
from .detect import snap_to_maximum, suggest_spots
from .fit import SpotFit, fit_spot, fit_spots
from .match import MatchResult, compare_to_labels, new_points
from .measure import (CameraCalibration, average_profile, iter_measure_spots, measure_spots,
                      mortensen_mle_precision, mortensen_precision)
from .points_csv import read_points_csv, write_points_csv

__all__ = ["CameraCalibration", "MatchResult", "SpotFit", "SpotReport", "average_profile", "compare_to_labels",
           "fit_spot", "fit_spots", "iter_measure_across", "iter_measure_spots", "measure_across", "measure_spots",
           "mortensen_mle_precision", "mortensen_precision", "new_points", "read_points_csv", "snap_to_maximum",
           "suggest_spots", "write_points_csv"]
