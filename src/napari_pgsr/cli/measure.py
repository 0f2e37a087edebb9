"""napari-pgsr-measure: fit labelled spots on raw and restored images into one table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_BAD_INPUT, BadInput, ProgressBar, warnings_said_plainly


def measure_parser() -> argparse.ArgumentParser:
    """Arguments of napari-pgsr-measure."""
    parser = argparse.ArgumentParser(
        prog="napari-pgsr-measure",
        description="Fit hand-labelled spots on one or more images (raw low, raw high, restored) and write one "
                    "table: position, sigma, FWHM, amplitude, background, SNR, SBR, localisation precision, flags.")
    parser.add_argument("images", type=Path, nargs="+", help="images or movies of one shape (TIFF, OME-TIFF, "
                                                             "ImageJ TIFF or OME-Zarr)")
    parser.add_argument("--points", type=Path, required=True,
                        help="labels CSV: napari points (axis-0, axis-1, ...), 'y,x' or 'frame,y,x' columns")
    parser.add_argument("-o", "--output", type=Path, required=True, help="table CSV; the summary goes beside it")
    parser.add_argument("--pixel-size-nm", type=float, default=None, help="[default: from the first image's file]")
    parser.add_argument("--frame", type=int, default=None, help="movie frame for 2-D (y, x) points, which are "
                        "refused on a movie without it (or the points' frame for 2-D images)")
    parser.add_argument("--radius", type=int, default=3, help="fit window half-width in pixels [3]")
    parser.add_argument("--baseline-adu", type=float, default=0.0, help="camera offset in grey levels [0]")
    parser.add_argument("--electrons-per-adu", type=float, default=1.0,
                        help="photoelectrons (before EM gain) per grey level: the camera's e-/ADU divided by its "
                        "EM gain (the simulated EMCCD: 10 e-/ADU at gain 100 gives 0.1) [1: image in photons]")
    parser.add_argument("--excess-noise", type=float, default=2.0, help="2 for an EMCCD, 1 for sCMOS/CCD [2]")
    parser.add_argument("--read-noise", type=float, default=0.0, metavar="E",
                        help="the camera's read noise, rms photoelectrons per pixel, for the precision: an sCMOS's "
                        "1-2 (its data sheet's median); an EMCCD's divided by its EM gain is about 0 [0]")
    parser.add_argument("--saturation-adu", type=float, default=None,
                        help="grey level the camera clips at: spots reaching it are flagged 'saturated' "
                             "[default: the integer image type's maximum, 65535 for 16 bits]")
    parser.add_argument("--plots", action="store_true", help="also write FWHM / SNR histograms and average spot "
                                                             "profiles as <output>_plots.png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary (errors, and "
                        "notes on images whose restoration was not finished, are still printed)")
    return parser


def image_names(paths: list[Path]) -> list[str]:
    """The table's name of each image: its file stem, else its file name when another has the same stem, else
    the path as given (the same name in two folders)."""
    if len({path.resolve() for path in paths}) < len(paths):
        raise BadInput("an image is given twice: " + ", ".join(str(path) for path in paths))
    names = []
    for path in paths:
        others = [other for other in paths if other != path]
        if path.stem not in {other.stem for other in others}:
            names.append(path.stem)
        elif path.name not in {other.name for other in others}:
            names.append(path.name)
        else:
            names.append(str(path))
    # a stem can equal another file's name (b.tif and b.tif.tif): those are named by their paths
    return [str(path) if names.count(name) > 1 else name for path, name in zip(paths, names)]


def common_pixel_size_nm(pixel_sizes_um: dict[str, float | None]) -> float | None:
    """The pixel size (nm) the images' files agree on; None when none has one. Files that disagree (by more
    than 1%) are refused: spot widths in nm would not compare."""
    known = {name: size * 1000 for name, size in pixel_sizes_um.items() if size}
    if not known:
        return None
    sizes = list(known.values())
    if max(sizes) > 1.01 * min(sizes):
        raise BadInput("the images' files give different pixel sizes ("
                       + ", ".join(f"{name}: {size:g} nm" for name, size in known.items())
                       + "); pass the right one with --pixel-size-nm")
    return sizes[0]


def check_ranges(args: argparse.Namespace) -> None:
    """Values no measurement can use, named with their flags."""
    limits = [("--radius", args.radius, args.radius >= 2, "at least 2 (a 5 x 5 fit window)"),
              ("--pixel-size-nm", args.pixel_size_nm, args.pixel_size_nm is None or args.pixel_size_nm > 0,
               "above 0"),
              ("--electrons-per-adu", args.electrons_per_adu, args.electrons_per_adu > 0, "above 0"),
              ("--excess-noise", args.excess_noise, args.excess_noise >= 1, "at least 1 (1: sCMOS/CCD, 2: EMCCD)"),
              ("--read-noise", args.read_noise, args.read_noise >= 0, "0 or more (rms photoelectrons)")]
    for flag, value, fine, expected in limits:
        if not fine:
            raise BadInput(f"{flag} {value:g}: expected {expected}")


@warnings_said_plainly("napari-pgsr-measure")
def measure_main(argv: list[str] | None = None) -> int:
    """napari-pgsr-measure."""
    args = measure_parser().parse_args(argv)
    try:
        check_ranges(args)

        from ..analysis import CameraCalibration, iter_measure_across, read_points_csv
        from ..analysis.points_csv import write_table_atomically
        from ..generators import run_to_end
        from ..io import read_image
        from ..zarr_movie import is_zarr_path, read_zarr_movie

        summary_path = args.output.with_name(f"{args.output.stem}_summary.csv")
        plots_path = args.output.with_name(f"{args.output.stem}_plots.png")
        inputs = {p.resolve() for p in [*args.images, args.points]}
        for path in (args.output, summary_path) + ((plots_path,) if args.plots else ()):
            if path.is_dir():
                raise BadInput(f"{path} is a folder; give a file name for the table (spots.csv)")
            if path.resolve() in inputs:
                raise BadInput(f"{path} is one of the inputs; choose another output name")
            if path.exists() and not args.overwrite:
                raise BadInput(f"{path} exists; pass --overwrite to replace it")
        images, pixel_sizes_um, notes = {}, {}, []
        for path, name in zip(args.images, image_names(args.images)):
            images[name], pixel_sizes_um[name] = read_image(path)
            unfinished = read_zarr_movie(path, single_frame=True).metadata.get("incomplete") if is_zarr_path(
                path) else None
            if unfinished:
                notes.append(f"{path}: {unfinished}; their spots are flagged")
        pixel_size = args.pixel_size_nm or common_pixel_size_nm(pixel_sizes_um)
        camera = CameraCalibration(args.baseline_adu, args.electrons_per_adu, args.excess_noise, args.saturation_adu,
                                   args.read_noise)
        measuring = iter_measure_across(images, read_points_csv(args.points), pixel_size_nm=pixel_size,
                                        radius=args.radius, camera=camera, frame=args.frame)
        with ProgressBar("fit", disable=args.quiet) as bar:  # thousands of labels take minutes
            # (a new name: a new image, or its suggestion scores / profile after its fits)
            report = run_to_end(measuring, lambda step: bar.show(*step))
        write_table_atomically(report.table, args.output)
        write_table_atomically(report.summary, summary_path)
        if args.plots:
            from ..analysis.plots import plot_report
            from ..atomic import atomic_path

            with atomic_path(plots_path) as tmp:
                plot_report(report).savefig(tmp, dpi=120, format="png")
    except (BadInput, ValueError, OSError) as err:  # OSError: an output that is a folder, a full disk...
        print(f"napari-pgsr-measure: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in notes:  # an unfinished restoration: said even with --quiet
        print(f"note: {note}")
    if args.quiet:
        return 0
    if report.note:
        print(f"note: {report.note}")
    if pixel_size is None:
        print("note: no pixel size in the file or on the command line: nm columns are empty (--pixel-size-nm)")
    if args.baseline_adu == 0.0 and args.electrons_per_adu == 1.0:  # (precision 4 nm where 28-53 was right)
        print("note: no camera calibration given: photons and precision read grey levels as photons above 0; "
              "give --baseline-adu and --electrons-per-adu (photoelectrons per grey level, before EM gain)")
    columns = ["image", "spots", "fitted", "median_fwhm_nm", "median_snr", "median_sbr", "usable_on_all",
               "median_fwhm_nm_on_all", "suggested_f1"]
    print(report.summary.reindex(columns=columns).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {args.output} ({len(report.table)} rows), {summary_path}" + (f", {plots_path}" if args.plots else ""))
    return 0
