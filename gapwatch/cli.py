"""The ``gapwatch`` console script: every package's commands behind one lazy dispatcher.

Each subcommand names the module that implements it and the extra it needs (see
:mod:`edge.cli.dispatch`); the module is imported only when that subcommand runs.
"""

from __future__ import annotations

from edge.cli import COMMANDS as EDGE
from edge.cli.dispatch import Subcommand, dispatch
from pipeline.cli import COMMANDS as PIPELINE
from training.cli import COMMANDS as TRAINING

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS: dict[str, Subcommand] = {
    **EDGE,
    **TRAINING,
    **PIPELINE,
    "demo": Subcommand(
        "gapwatch.demo.cli", "edge", "run the main job end to end (or --offline, with no services)"
    ),
    "bench": Subcommand(
        "gapwatch.bench.cli", "all", "benchmarks, each against a baseline measured in the same run"
    ),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("gapwatch", SUBCOMMANDS, argv)
