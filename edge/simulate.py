"""``gapwatch simulate``: replay CSV files as MQTT devices, with injected gaps and their truth.

One file is one device. SKAB files (``;``-separated, ``datetime`` column) and the Beijing files
(``,``-separated, ``timestamp`` column) are read with the standard ``csv`` module and numpy
(no pandas: this runs with the ``edge`` extra only). Label columns (``anomaly``,
``changepoint``) are not published. Timestamps without a zone are read as UTC (or at
``--utc-offset`` hours). Each row becomes one JSON message on ``sensors/{site}/{device}``::

    {"ts": <original time, epoch ms>, "values": {"Pressure": 0.27, "Current": null, ...}}

so the agent's grid follows the data's own time (event time) at any ``--speed``. Gaps injected
on purpose (``--drop-rate``, ``--outage``, ``--device-outage``) are left out of the messages and
their true values written to ``--truth`` (``device,ts_ms,channel,value``), so imputation can be
scored against them. Cells empty in the file are sent as ``null`` and are not in the truth.

``--fleet N`` needs no file: N simulated pump rigs (:mod:`edge.fleet`, deterministic from
``--seed``) run for ``--duration`` simulated seconds, stamped with the wall clock. At
``--speed 1`` each reading is stamped when it is sent; faster, the run is the recent past
caught up with: the last reading is stamped when it is sent and every earlier one a tick
before the next, so no stamp is ever in the future. Transport gaps: random drops
(``--drop-rate``), one channel silent for ``--channel-outage`` seconds and the whole device
silent for ``--device-outage`` seconds (each device its own channel, at 30 % and 60 % of the
run). ``--write-history DIR --days D`` writes D simulated days as CSV files instead (with
labelled faults, or ``--normal`` for fault-free history to train on), and sends nothing.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import logging
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import InputError
from edge.table import find_time_column

__all__ = [
    "Gaps",
    "Outage",
    "Series",
    "catch_up_start",
    "device_name",
    "fleet_gaps",
    "main",
    "plan_gaps",
    "read_series",
]

log = logging.getLogger(__name__)
LABEL_COLUMNS = {"anomaly", "changepoint"}


@dataclass(frozen=True)
class Series:
    device: str
    ts_ms: NDArray[np.int64]  # [N]
    channels: tuple[str, ...]
    values: NDArray[np.float64]  # [N, C], NaN = empty cell


@dataclass(frozen=True)
class Outage:
    channel: str | None  # None: the whole device is silent
    start: float | str  # seconds after the file's first row, or an ISO time
    seconds: float


@dataclass(frozen=True)
class Gaps:
    withheld: NDArray[np.bool_]  # [N, C] observed cells left out of the messages
    silent: NDArray[np.bool_]  # [N] rows not published at all


def device_name(path: Path) -> str:
    """The file stem, with its folders if it starts with a digit: skab/valve1/0 -> skab-valve1-0."""
    parts = [path.stem]
    if path.stem[:1].isdigit():
        parts = [p for p in path.parent.parts[-2:] if p not in {"/", ""}] + parts
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-") or "device"


def _parse_time(text: str, offset: timezone) -> int:
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=offset)
    return round(dt.timestamp() * 1000)


def read_series(
    path: Path, utc_offset_h: float = 0.0, max_rows: int = 0, skip_rows: int = 0
) -> Series:
    """Read one CSV file; raise ValueError naming the file and the problem."""
    offset = timezone(timedelta(hours=utc_offset_h))
    with path.open(newline="", encoding="utf-8") as fh:
        head = fh.readline()
        delimiter = ";" if head.count(";") > head.count(",") else ","
        fh.seek(0)
        reader = csv.reader(fh, delimiter=delimiter)
        header = [h.strip() for h in next(reader)]
        try:
            tcol = header.index(find_time_column(header, None, str(path)))
        except InputError as exc:  # the table reader's rule (edge.table.TIME_COLUMNS)
            raise ValueError(str(exc)) from exc
        cols = [i for i, h in enumerate(header) if i != tcol and h.lower() not in LABEL_COLUMNS]
        ts: list[int] = []
        rows: list[list[float]] = []
        for n, row in enumerate(reader):
            if n < skip_rows or not row:
                continue
            if max_rows and len(ts) >= max_rows:
                break
            try:
                ts.append(_parse_time(row[tcol], offset))
                rows.append([float(row[i]) if row[i].strip() else math.nan for i in cols])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}: row {n + 2} is not readable: {exc}") from exc
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(cols))
    return Series(
        device_name(path), np.array(ts, dtype=np.int64), tuple(header[i] for i in cols), values
    )


def parse_outage(text: str, per_channel: bool) -> Outage:
    """``CHANNEL:START:SECONDS`` or ``START:SECONDS`` (START: seconds after row one, or ISO)."""
    if per_channel:
        channel, sep, rest = text.partition(":")
        if not sep or not channel:
            raise ValueError(f"--outage {text!r}: use CHANNEL:START:SECONDS")
    else:
        channel, rest = "", text
    start, sep, seconds = rest.rpartition(":")
    try:
        secs = float(seconds)
    except ValueError:
        secs = -1.0
    if not sep or not start or secs <= 0:
        form = "CHANNEL:START:SECONDS" if per_channel else "START:SECONDS"
        raise ValueError(f"{text!r}: use {form} with SECONDS > 0")
    try:
        begin: float | str = float(start)
    except ValueError:
        begin = start
    return Outage(channel or None, begin, secs)


def plan_gaps(
    series: Series, drop_rate: float, outages: Sequence[Outage], rng: np.random.Generator
) -> Gaps:
    """Which observed cells to withhold and which rows to silence (pure, seeded)."""
    observed = ~np.isnan(series.values)
    withheld = (rng.random(series.values.shape) < drop_rate) & observed
    silent = np.zeros(len(series.ts_ms), dtype=bool)
    if len(series.ts_ms) == 0:
        return Gaps(withheld, silent)
    t0 = int(series.ts_ms[0])
    for o in outages:
        start = (
            t0 + round(o.start * 1000) if isinstance(o.start, float) else _parse_time(o.start, UTC)
        )
        inside = (series.ts_ms >= start) & (series.ts_ms < start + round(o.seconds * 1000))
        if o.channel is None:
            silent |= inside
        elif o.channel in series.channels:
            withheld[:, series.channels.index(o.channel)] |= (
                inside & observed[:, series.channels.index(o.channel)]
            )
        else:
            raise ValueError(
                f"--outage channel {o.channel!r} is not in {series.device}: {list(series.channels)}"
            )
    withheld[silent] = observed[silent]
    return Gaps(withheld, silent)


def messages(series: Series, gaps: Gaps) -> Iterator[tuple[int, dict[str, object]]]:
    """``(ts_ms, payload)`` per published row."""
    for i in range(len(series.ts_ms)):
        if gaps.silent[i]:
            continue
        values: dict[str, object] = {}
        for c, name in enumerate(series.channels):
            v = series.values[i, c]
            if gaps.withheld[i, c]:
                continue
            values[name] = None if math.isnan(v) else float(v)
        if values:
            yield int(series.ts_ms[i]), {"ts": int(series.ts_ms[i]), "values": values}


def fleet_gaps(
    series: Sequence[Series],
    drop_rate: float,
    channel_outage_s: float,
    device_outage_s: float,
    rng: np.random.Generator,
) -> list[Gaps]:
    """Transport gaps of a simulated fleet: drops everywhere, device k's channel k silent for
    ``channel_outage_s`` at 30 % of its run, the whole device silent for ``device_outage_s``
    at 60 % (0 s: none)."""
    out: list[Gaps] = []
    for k, s in enumerate(series):
        span = (int(s.ts_ms[-1]) - int(s.ts_ms[0])) / 1000.0 if len(s.ts_ms) else 0.0
        planned = [
            Outage(s.channels[k % len(s.channels)], 0.3 * span, channel_outage_s),
            Outage(None, 0.6 * span, device_outage_s),
        ]
        out.append(plan_gaps(s, drop_rate, [o for o in planned if o.seconds > 0], rng))
    return out


def catch_up_start(now_ms: int, ticks: int, tick_ms: int, speed: float) -> int:
    """The first stamp of a live run of ``ticks`` ticks sent at ``speed`` from ``now_ms``.

    Tick k is sent at ``now + k * tick / speed`` (all at once when ``speed`` is 0) and stamped
    so that the last tick's stamp is its send time and stamps are ``tick_ms`` apart: real time
    at speed 1, the recent past catching up with the clock when faster. Never in the future.
    """
    span = (ticks - 1) * tick_ms
    sent_last = now_ms + (round(span / speed) if speed > 0 else 0)
    return sent_last - span


def write_truth(path: Path, all_series: Sequence[Series], all_gaps: Sequence[Gaps]) -> int:
    n = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["device", "ts_ms", "channel", "value"])
        for s, g in zip(all_series, all_gaps, strict=True):
            for i, c in zip(*np.nonzero(g.withheld), strict=True):
                w.writerow([s.device, int(s.ts_ms[i]), s.channels[c], repr(float(s.values[i, c]))])
                n += 1
    return n


# size: one argparse option after another, each with its help text; no logic to split
def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="gapwatch simulate",
        description="Replay CSV files (one file = one device) as JSON messages over MQTT, "
        "keeping their original timestamps, with gaps injected and their true values saved; "
        "or, with --fleet N, stream a simulated fleet of pump rigs stamped with the wall clock "
        "(or write its history as CSV with --write-history).",
        epilog="examples:\n"
        "  gapwatch simulate ../shared/data/skab/valve1/0.csv --mqtt 127.0.0.1:1883 --speed 10 \\\n"
        "      --outage Pressure:120:30 --device-outage 300:20 --truth truth.csv --seed 1\n"
        "  gapwatch simulate a.csv b.csv --speed 0    # as fast as possible\n"
        "  gapwatch simulate --fleet 8 --speed 10 --duration 900 --drop-rate 0.01\n"
        "  gapwatch simulate --fleet 8 --write-history hist/ --days 1 --normal\n\n"
        "START is seconds after the file's first row, or an ISO time. Environment:\n"
        "GAPWATCH_SIM_MQTT, GAPWATCH_SIM_SITE, GAPWATCH_SIM_SPEED, GAPWATCH_SIM_SEED,\n"
        "GAPWATCH_SIM_FLEET, GAPWATCH_SIM_DURATION.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", type=Path, metavar="FILE")
    f = p.add_argument_group("simulated fleet (no files)")
    f.add_argument(
        "--fleet",
        type=int,
        default=int(env("GAPWATCH_SIM_FLEET", "0")),
        metavar="N",
        help="simulate N pump rigs instead of replaying files (edge.fleet)",
    )
    f.add_argument(
        "--duration",
        type=float,
        default=float(env("GAPWATCH_SIM_DURATION", "3600")),
        help="simulated seconds of a live fleet run (%(default)s)",
    )
    f.add_argument(
        "--no-faults", action="store_true", help="live: no fault segments, normal operation only"
    )
    f.add_argument(
        "--channel-outage",
        type=float,
        default=60.0,
        help="seconds one channel of each device is silent, live (%(default)s; 0 = none)",
    )
    f.add_argument(
        "--silent-device",
        type=float,
        default=30.0,
        help="seconds each device is silent, live (%(default)s; 0 = none)",
    )
    f.add_argument("--labels", type=Path, help="live: write the fault segments here (JSON)")
    f.add_argument(
        "--write-history",
        type=Path,
        metavar="DIR",
        help="write --days of history as one CSV per device (and fleet.json) and exit",
    )
    f.add_argument("--days", type=float, default=1.0, help="simulated days to write (%(default)s)")
    f.add_argument("--normal", action="store_true", help="history without faults (to train on)")
    f.add_argument(
        "--start",
        help="history: first stamp, ISO 8601 (default: midnight UTC --days before today)",
    )
    p.add_argument(
        "--mqtt", default=env("GAPWATCH_SIM_MQTT", "127.0.0.1:1883"), help="HOST:PORT of the broker"
    )
    p.add_argument(
        "--site", default=env("GAPWATCH_SIM_SITE", "sim"), help="site level of the topic"
    )
    p.add_argument("--topic", default="sensors/{site}/{device}", help="topic template")
    p.add_argument(
        "--speed",
        type=float,
        default=float(env("GAPWATCH_SIM_SPEED", "1")),
        help="replay speed (1 = real time, 10 = ten times faster, 0 = as fast as possible)",
    )
    p.add_argument(
        "--drop-rate", type=float, default=0.0, help="probability of dropping each value"
    )
    p.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="CHANNEL:START:SECONDS",
        help="withhold one channel for a stretch (repeatable)",
    )
    p.add_argument(
        "--device-outage",
        action="append",
        default=[],
        metavar="START:SECONDS",
        help="silence the whole device for a stretch (repeatable)",
    )
    p.add_argument("--truth", type=Path, help="write withheld true values here (CSV)")
    p.add_argument("--seed", type=int, default=int(env("GAPWATCH_SIM_SEED", "0")))
    p.add_argument("--rows", type=int, default=0, help="publish at most this many rows per file")
    p.add_argument(
        "--skip", type=int, default=0, help="skip this many rows at the start of each file"
    )
    p.add_argument("--utc-offset", type=float, default=0.0, help="zone of naive timestamps, hours")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--client-id", default="", help="MQTT client id (default: random)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not 0 <= args.drop_rate < 1 or args.speed < 0:
        sys.stderr.write("gapwatch simulate: --drop-rate must be in [0, 1) and --speed >= 0\n")
        return 2
    if args.fleet or args.write_history:
        return _fleet(args)
    if not args.files:
        sys.stderr.write("gapwatch simulate: give CSV files to replay, or --fleet N\n")
        return 2
    try:
        outages = [parse_outage(o, True) for o in args.outage]
        outages += [parse_outage(o, False) for o in args.device_outage]
        host, _, port = args.mqtt.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--mqtt {args.mqtt!r}: use HOST:PORT")
        rng = np.random.default_rng(args.seed)
        series = [read_series(f, args.utc_offset, args.rows, args.skip) for f in args.files]
        gaps = [plan_gaps(s, args.drop_rate, outages, rng) for s in series]
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"gapwatch simulate: {exc}\n")
        return 2
    if args.truth:
        n = write_truth(args.truth, series, gaps)
        sys.stdout.write(f"truth: {n} withheld values -> {args.truth}\n")
    topics = [args.topic.format(site=args.site, device=s.device) for s in series]
    streams = [
        _stream(k, topics[k], s, g) for k, (s, g) in enumerate(zip(series, gaps, strict=True))
    ]
    total = sum(int((~g.silent).sum()) for g in gaps)
    sent = _publish(heapq.merge(*streams), host, int(port), args, total)
    sys.stdout.write(f"published {sent} messages from {len(series)} devices to {args.mqtt}\n")
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from edge.fleet import FleetConfig, simulate_fleet, write_history

    if args.files:
        sys.stderr.write("gapwatch simulate: --fleet simulates its devices; give no FILE\n")
        return 2
    config = FleetConfig(devices=args.fleet or 8, seed=args.seed)
    tick_ms = round(config.tick_seconds * 1000)
    if args.write_history:
        if args.days <= 0:
            sys.stderr.write("gapwatch simulate: --days must be > 0\n")
            return 2
        ticks = round(args.days * 86_400 / config.tick_seconds)
        if args.start:
            try:
                start_ms = _parse_time(args.start, UTC)
            except ValueError as exc:
                sys.stderr.write(f"gapwatch simulate: --start {args.start!r}: {exc}\n")
                return 2
        else:
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            start_ms = round((today - timedelta(days=args.days)).timestamp() * 1000)
        runs = simulate_fleet(config, start_ms, ticks, faults=not args.normal, stream=0)
        paths = write_history(args.write_history, runs, config)
        sys.stdout.write(
            f"wrote {len(paths)} devices x {ticks:,} ticks "
            f"({'normal' if args.normal else 'with labelled faults'}) to {args.write_history}\n"
        )
        return 0
    if args.duration < 2 * config.tick_seconds:
        sys.stderr.write("gapwatch simulate: --duration must cover at least two ticks\n")
        return 2
    host, _, port = args.mqtt.rpartition(":")
    if not host or not port.isdigit():
        sys.stderr.write(f"gapwatch simulate: --mqtt {args.mqtt!r}: use HOST:PORT\n")
        return 2
    ticks = int(args.duration / config.tick_seconds)
    start_ms = catch_up_start(round(time.time() * 1000), ticks, tick_ms, args.speed)
    start_ms -= start_ms % tick_ms
    runs = simulate_fleet(config, start_ms, ticks, faults=not args.no_faults, stream=1)
    series = [Series(r.device, r.ts_ms, r.channels, r.values) for r in runs]
    rng = np.random.default_rng([args.seed, 1])
    gaps = fleet_gaps(series, args.drop_rate, args.channel_outage, args.silent_device, rng)
    if args.truth:
        n = write_truth(args.truth, series, gaps)
        sys.stdout.write(f"truth: {n} withheld values -> {args.truth}\n")
    if args.labels:
        segments = [
            {**f.__dict__, "start_ms": int(r.ts_ms[f.start]), "stop_ms": int(r.ts_ms[f.stop - 1])}
            for r in runs
            for f in r.faults
        ]
        args.labels.write_text(json.dumps(segments, indent=2) + "\n", encoding="utf-8")
    topics = [args.topic.format(site=args.site, device=s.device) for s in series]
    streams = [
        _stream(k, topics[k], s, g) for k, (s, g) in enumerate(zip(series, gaps, strict=True))
    ]
    total = sum(int((~g.silent).sum()) for g in gaps)
    sent = _publish(heapq.merge(*streams), host, int(port), args, total)
    sys.stdout.write(
        f"published {sent} messages from a simulated fleet of {len(series)} devices "
        f"to {args.mqtt}\n"
    )
    return 0


def _stream(
    k: int, topic: str, series: Series, gaps: Gaps
) -> Iterator[tuple[int, int, str, dict[str, object]]]:
    """One device's ``(ts, device index, topic, payload)`` items, for :func:`heapq.merge`."""
    for ts, payload in messages(series, gaps):
        yield ts, k, topic, payload


def _publish(
    items: Iterator[tuple[int, int, str, dict[str, object]]],
    host: str,
    port: int,
    args: argparse.Namespace,
    total: int,
) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id or f"gapwatch-sim-{uuid.uuid4().hex[:8]}",
    )
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    bar = _progress(total)
    sent, last = 0, None
    t0_wall, t0_event = time.monotonic(), None
    try:
        for ts, _k, topic, payload in items:
            if args.speed > 0:
                t0_event = ts if t0_event is None else t0_event
                delay = (ts - t0_event) / 1000.0 / args.speed - (time.monotonic() - t0_wall)
                if delay > 0:
                    time.sleep(delay)
            last = client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=args.qos)
            sent += 1
            if bar is not None:
                bar.update(1)
        if last is not None:
            last.wait_for_publish(timeout=60)
    finally:
        if bar is not None:
            bar.close()
        client.disconnect()
        client.loop_stop()
    return sent


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the edge extra has no tqdm: no bar, the final line still reports
        return None
    return tqdm(total=total, unit="msg", disable=not sys.stderr.isatty())
