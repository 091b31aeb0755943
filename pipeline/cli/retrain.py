"""``gapwatch retrain``: train a challenger from InfluxDB history; promote it if not worse."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from edge.errors import BundleError
from edge.logs import configure_logging
from pipeline.cli.signing import add_promotion_signing_args, promotion_signing
from pipeline.config import add_influx_arguments, influx_settings_from_args
from pipeline.errors import PipelineError
from pipeline.history import format_rfc3339, parse_duration, parse_time, resolve_time_range
from pipeline.influx import connect_reader
from pipeline.registry import Registry, announcer_from_url
from pipeline.retrain import RetrainSettings, Tolerance, retrain

__all__ = ["main", "run"]

EPILOG = """\
Steps: export the observed history [--from, --holdout-from) for training and
[--holdout-from, --to) for judging; train a challenger (the champion's channels, tick and
window); score challenger and champion the way the agent does on the same held-out ticks with
the same hidden entries; promote the challenger unless it is worse beyond the tolerances:

  imputation MAE   challenger <= champion x (1 + --tol-mae)
  false alarms     challenger <= champion + --tol-far      (share of scored normal ticks)
  F1 (--labels)    challenger >= champion - --tol-f1

The winner becomes <registry>/<name>/<version>/ and CURRENT; a loser is kept in
<registry>/<name>/.rejected/. With --announce, running agents get a retained MQTT message and
reload at once. Ticks the champion flagged are left out of the training data unless
--include-flagged. With --signing-key (GAPWATCH_SIGNING_KEY) the promoted version and the
CURRENT pointer are signed; a registry whose agents verify signatures (--public-key /
GAPWATCH_BUNDLE_PUBLIC_KEY, or a model already signed) is refused before training without one.

exit status: 0 promoted, 3 not promoted (champion kept), 1 error, 2 usage.

examples:
  gapwatch retrain --influx http://influx:8086 --db gapwatch --registry /srv/models \\
      --name skab --from 2024-05-01 --to 2024-06-01 --holdout-from 2024-05-25
  GAPWATCH_ANNOUNCE_MQTT=mqtt://broker:1883 gapwatch retrain --registry /srv/models --name skab
"""

PROMOTED, NOT_PROMOTED = 0, 3


# size: one argparse option after another, each with its help text; no logic to split
def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="gapwatch retrain",
        description="Train a challenger from InfluxDB history and promote it if it is not worse.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_influx_arguments(p)
    p.add_argument(
        "--registry",
        type=Path,
        default=Path(env.get("GAPWATCH_REGISTRY_DIR", "models")),
        help="registry root [env GAPWATCH_REGISTRY_DIR, default ./models]",
    )
    p.add_argument(
        "--name",
        default=env.get("GAPWATCH_MODEL_NAME", "gapwatch"),
        help="model name [env GAPWATCH_MODEL_NAME, default %(default)s]",
    )
    p.add_argument(
        "--from",
        dest="start",
        default=env.get("GAPWATCH_RETRAIN_FROM"),
        help="history start (RFC 3339, date or epoch ms) [default: first reading]",
    )
    p.add_argument(
        "--to",
        dest="end",
        default=env.get("GAPWATCH_RETRAIN_TO"),
        help="history end, exclusive [default: just after the last reading]",
    )
    p.add_argument(
        "--holdout-from",
        default=env.get("GAPWATCH_RETRAIN_HOLDOUT_FROM"),
        help="start of the judging period [default: the last 20%% of the range]",
    )
    p.add_argument("--site", default=env.get("GAPWATCH_RETRAIN_SITE"), help="only this site")
    p.add_argument("--device", default=env.get("GAPWATCH_RETRAIN_DEVICE"), help="only this device")
    p.add_argument("--chunk", default="1d", help="history read per query [default %(default)s]")
    p.add_argument(
        "--epochs",
        type=int,
        default=int(env.get("GAPWATCH_RETRAIN_EPOCHS", "30")),
        help="training epochs [env GAPWATCH_RETRAIN_EPOCHS, default %(default)s]",
    )
    p.add_argument("--window", type=int, default=None, help="[default: the champion's]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tol-mae",
        type=float,
        default=float(env.get("GAPWATCH_RETRAIN_TOL_MAE", "0.05")),
        help="relative MAE tolerance [env GAPWATCH_RETRAIN_TOL_MAE, default %(default)s]",
    )
    p.add_argument(
        "--tol-far",
        type=float,
        default=float(env.get("GAPWATCH_RETRAIN_TOL_FAR", "0.005")),
        help="absolute false-alarm tolerance [env GAPWATCH_RETRAIN_TOL_FAR, default %(default)s]",
    )
    p.add_argument(
        "--tol-f1",
        type=float,
        default=float(env.get("GAPWATCH_RETRAIN_TOL_F1", "0.02")),
        help="absolute F1 tolerance [env GAPWATCH_RETRAIN_TOL_F1, default %(default)s]",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="CSV/Parquet with timestamp, [device,] anomaly for F1 on the held-out part",
    )
    p.add_argument(
        "--include-flagged", action="store_true", help="train on ticks the champion flagged too"
    )
    p.add_argument(
        "--announce",
        default=env.get("GAPWATCH_ANNOUNCE_MQTT", ""),
        metavar="URL",
        help="mqtt://host:port[/topic/{name}] [env GAPWATCH_ANNOUNCE_MQTT]",
    )
    add_promotion_signing_args(p)
    p.add_argument("--report", type=Path, default=None, help="write the evaluation as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--log-level", default=env.get("GAPWATCH_LOG_LEVEL", "WARNING"))
    return p


def run(args: argparse.Namespace) -> int:
    try:
        key, required = promotion_signing(args)
    except BundleError as exc:
        raise PipelineError(str(exc)) from exc
    registry = Registry(args.registry, args.name, signing_key=key, require_signed=required)
    registry.check_signing(f"retrain and promote {args.name}")
    settings = influx_settings_from_args(args)
    client = connect_reader(settings)
    try:
        span = resolve_time_range(client, args.start, args.end, args.site, args.device)
        if span is None:
            raise PipelineError(f"database {settings.database!r} holds no readings")
        start, end = span
        holdout_from = (
            parse_time(args.holdout_from) if args.holdout_from else end - (end - start) // 5
        )
        retrain_settings = RetrainSettings(
            name=args.name,
            start_ms=start,
            end_ms=end,
            holdout_from_ms=holdout_from,
            site=args.site,
            device=args.device,
            chunk_ms=parse_duration(args.chunk),
            epochs=args.epochs,
            window=args.window,
            seed=args.seed,
            tolerance=Tolerance(args.tol_mae, args.tol_far, args.tol_f1),
            exclude_flagged=not args.include_flagged,
            labels=args.labels,
            progress=not args.quiet,
        )
        announcer = announcer_from_url(args.announce) if args.announce else None
        print(
            f"training {args.name} on {format_rfc3339(start)} .. {format_rfc3339(holdout_from)}, "
            f"judging on .. {format_rfc3339(end)}",
            file=sys.stderr,
        )
        outcome = retrain(
            client,
            registry,
            retrain_settings,
            clock=lambda: datetime.now(UTC),
            announcer=announcer,
        )
    finally:
        client.close()
    if args.report is not None:
        args.report.write_text(json.dumps(outcome.report(), indent=2) + "\n", encoding="utf-8")
    verdict = "PROMOTED" if outcome.decision.promote else "NOT promoted (champion kept)"
    print(f"{args.name}/{outcome.version}: {verdict}")
    for reason in outcome.decision.reasons:
        print(f"  {reason}")
    print(f"  -> {outcome.path}")
    return PROMOTED if outcome.decision.promote else NOT_PROMOTED


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    configure_logging(args.log_level, "text")
    try:
        return run(args)
    except PipelineError as exc:
        print(f"gapwatch retrain: {exc}", file=sys.stderr)
        return 1
