"""``gapwatch bench e2e``: MQTT publish -> queryable in InfluxDB, whole pipeline vs bare relay.

Two paths get the same synthetic stream, one after the other, on the local stack:

- **pipeline**: ``gapwatch agent`` (align, impute, score, spool) -> Kafka -> ``gapwatch sink``
  -> InfluxDB, as subprocesses with fresh topics and database;
- **baseline**: :mod:`gapwatch.bench.relay`, a bare subscriber writing each message as one line
  of protocol, batched like the sink (5,000 points or 1 s), no imputation or scoring.

The stream: ``--devices`` devices with the bundle's channels (values around its scaling, 2 %
missing), one message = one tick per device. For each path:

1. **latency**: ``--latency-rate`` messages/s for ``--latency-seconds``; per tick, seconds from
   its publish to the first poll (every 0.1 s) whose newest stored tick of that device reached
   it: p50/p99, an upper bound by up to the poll interval. The pipeline's figure includes the
   agent's alignment wait (a tick closes when a reading ``lateness_ticks + 1`` ticks newer
   arrives); the last ticks of each device, closed by the agent's clock, are left out.
2. **sustained ticks/s**: the offered rate grows by x1.6 from ``--start-rate`` in steps of
   ``--step-seconds``; a step passes when every message reached the path and every device's
   last tick was queryable within ``--lag`` seconds of the step's end. The figure is the
   highest rate that passed (a lower bound, within a factor 1.6).

Prints a table (figure, baseline, ratio) and writes JSON (``--json``). Databases and topics are
deleted afterwards. Numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from gapwatch.bench.e2e_paths import BenchPath, PathResult, bench_path
from gapwatch.demo.errors import DemoError
from gapwatch.demo.services import Stack, check_stack

__all__ = ["main"]

ENV = "GAPWATCH_BENCH_"


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def _table(pipe: PathResult, base: PathResult) -> str:
    rows = [
        ("sustained ticks/s", pipe.sustained_ticks_s, base.sustained_ticks_s, "{:,.0f}"),
        ("latency p50 (s)", pipe.latency_p50_s, base.latency_p50_s, "{:.3f}"),
        ("latency p99 (s)", pipe.latency_p99_s, base.latency_p99_s, "{:.3f}"),
    ]
    lines = [f"{'figure':<20} {'pipeline':>12} {'bare relay':>12} {'ratio':>8}"]
    for name, a, b, fmt in rows:
        cells = [fmt.format(v) if math.isfinite(v) else "-" for v in (a, b)]
        if name.startswith("sustained"):  # a ladder that never fell behind: a lower bound
            cells = [
                (">=" if r.capped else "") + c for r, c in zip((pipe, base), cells, strict=True)
            ]
        ratio = _ratio(a, b)
        lines.append(
            f"{name:<20} {cells[0]:>12} {cells[1]:>12} "
            f"{(f'{ratio:.2f}' if math.isfinite(ratio) else '-'):>8}"
        )
    return "\n".join(lines)


def _env(option: str, default: str) -> str:
    return os.environ.get(ENV + option.upper().replace("-", "_"), default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch bench e2e",
        description="MQTT publish -> queryable in InfluxDB: the whole gapwatch pipeline against "
        "a bare MQTT -> InfluxDB relay, measured in the same run on the local stack.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--json",
        type=Path,
        default=Path(_env("json", ".gapwatch/bench/e2e.json")),
        help="where to write the JSON result (%(default)s)",
    )
    p.add_argument(
        "--bundle",
        default=os.environ.get(ENV + "BUNDLE"),
        help="bundle to run (default: the small SKAB bundle shipped in the package)",
    )
    p.add_argument("--devices", type=int, default=int(_env("devices", "20")), help="(%(default)s)")
    p.add_argument(
        "--latency-rate",
        type=float,
        default=float(_env("latency_rate", "200")),
        help="ticks/s while measuring latency (%(default)s)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=float(_env("latency_seconds", "20")),
        help="(%(default)s)",
    )
    p.add_argument(
        "--start-rate",
        type=float,
        default=float(_env("start_rate", "250")),
        help="first offered rate of the throughput ladder, ticks/s (%(default)s)",
    )
    p.add_argument(
        "--max-rate",
        type=float,
        default=float(_env("max_rate", "12000")),
        help="stop the ladder above this rate (%(default)s)",
    )
    p.add_argument(
        "--step-seconds",
        type=float,
        default=float(_env("step_seconds", "8")),
        help="seconds per ladder step (%(default)s)",
    )
    p.add_argument(
        "--lag",
        type=float,
        default=float(_env("lag", "5")),
        help="seconds after a step's end by which its last ticks must be stored (%(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        default=bool(os.environ.get(ENV + "QUICK")),
        help="shorter steps and latency phase (for a smoke run)",
    )
    p.add_argument("--only", choices=("pipeline", "baseline"), help="measure one path only")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.latency_seconds, args.step_seconds = min(args.latency_seconds, 6.0), 4.0
    from edge.cli.score import resolve_bundle_dir
    from edge.errors import EdgeError
    from gapwatch.demo.bundle import load, packaged_dir

    def say(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    try:
        try:
            bundle_dir = resolve_bundle_dir(args.bundle) if args.bundle else packaged_dir()
        except EdgeError as exc:
            raise DemoError(f"--bundle {args.bundle}: {exc}") from exc
        if bundle_dir is None:
            raise DemoError("no bundle: pass --bundle DIR")
        bundle = load(bundle_dir)
        stack = Stack.from_env(os.environ)
        check_stack(stack)
        root = Path(_env("state_dir", ".gapwatch")) / "bench" / "e2e-run"
        results = {}
        for name in ("baseline", "pipeline"):
            if args.only and args.only != name:
                continue
            results[name] = bench_path(BenchPath(name, stack, bundle, root, 0.1), args, say)
    except DemoError as exc:
        sys.stderr.write(f"gapwatch bench e2e: {exc}\n")
        return 1
    pipe = results.get("pipeline", PathResult("pipeline"))
    base = results.get("baseline", PathResult("baseline"))
    m = bundle.manifest
    sys.stdout.write(
        f"gapwatch bench e2e: {args.devices} devices x {len(m.channels)} channels, bundle "
        f"{m.name}/{m.version}; MQTT publish -> queryable in InfluxDB\n"
        + _table(pipe, base)
        + "\n\nsustained: highest offered rate (x1.6 ladder) with nothing lost and every tick "
        f"stored within {args.lag:g} s of its step's end; latency at {args.latency_rate:g} "
        "ticks/s, polled every 0.1 s (an upper bound). Shared machine: rerun to compare.\n"
    )
    out = {
        "benchmark": "e2e",
        "bundle": f"{m.name}/{m.version}",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pipeline": asdict(pipe),
        "baseline": asdict(base),
        "ratios": {
            "sustained": _ratio(pipe.sustained_ticks_s, base.sustained_ticks_s),
            "latency_p50": _ratio(pipe.latency_p50_s, base.latency_p50_s),
            "latency_p99": _ratio(pipe.latency_p99_s, base.latency_p99_s),
        },
        "machine_note": "timings depend on the machine and its load",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    sys.stderr.write(f"wrote {args.json}\n")
    return 0
