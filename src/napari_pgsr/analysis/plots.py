"""The plots people look at for a spot report: FWHM and SNR histograms per image, overlaid, and the average
spot profile per image (matplotlib only, so the widget, the command line and scripts draw the same)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from .across import SpotReport

DARK = {"face": "#262930", "text": "#d0d0d0"}  # napari's dark theme


def _style(axes, dark: bool) -> None:
    if not dark:
        return
    axes.set_facecolor(DARK["face"])
    axes.tick_params(colors=DARK["text"], labelsize=8)
    for spine in axes.spines.values():
        spine.set_color(DARK["text"])
    axes.xaxis.label.set_color(DARK["text"])
    axes.yaxis.label.set_color(DARK["text"])
    axes.title.set_color(DARK["text"])


def plot_report(report: SpotReport, figure: Figure | None = None, dark: bool = False) -> Figure:
    """Draw (or redraw into `figure`) three panels: FWHM histogram, SNR histogram, average profile."""
    figure = figure or Figure(figsize=(9, 3))
    figure.clear()
    figure.set_facecolor(DARK["face"] if dark else "white")
    fwhm_axes, snr_axes, profile_axes = figure.subplots(1, 3)
    good = report.table[report.table["flag"] == ""]
    in_nm = good["fwhm_nm"].notna().any()
    fwhm_column, unit = ("fwhm_nm", "nm") if in_nm else ("fwhm_px", "px")
    fwhm_values, snr_values = good[fwhm_column].dropna(), good["snr"].replace(np.inf, np.nan).dropna()
    # bins over the 1st-99th percentiles: a few failed fits should not squash the histogram; the values
    # beyond go into the end bins rather than out of the count
    fwhm_range = np.percentile(fwhm_values, [1, 99]) if len(fwhm_values) > 1 else None
    fwhm_bins = (np.linspace(*fwhm_range, 21) if fwhm_range is not None and fwhm_range[1] > fwhm_range[0] else 10)
    snr_positive = snr_values[snr_values > 0]
    snr_bins = (np.geomspace(snr_positive.min(), snr_positive.max() * 1.001, 21)
                if len(snr_positive) and snr_positive.max() > snr_positive.min() else 10)
    for name in report.table["image"].unique():
        mine = good[good["image"] == name]
        widths = mine[fwhm_column].dropna()
        if not isinstance(fwhm_bins, int):
            widths = widths.clip(fwhm_bins[0], fwhm_bins[-1])
        fwhm_axes.hist(widths, bins=fwhm_bins, histtype="step", linewidth=1.5, label=name)
        snr = mine["snr"].replace(np.inf, np.nan).dropna()
        snr_axes.hist(snr[snr > 0], bins=snr_bins, histtype="step", linewidth=1.5, label=name)
        profile = report.profiles.get(name)
        if profile is not None:
            r = profile["r_nm"] if in_nm and profile["r_nm"].notna().any() else profile["r_px"]
            profile_axes.plot(r, profile["profile"], marker=".", label=name)
    fwhm_axes.set(xlabel=f"FWHM ({unit}; outer 1% in end bins)", ylabel="spots",
                  title="PSF width")
    snr_axes.set(xlabel="SNR (peak / background SD)", ylabel="spots", title="Signal to noise", xscale="log")
    snr_axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, ... as plain numbers
    snr_axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    snr_axes.xaxis.set_minor_formatter(NullFormatter())
    profile_axes.set(xlabel=f"distance from centre ({unit})", ylabel="(value - background) / peak",
                     title="Average spot profile")
    profile_axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    for axes in (fwhm_axes, snr_axes, profile_axes):
        axes.title.set_fontsize(9)
        axes.xaxis.label.set_fontsize(8)
        axes.yaxis.label.set_fontsize(8)
        _style(axes, dark)
    legend = profile_axes.legend(fontsize=7, frameon=False)
    if dark:
        for text in legend.get_texts():
            text.set_color(DARK["text"])
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.2, top=0.88, wspace=0.35)
    return figure
