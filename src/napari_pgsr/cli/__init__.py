"""Console scripts: napari-pgsr-train, -predict, -measure, -export, -recover and -split, one module each
(also `python -m napari_pgsr.cli train|predict|measure|export|recover|split`, which is what torchrun launches
for several GPUs or nodes)."""

from __future__ import annotations

import sys

from .common import EXIT_BAD_INPUT, BadInput
from .export import export_main, export_parser
from .measure import measure_main, measure_parser
from .predict import predict_main, predict_parser
from .recover import recover_main, recover_parser
from .split import split_main, split_parser
from .train import build_config, train_main, train_parser

__all__ = ["EXIT_BAD_INPUT", "BadInput", "build_config", "export_main", "export_parser", "main", "measure_main",
           "measure_parser", "predict_main", "predict_parser", "recover_main", "recover_parser", "split_main",
           "split_parser", "train_main", "train_parser"]


def main(argv: list[str] | None = None) -> int:
    """`python -m napari_pgsr.cli train|predict|measure|export|recover|split ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "predict": predict_main, "measure": measure_main, "export": export_main,
                "recover": recover_main, "split": split_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m napari_pgsr.cli {train,predict,measure,export,recover,split} ... (see --help of each)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return commands[argv[0]](argv[1:])

