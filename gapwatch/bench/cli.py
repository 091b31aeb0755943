"""``gapwatch bench <name>``: benchmarks, each against a baseline measured in the same run.

Benchmarks register in :data:`BENCHMARKS` as ``name -> "module:function"``; the function takes
``argv: list[str]`` and returns an exit code. The module is imported only when its benchmark
runs, so a benchmark whose module is not built yet (or not installed) is reported as such
instead of breaking the others. Every benchmark prints a table (its figure, the baseline, their
ratio) and writes JSON (``--json``, default ``.gapwatch/bench/<name>.json``).

Numbers depend on the machine and its load: report them with the machine they came from.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "BENCHMARKS",
    "MACHINE_NOTE",
    "Benchmark",
    "add_train_args",
    "bench_env",
    "bench_parser",
    "data_dir",
    "fmt",
    "main",
    "targets_table",
    "train_for_bench",
    "with_bundle",
    "write_json",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
MACHINE_NOTE = "timings depend on the machine and its load; rerun on the target to compare"


@dataclass(frozen=True)
class Benchmark:
    target: str  # "package.module:function"
    summary: str


BENCHMARKS: dict[str, Benchmark] = {
    "imputation": Benchmark(
        "gapwatch.bench.training:imputation",
        "Beijing air quality: VAE gap filling vs LOCF, linear, missForest (MAE, z units)",
    ),
    "anomaly": Benchmark(
        "gapwatch.bench.training:anomaly",
        "SKAB: causal VAE detection vs Mahalanobis T² (F1, FAR, MAR) and the leaderboard",
    ),
    "inference": Benchmark(
        "gapwatch.bench.training:inference",
        "µs per tick through the bundle (onnxruntime, 1 thread), batch 64 vs 1 vs numpy",
    ),
    "decode": Benchmark(
        "gapwatch.bench.decode:main", "µs per MQTT message for each input format vs gapwatch JSON"
    ),
    "agent": Benchmark("gapwatch.bench.agent:main", "edge agent throughput: MQTT in, Kafka out"),
    "sink": Benchmark("gapwatch.bench.sink:main", "sink throughput: Kafka into InfluxDB"),
    "e2e": Benchmark(
        "gapwatch.bench.e2e:main", "end to end: MQTT publish to InfluxDB vs a bare relay"
    ),
    "soak": Benchmark(
        "gapwatch.bench.soak:main", "long agent run: memory, fds, throughput drift, duplicates"
    ),
}


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is not installed
        return False


def _usage() -> str:
    width = max(len(n) for n in BENCHMARKS)
    lines = [
        "usage: gapwatch bench <name> [options]   (gapwatch bench <name> --help for options)",
        "",
        "Benchmarks, each against a baseline measured in the same run; results also as JSON.",
        "",
        "benchmarks:",
    ]
    for name, b in BENCHMARKS.items():
        built = _module_exists(b.target.split(":")[0])
        lines.append(f"  {name.ljust(width)}  {b.summary}{'' if built else '  [not built yet]'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        sys.stdout.write(_usage() + "\n")
        return 0
    name, rest = argv[0], argv[1:]
    bench = BENCHMARKS.get(name)
    if bench is None:
        sys.stderr.write(f"gapwatch bench: unknown benchmark {name!r}\n\n{_usage()}\n")
        return 2
    module_name, func_name = bench.target.split(":")
    if not _module_exists(module_name):
        sys.stderr.write(
            f"gapwatch bench {name}: not built yet ({module_name} is not in this install)\n"
        )
        return 2
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        sys.stderr.write(
            f"gapwatch bench {name}: missing dependency {exc.name!r}; "
            "install it with: pip install 'gapwatch[all]'\n"
        )
        return 2
    func: Callable[[list[str]], int] = getattr(module, func_name)
    return func(rest)


# -- pieces shared by the benchmarks (gapwatch.bench.training and later ones) ----------


def bench_env(option: str, default: str | None = None) -> str | None:
    return os.environ.get("GAPWATCH_BENCH_" + option.upper().replace("-", "_"), default)


def data_dir() -> Path:
    """``$GAPWATCH_DATA_DIR``, else ``<repo>/../shared/data``."""
    given = os.environ.get("GAPWATCH_DATA_DIR")
    return Path(given) if given else REPO_ROOT / ".." / "shared" / "data"


def bench_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"gapwatch bench {name}",
        description=description,
        epilog=f"Every option can also be set as GAPWATCH_BENCH_<OPTION>; data come from "
        f"$GAPWATCH_DATA_DIR (default {REPO_ROOT / '..' / 'shared' / 'data'}).",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=bench_env("json", f".gapwatch/bench/{name}.json"),
        help="where to write the JSON result (default %(default)s)",
    )
    p.add_argument(
        "--quick", action="store_true", default=bool(bench_env("quick")), help="smaller, faster run"
    )
    p.add_argument(
        "--bundle", default=bench_env("bundle"), help="use this bundle instead of training"
    )
    p.add_argument(
        "--out", default=bench_env("out"), help="keep the trained bundle under this root"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def add_train_args(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument(
        "--epochs",
        type=int,
        default=bench_env("epochs", str(epochs)),
        help="training epochs when no --bundle (default %(default)s; --quick: 2)",
    )
    p.add_argument("--window", type=int, default=bench_env("window"), help="VAE window (ticks)")
    p.add_argument("--latent", type=int, default=bench_env("latent"), help="VAE latent size")
    p.add_argument("--hidden", type=int, default=bench_env("hidden"), help="VAE hidden width")
    p.add_argument(
        "--context", type=int, default=bench_env("context"), help="VAE blind-spot context ticks"
    )
    p.add_argument(
        "--base",
        choices=("none", "interp"),
        default=bench_env("base"),
        help="VAE decoder base (see gapwatch train --help; default: train's default)",
    )


def train_for_bench(
    sources: Sequence[Any], name: str, args: argparse.Namespace, root: Path
) -> Path:
    from training.train import TrainConfig
    from training.train_bundle import BundleConfig, default_version, train_bundle

    tc = TrainConfig()
    tc = replace(tc, epochs=2 if args.quick else args.epochs)
    for knob in ("window", "latent", "hidden", "context", "base"):
        if getattr(args, knob):
            tc = replace(tc, **{knob: getattr(args, knob)})
    cfg = BundleConfig(
        train=tc,
        name=name,
        version=default_version(datetime.now(UTC)),
        progress=not args.no_progress,
    )
    return train_bundle(sources, root, cfg)


def with_bundle(
    args: argparse.Namespace, train: Callable[[Path], Path], run: Callable[[Any, float], int]
) -> int:
    """Load ``--bundle`` or train one (into ``--out`` or a temporary root), then ``run``."""
    from training.cli.evaluate import load_model

    if args.bundle:
        return run(load_model(args.bundle), 0.0)
    with tempfile.TemporaryDirectory(prefix="gapwatch-bench-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        t0 = time.perf_counter()
        path = train(root)
        seconds = time.perf_counter() - t0
        sys.stderr.write(f"trained {path} in {seconds:.0f} s\n")
        return run(load_model(str(path)), seconds)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    sys.stderr.write(f"wrote {path}\n")


def fmt(v: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def targets_table(rows: list[tuple[str, float, float, bool]]) -> str:
    from training.evaluate_report import table

    cells = [[t, fmt(got), fmt(limit), "met" if ok else "MISSED"] for t, got, limit, ok in rows]
    return table(["target", "measured", "limit", "status"], cells)
