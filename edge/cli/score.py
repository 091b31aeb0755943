"""``gapwatch score``: impute and score a CSV/Parquet file offline with a model bundle.

Needs only the edge extra (numpy, onnxruntime): never imports torch or pandas.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np

from edge.bundle import MANIFEST_FILE, Bundle, current_version_dir, load_bundle
from edge.errors import EdgeError, InputError
from edge.series import SeriesResult, score_series
from edge.table import read_table
from edge.window import to_grid

__all__ = ["main", "resolve_bundle_dir"]

log = logging.getLogger(__name__)
ENV_PREFIX = "GAPWATCH_SCORE_"
LABEL_COLUMNS = ("anomaly", "changepoint")

EPILOG = """\
output (CSV, one row per tick from the first to the last input timestamp):
  timestamp            RFC 3339, UTC
  <channel>            original units: the observed value, or the imputed one
  <channel>_imputed    1 where the value was imputed
  <channel>_sigma      σ of an imputed value (original units), empty where observed
  score                NLL per observed entry of the tick (empty when nothing was observed)
  threshold            alarm threshold ('on') in force; is_anomaly: 1 while the alarm is on
  top_channels         channels that drove the score, '|'-separated
  smoothed, warmup     the EWMA-smoothed score; 1 during the warm-up ticks
  anomaly, changepoint label columns of the input, passed through (empty on ticks without a row)

  Scores and alarms are always causal (what a live agent emits). --mode backfill reports the
  delayed back-fill imputation where one exists.

bundle:
  a version directory (holding manifest.json), or a model directory: then the version named
  in its CURRENT file, else the newest one.

environment:
  GAPWATCH_SCORE_BUNDLE, GAPWATCH_SCORE_MODE, GAPWATCH_SCORE_WARMUP, GAPWATCH_SCORE_RESCALE=1,
  GAPWATCH_SCORE_TIME_COLUMN, GAPWATCH_SCORE_BATCH; a flag on the command line wins.

example:
  gapwatch score ../shared/data/skab/other/1.csv --bundle models/anomaly-free \\
      --warmup 400 --rescale --out scored.csv
"""


def _env(option: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + option.upper().replace("-", "_"), default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch score",
        description="Impute gaps and score anomalies in a CSV/Parquet file with a model bundle.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="CSV (separator sniffed) or Parquet file")
    p.add_argument("--bundle", default=_env("bundle"), help="bundle version or model directory")
    p.add_argument("--out", default=_env("out"), help="output CSV (default: stdout)")
    p.add_argument(
        "--mode",
        choices=("causal", "backfill"),
        default=_env("mode", "causal"),
        help="imputation reported: causal (default) or the delayed back-fill",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=_env("warmup", "0"),
        help="first N ticks: no alarms, then recalibrate the threshold on them (default 0)",
    )
    p.add_argument(
        "--rescale",
        action="store_true",
        default=_env("rescale", "") in {"1", "true", "yes"},
        help="re-estimate each channel's center/scale from the warm-up ticks",
    )
    p.add_argument("--time-column", default=_env("time-column"), help="name of the time column")
    p.add_argument("--batch", type=int, default=_env("batch", "64"), help="windows per model call")
    p.add_argument("-v", "--verbose", action="store_true", help="log a summary to stderr")
    return p


def resolve_bundle_dir(path: str | Path) -> Path:
    """A version directory as given, or the CURRENT/newest version of a model directory."""
    base = Path(path)
    if (base / MANIFEST_FILE).is_file():
        return base
    chosen = current_version_dir(base)
    if chosen is None:
        raise InputError(
            f"{base}: neither a bundle version directory (no {MANIFEST_FILE}) nor a model "
            "directory holding versions; pass --bundle ROOT/NAME or ROOT/NAME/VERSION"
        )
    return chosen


def _fmt(value: float) -> str:
    return "" if not math.isfinite(value) else repr(float(value))


def _rfc3339(ts_ms: int, millis: bool) -> str:
    stamp = datetime.fromtimestamp(ts_ms / 1000.0, UTC)
    return stamp.isoformat(timespec="milliseconds" if millis else "seconds").replace("+00:00", "Z")


@contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None or path == "-":
        yield sys.stdout
        return
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        yield fh


def write_csv(out: TextIO, result: SeriesResult, labels: dict[str, np.ndarray]) -> None:
    """The documented output table (see ``gapwatch score --help``)."""
    ch = result.channels
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "timestamp",
            *ch,
            *(f"{c}_imputed" for c in ch),
            *(f"{c}_sigma" for c in ch),
            "score",
            "threshold",
            "is_anomaly",
            "top_channels",
            "smoothed",
            "warmup",
            *labels,
        ]
    )
    millis = bool(np.any(result.ts_ms % 1000))
    for i, ts in enumerate(result.ts_ms):
        writer.writerow(
            [
                _rfc3339(int(ts), millis),
                *(_fmt(v) for v in result.values[i]),
                *(str(int(v)) for v in result.imputed[i]),
                *(_fmt(v) for v in result.sigma[i]),
                _fmt(result.score[i]),
                _fmt(result.threshold[i]),
                str(int(result.anomaly[i])),
                "|".join(result.top_channels[i]),
                _fmt(result.smoothed[i]),
                str(int(result.warmup[i])),
                *(_fmt(col[i]) for col in labels.values()),
            ]
        )


def score_file(
    path: str | Path,
    bundle: Bundle,
    *,
    mode: str,
    warmup: int,
    rescale: bool,
    time_column: str | None = None,
    batch: int = 64,
) -> tuple[SeriesResult, dict[str, np.ndarray]]:
    """Read, grid, and score one file; returns the result and the gridded label columns."""
    manifest = bundle.manifest
    table = read_table(path, time_column=time_column)
    if table.ts_ms.size == 0:
        raise InputError(f"{path}: no rows")
    values = table.matrix(manifest.channel_names)
    tick_ms = max(1, round(manifest.tick_seconds * 1000))
    grid_ts, grid = to_grid(table.ts_ms, values, tick_ms)
    labels: dict[str, np.ndarray] = {}
    for name in table.header:
        if (
            name.lower() in LABEL_COLUMNS
            and name in table.columns
            and name not in manifest.channel_names
        ):
            labels[name] = to_grid(table.ts_ms, table.columns[name][:, None], tick_ms)[1][:, 0]
    result = score_series(
        bundle,
        grid,
        grid_ts,
        mode="backfill" if mode == "backfill" else "causal",
        warmup=warmup,
        rescale=rescale,
        batch=batch,
    )
    return result, labels


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not args.bundle:
        parser.error("--bundle is required (or set GAPWATCH_SCORE_BUNDLE)")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup} must be 0 or more ticks")
    if args.batch < 1:
        parser.error(f"--batch {args.batch} must be at least 1")
    started = time.perf_counter()
    try:
        bundle = load_bundle(resolve_bundle_dir(args.bundle))
        result, labels = score_file(
            args.file,
            bundle,
            mode=args.mode,
            warmup=args.warmup,
            rescale=args.rescale,
            time_column=args.time_column,
            batch=args.batch,
        )
        with _output(args.out) as out:
            write_csv(out, result, labels)
    except InputError as exc:
        sys.stderr.write(f"gapwatch score: bad input: {exc}\n")
        return 2
    except (EdgeError, OSError) as exc:
        sys.stderr.write(f"gapwatch score: failed: {exc}\n")
        return 1
    seconds = time.perf_counter() - started
    log.info(
        "score.done",
        extra={
            "ticks": len(result.ts_ms),
            "anomalies": int(result.anomaly.sum()),
            "imputed": int(result.imputed.sum()),
            "seconds": round(seconds, 3),
            "bundle": bundle.model_id,
        },
    )
    if args.verbose:
        sys.stderr.write(
            f"scored {len(result.ts_ms)} ticks with {bundle.model_id} in {seconds:.2f} s: "
            f"{int(result.imputed.sum())} entries imputed, "
            f"{int(result.anomaly.sum())} ticks in alarm\n"
        )
    return 0
