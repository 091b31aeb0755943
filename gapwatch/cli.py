"""The ``gapwatch`` console script: a lazy dispatcher over the packages' own CLIs.

Each subcommand names the module that implements it and the extra it needs. The module is
imported only when that subcommand runs, and must expose ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass

from gapwatch import __version__


@dataclass(frozen=True)
class Subcommand:
    module: str
    extra: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "agent": Subcommand(
        "edge.agent_cli", "edge", "run the edge agent: MQTT in, impute and score, Kafka out"
    ),
    "score": Subcommand(
        "edge.score_cli", "edge", "impute and score a CSV file offline with a model bundle"
    ),
    "simulate": Subcommand(
        "edge.simulate", "edge", "replay CSV files as MQTT devices, with injected gaps"
    ),
    "train": Subcommand(
        "training.cli", "train", "train a VAE on sensor history and write a model bundle"
    ),
    "evaluate": Subcommand("training.evaluate_cli", "train", "evaluate a bundle against baselines"),
    "sink": Subcommand(
        "pipeline.sink_cli", "sink", "consume scored ticks from Kafka into InfluxDB"
    ),
    "history": Subcommand("pipeline.history_cli", "sink", "export observed history from InfluxDB"),
    "retrain": Subcommand(
        "pipeline.retrain_cli",
        "sink,train",
        "train a challenger from history, promote if not worse",
    ),
    "registry": Subcommand(
        "pipeline.registry_cli", "sink", "list, promote, roll back model versions"
    ),
    "dashboard": Subcommand(
        "pipeline.dashboard_cli", "dashboard", "serve the built-in dashboard of flagged readings"
    ),
    "demo": Subcommand(
        "gapwatch.demo_cli", "edge", "run the main job end to end (or --offline, with no services)"
    ),
    "bench": Subcommand(
        "gapwatch.bench_cli", "all", "benchmarks, each against a baseline measured in the same run"
    ),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: gapwatch [--version] <command> [options]",
        "",
        "Fill gaps and flag anomalies in IoT sensor streams with variational autoencoders.",
        "",
        "commands:",
    ]
    for name, sub in SUBCOMMANDS.items():
        if _available(sub.module):
            lines.append(f"  {name.ljust(width)}  {sub.summary}")
    lines += ["", "Run 'gapwatch <command> --help' for the options of one command."]
    return "\n".join(lines)


def _available(module: str) -> bool:
    """True when the module exists in this install (without importing it)."""
    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version"}:
        print(f"gapwatch {__version__}")
        return 0
    name, rest = args[0], args[1:]
    sub = SUBCOMMANDS.get(name)
    if sub is None or not _available(sub.module):
        print(f"gapwatch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(sub.module)
    except ModuleNotFoundError as exc:
        print(
            f"gapwatch {name}: missing dependency {exc.name!r}; "
            f"install it with: pip install 'gapwatch[{sub.extra}]'",
            file=sys.stderr,
        )
        return 2
    result: int = module.main(rest)
    return result
