"""The ``gapwatch`` console script: every package's commands behind one lazy dispatcher.

Each runtime package owns its command table (``edge.cli.COMMANDS``, ``pipeline.cli.COMMANDS``,
``training.cli.COMMANDS``); the app adds its own (``demo``, ``bench``). A command is routed by
looking its name up package by package, edge first, so ``gapwatch agent`` or
``gapwatch score`` on a gateway never imports the ``training`` or ``pipeline`` packages; only
``--help`` reads every table. The command's module is imported only when it runs (see
:mod:`edge.cli.dispatch`).
"""

from __future__ import annotations

import importlib
import sys

from edge.cli import COMMANDS as EDGE
from edge.cli.dispatch import Subcommand, dispatch

__all__ = ["APP", "PACKAGES", "main", "subcommands"]

# The packages whose command tables are read, in lookup order (the light one first).
PACKAGES = ("edge.cli", "pipeline.cli", "training.cli")

APP: dict[str, Subcommand] = {
    "demo": Subcommand(
        "gapwatch.demo.cli", "edge", "run the main job end to end (or --offline, with no services)"
    ),
    "bench": Subcommand(
        "gapwatch.bench.cli", "all", "benchmarks, each against a baseline measured in the same run"
    ),
}


def _table(package: str) -> dict[str, Subcommand]:
    if package == "edge.cli":
        return EDGE
    try:
        table: dict[str, Subcommand] = importlib.import_module(package).COMMANDS
    except ModuleNotFoundError:  # a trimmed install without that package
        return {}
    return table


def subcommands() -> dict[str, Subcommand]:
    """Every command, in the order ``gapwatch --help`` lists them (imports every table)."""
    merged: dict[str, Subcommand] = {}
    for package in ("edge.cli", "training.cli", "pipeline.cli"):
        merged.update(_table(package))
    return {**merged, **APP}


def _route(name: str) -> dict[str, Subcommand] | None:
    if name in APP:
        return APP
    for package in PACKAGES:
        table = _table(package)
        if name in table:
            return table
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    table = _route(args[0]) if args else None
    return dispatch("gapwatch", table if table is not None else subcommands(), args)
