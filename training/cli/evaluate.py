"""``gapwatch evaluate imputation|anomaly``: a bundle against baselines on your data.

Loads files and the bundle, runs :mod:`training.evaluate` / :mod:`training.evaluate_anomaly`,
prints the tables (:mod:`training.evaluate_report`), and writes JSON and markdown reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from training.errors import TrainingError

__all__ = ["ProgressBar", "find_files", "load_model", "main"]

log = logging.getLogger(__name__)

IMPUTATION_EPILOG = """\
how it works:
  Each DATA file is split in time (--split or --test-from). The train part fits the
  baselines and the z scaling; on the test part, observed entries are hidden by each mask
  type (MCAR 20 %%, MCAR 50 %%, one channel silent L ticks, whole device silent L ticks), for
  --seeds seeds, and every method fills them. MAE and RMSE are in z units on the hidden
  entries only; ratios compare with last-observation-carried-forward and linear interpolation.

examples:
  gapwatch evaluate imputation ../shared/data/beijing/Aotizhongxin.csv --bundle models/air
  gapwatch evaluate imputation data.csv --bundle models/air/20261125T120000Z \\
      --test-from 2016-09-01 --mask-types mcar20 device --length 48 --json eval.json
"""

ANOMALY_EPILOG = """\
how it works:
  Every DATA file (or every CSV under a DATA directory) must carry an 'anomaly' label column.
  The first --warmup rows of each file are its training/calibration data (SKAB protocol) and
  are not scored. The VAE scores the rest causally; the baselines (Mahalanobis T², PCA T²+Q,
  IsolationForest) are fitted and thresholded on the same warm-up rows. Metrics are on the
  original rows of all files concatenated: point-wise F1 with false- and missed-alarm rates
  (never point-adjusted), ROC/PR-AUC, NAB score, detection delay, false alarms per hour.

examples:
  gapwatch evaluate anomaly ../shared/data/skab/valve1 ../shared/data/skab/other \\
      --bundle models/skab
  gapwatch evaluate anomaly run3.csv --bundle models/skab --warmup 600 --rescale --markdown eval.md
  gapwatch evaluate anomaly ../shared/data/skab/valve1 ../shared/data/skab/other \\
      --bundle models/skab --rescale --rescale-scale-weight 0.8 --warmup-margin 0.5
"""


ENV_PREFIX = "GAPWATCH_EVAL_"


def _opt(p: argparse.ArgumentParser, flag: str, default: Any = None, **kw: Any) -> None:
    """An option whose default comes from ``GAPWATCH_EVAL_<OPTION>``, then ``default``.

    List options read a comma- or space-separated environment value.
    """
    name = ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")
    env = os.environ.get(name)
    if env is not None:
        if kw.get("action") == "store_true":
            default = env.lower() in {"1", "true", "yes", "on"}
        elif kw.get("nargs") in {"+", "*"}:
            default = env.replace(",", " ").split()
        else:
            default = env
    shown = " ".join(default) if isinstance(default, list) else default
    tail = "" if default in (None, False) else f", default {shown}"
    kw["help"] = f"{kw.get('help', '')} [env {name}{tail}]"
    p.add_argument(flag, default=default, **kw)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="CSV/Parquet files or directories")
    _opt(
        p,
        "--bundle",
        help="bundle version directory, or a model directory (its CURRENT or newest "
        "version); without it only the baselines run",
    )
    _opt(p, "--json", type=Path, help="write the full report as JSON here")
    _opt(p, "--markdown", type=Path, help="write the tables as markdown here")
    _opt(p, "--time-column", help="time column (default: timestamp, datetime, time or ts)")
    _opt(p, "--channels", help="comma-separated channels, when no bundle is given")
    _opt(p, "--tick", type=float, help="tick seconds, when no bundle is given")
    _opt(p, "--no-progress", action="store_true", help="no progress bar")
    _opt(p, "--log-level", "WARNING", help="logging level")


# size: one argparse option after another, each with its help text; no logic to split
def build_parser() -> argparse.ArgumentParser:
    from training.anomaly_baselines import ANOMALY_BASELINES
    from training.baselines import BASELINE_NAMES
    from training.evaluate import MASK_TYPES

    parser = argparse.ArgumentParser(
        prog="gapwatch evaluate",
        description="Evaluate a model bundle against baselines on labelled or gappy data.",
        epilog="Run 'gapwatch evaluate imputation --help' or 'gapwatch evaluate anomaly --help' "
        "for what each measures, its options and examples.",
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="{imputation,anomaly}")
    imp = sub.add_parser(
        "imputation",
        help="fill injected gaps; MAE/RMSE vs mean, LOCF, linear, KNN, iterative, missForest",
        description="Hide observed test entries, fill them with every method, compare errors.",
        epilog=IMPUTATION_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(imp)
    _opt(imp, "--split", 0.8, type=float, help="fraction of each file (oldest first) to train on")
    _opt(imp, "--test-from", help="first test timestamp (ISO 8601, UTC); overrides --split")
    _opt(imp, "--seeds", 3, type=int, help="mask draws per mask type")
    _opt(
        imp,
        "--mask-types",
        list(MASK_TYPES),
        nargs="+",
        metavar="TYPE",
        help=f"any of {', '.join(MASK_TYPES)}",
    )
    _opt(imp, "--length", 24, type=int, help="outage length L in ticks (channel, device)")
    _opt(imp, "--coverage", 0.1, type=float, help="share of test ticks inside injected outages")
    _opt(
        imp,
        "--scale",
        "train",
        choices=("train", "bundle"),
        help="z units: mean/std of the train part, or the bundle's center/scale",
    )
    _opt(
        imp,
        "--baselines",
        list(BASELINE_NAMES),
        nargs="+",
        metavar="NAME",
        help=f"any of {', '.join(BASELINE_NAMES)}",
    )
    _opt(
        imp,
        "--max-fit-rows",
        4000,
        type=int,
        help="train rows sampled to fit KNN/iterative/missForest (speed)",
    )
    _opt(imp, "--forest-trees", 20, type=int, help="ExtraTrees size of missForest (speed)")
    an = sub.add_parser(
        "anomaly",
        help="detect labelled anomalies (SKAB protocol); F1/FAR/MAR, AUC, NAB, delay",
        description="Score labelled files causally with the bundle and causal baselines.",
        epilog=ANOMALY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(an)
    _opt(an, "--warmup", 400, type=int, help="rows per file for fitting/calibration, not scored")
    _opt(
        an,
        "--rescale",
        action="store_true",
        help="the VAE re-estimates each file's channel center/scale on its warm-up rows",
    )
    _opt(
        an,
        "--rescale-scale-weight",
        type=float,
        help="with --rescale, scale = bundle_scale^(1-w) * warm-up_scale^w, w in [0, 1] "
        "(default: the bundle's, else 1; gapwatch bench anomaly uses 0.8)",
    )
    _opt(
        an,
        "--warmup-margin",
        type=float,
        help="widen the VAE's warm-up threshold above the warm-up median by this factor "
        "(default: the bundle's; gapwatch bench anomaly uses 0.5)",
    )
    _opt(
        an,
        "--baselines",
        list(ANOMALY_BASELINES),
        nargs="*",
        metavar="NAME",
        help=f"any of {', '.join(ANOMALY_BASELINES)} (the flag alone: none)",
    )
    _opt(an, "--label-column", help="label column (default: anomaly)")
    _opt(an, "--ewma-alpha", 0.1, type=float, help="baselines' score smoothing")
    _opt(an, "--target-rate", 0.01, type=float, help="baselines' alarm rate on warm-up scores")
    _opt(an, "--nab-window", 60.0, type=float, help="NAB detection window in seconds")
    return parser


def find_files(items: Sequence[str]) -> list[Path]:
    """Files as given; directories expand to their CSV/Parquet files, sorted, recursively."""
    from training.errors import DataError

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.suffix.lower() in {".csv", ".parquet", ".pq"}
            )
            if not found:
                raise DataError(f"{p}: directory has no .csv or .parquet file")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return out


def load_model(path: str) -> Any:
    """Load a bundle from a version directory, or a model directory's current version."""
    from edge.bundle import MANIFEST_FILE, current_version_dir, load_bundle
    from edge.errors import BundleError

    p = Path(path)
    if not (p / MANIFEST_FILE).is_file():
        chosen = current_version_dir(p)
        if chosen is None:
            raise BundleError(str(p), ["no manifest.json here and no version directory below"])
        p = chosen
    return load_bundle(p)


class ProgressBar:
    """A tqdm bar on stderr implementing :class:`training.evaluate.Progress`."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, disable=not enabled, desc=desc, file=sys.stderr)

    def step(self, label: str) -> None:
        self._bar.set_postfix_str(label, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _imputation(args: argparse.Namespace) -> int:
    from training.baselines import BaselineSettings
    from training.data import LoadOptions, load_series, parse_times
    from training.evaluate import ImputationSetup, evaluate_imputation, split_series
    from training.evaluate_report import render_imputation, write_reports

    model = load_model(args.bundle) if args.bundle else None
    setup = ImputationSetup(
        mask_types=tuple(args.mask_types),
        seeds=args.seeds,
        length=args.length,
        coverage=args.coverage,
        scaling=args.scale,
        baselines=tuple(args.baselines),
        settings=BaselineSettings(max_fit_rows=args.max_fit_rows, forest_trees=args.forest_trees),
    )
    options = LoadOptions(
        time_column=args.time_column,
        channels=model.manifest.channel_names if model else _split_list(args.channels),
        tick_seconds=model.manifest.tick_seconds if model else args.tick,
    )
    series = load_series(find_files(args.data), options)
    test_from = None
    if args.test_from:
        import pandas as pd

        test_from = int(
            parse_times(pd.Series([args.test_from], name="--test-from"), "--test-from")[0]
        )
    parts = [split_series(s, fraction=args.split, test_from_ms=test_from) for s in series]
    n_methods = len(setup.baselines or ()) + (2 if model else 0)
    bar = ProgressBar(
        len(parts) * len(setup.mask_types) * setup.seeds * n_methods,
        not args.no_progress,
        "evaluate imputation",
    )
    try:
        report = evaluate_imputation(parts, model, setup, progress=bar, clock=time.perf_counter)
    finally:
        bar.close()
    sys.stdout.write(render_imputation(report) + "\n")
    write_reports(
        report.to_dict(), render_imputation(report, markdown=True), args.json, args.markdown
    )
    return 0


def _split_list(text: str | None) -> tuple[str, ...] | None:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else None


def _anomaly(args: argparse.Namespace) -> int:
    from training.anomaly_baselines import CalibrationSettings
    from training.data import LoadOptions, load_series
    from training.evaluate_anomaly import AnomalySetup, evaluate_anomaly, load_labelled
    from training.evaluate_report import render_anomaly, write_reports

    model = load_model(args.bundle) if args.bundle else None
    paths = find_files(args.data)
    options = LoadOptions(time_column=args.time_column, label_column=args.label_column)
    if model is not None:
        channels, tick = model.manifest.channel_names, model.manifest.tick_seconds
    else:
        first = load_series(
            paths[:1],
            LoadOptions(
                time_column=args.time_column,
                label_column=args.label_column,
                channels=_split_list(args.channels),
                tick_seconds=args.tick,
            ),
        )[0]
        channels, tick = first.channels, first.tick_seconds
    setup = AnomalySetup(
        warmup=args.warmup,
        rescale=(True,) if args.rescale else (False,),
        warmup_margin=None if args.warmup_margin is None else float(args.warmup_margin),
        rescale_scale_weight=(
            None if args.rescale_scale_weight is None else float(args.rescale_scale_weight)
        ),
        baselines=tuple(args.baselines),
        calibration=CalibrationSettings(
            warmup=args.warmup, ewma_alpha=args.ewma_alpha, target_rate=args.target_rate
        ),
        nab_window_s=args.nab_window,
    )
    files = [load_labelled(p, channels, tick, options) for p in paths]
    bar = ProgressBar(len(files), not args.no_progress, "evaluate anomaly")
    try:
        report = evaluate_anomaly(files, model, setup, progress=bar, clock=time.perf_counter)
    finally:
        bar.close()
    sys.stdout.write(render_anomaly(report) + "\n")
    write_reports(report.to_dict(), render_anomaly(report, markdown=True), args.json, args.markdown)
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(levelname)s %(name)s %(message)s"
    )
    from training.evaluate import MASK_TYPES

    if args.task == "imputation":
        bad = [m for m in args.mask_types if m not in MASK_TYPES]
        if bad:
            parser.error(f"unknown mask type(s) {bad}; choose from {', '.join(MASK_TYPES)}")
    try:
        return _imputation(args) if args.task == "imputation" else _anomaly(args)
    except (TrainingError, EdgeError) as exc:
        sys.stderr.write(f"gapwatch evaluate {args.task}: error: {exc}\n")
        return 2
