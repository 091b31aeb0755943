"""``gapwatch history export``: observed readings from InfluxDB to CSV or Parquet, in chunks."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.logs import configure_logging
from pipeline.config import add_influx_arguments, influx_settings_from_args
from pipeline.errors import PipelineError
from pipeline.history import (
    HistoryQuery,
    export_history,
    find_channels,
    format_rfc3339,
    parse_duration,
    resolve_time_range,
)
from pipeline.influx import connect_reader

__all__ = ["main", "run_export"]

EPILOG = """\
Only what the sensors observed is exported: values the agent imputed come back empty, so a
model retrained on the file never learns from its own guesses. Rows are read one --chunk of
time at a time, so a long history never sits in memory at once.

Columns: timestamp (RFC 3339, UTC), site, device, one per channel, and with --anomaly the
alarm flag (0/1) the model raised. The file loads with the training loader:
  gapwatch train --data FILE.csv --device-column device ...

examples:
  gapwatch history export --influx http://influx:8086 --db gapwatch \\
      --from 2024-05-01 --to 2024-06-01 --device pump-3 --out pump3-may.parquet
  GAPWATCH_INFLUX_URL=http://influx:8086 gapwatch history export --out all.csv --chunk 6h
  # InfluxDB 2.x/3.x: the v1-compatible API (2.x: `influx v1 dbrp create` for the bucket)
  GAPWATCH_INFLUX_TOKEN=... gapwatch history export --influx http://influx2:8086 --db sensors \\
      --out all.csv
"""


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="gapwatch history",
        description="Read sensor history back out of InfluxDB.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="export")
    e = sub.add_parser(
        "export",
        help="observed readings to CSV/Parquet",
        description="Export observed readings (imputed entries as missing) to CSV or Parquet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_influx_arguments(e)
    e.add_argument(
        "--from",
        dest="start",
        default=env.get("GAPWATCH_HISTORY_FROM"),
        metavar="T",
        help="start, inclusive: RFC 3339, a date (UTC) or epoch ms [default: first reading]",
    )
    e.add_argument(
        "--to",
        dest="end",
        default=env.get("GAPWATCH_HISTORY_TO"),
        metavar="T",
        help="end, exclusive [default: just after the last reading]",
    )
    e.add_argument("--site", default=env.get("GAPWATCH_HISTORY_SITE"), help="only this site")
    e.add_argument("--device", default=env.get("GAPWATCH_HISTORY_DEVICE"), help="only this device")
    e.add_argument(
        "--chunk",
        default=env.get("GAPWATCH_HISTORY_CHUNK", "1d"),
        help="time read per query: 1d, 6h, 30m ... [default %(default)s]",
    )
    e.add_argument(
        "--channels",
        default=env.get("GAPWATCH_HISTORY_CHANNELS"),
        help="comma-separated channels, in this order [default: all, sorted]",
    )
    e.add_argument("--anomaly", action="store_true", help="add the model's alarm flag (0/1)")
    e.add_argument("--out", required=True, type=Path, help="FILE.csv or FILE.parquet")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--log-level", default=env.get("GAPWATCH_LOG_LEVEL", "WARNING"))
    return p


def run_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    settings = influx_settings_from_args(args)
    client = connect_reader(settings)
    try:
        span = resolve_time_range(client, args.start, args.end, args.site, args.device)
        if span is None:
            raise PipelineError(f"database {settings.database!r} holds no readings to export")
        start, end = span
        query = HistoryQuery(
            start_ms=start,
            end_ms=end,
            site=args.site,
            device=args.device,
            chunk_ms=parse_duration(args.chunk),
            with_anomaly=args.anomaly,
        )
        channels = (
            tuple(c.strip() for c in args.channels.split(",") if c.strip())
            if args.channels
            else find_channels(client)
        )
        n_chunks = -(-(end - start) // query.chunk_ms)
        with tqdm(total=n_chunks, unit="chunk", disable=args.quiet, file=sys.stderr) as bar:

            def advance(a: int, b: int) -> None:
                bar.set_postfix_str(format_rfc3339(a)[:19])
                bar.update(1)

            stats = export_history(client, query, args.out, channels, on_chunk=advance)
    finally:
        client.close()
    print(
        f"wrote {stats.rows} rows x {len(stats.channels)} channels to {args.out} "
        f"({format_rfc3339(start)} .. {format_rfc3339(end)}, {stats.chunks} chunks; "
        f"{stats.observed} observed values, {stats.masked} imputed values left empty)"
    )
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    configure_logging(args.log_level, "text")
    try:
        return run_export(args)
    except PipelineError as exc:
        print(f"gapwatch history: {exc}", file=sys.stderr)
        return 1
