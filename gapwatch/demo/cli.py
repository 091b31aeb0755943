"""``gapwatch demo``: the main job in one command (live on the local stack, or ``--offline``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gapwatch.demo.errors import BundleNotFound, DataNotFound, DemoError
from gapwatch.demo.inputs import DATA_ENV, GapSettings, Replay

__all__ = ["main"]

log = logging.getLogger(__name__)
ENV = "GAPWATCH_DEMO_"
T = TypeVar("T")

EPILOG = f"""\
what it does (live, the default; needs the local stack: `make demo` starts it):
  trains a VAE bundle on the normal rows of the replay files (or reuses the one trained on the
  same files with the same settings), starts `gapwatch sink` and `gapwatch agent` with configs
  generated under STATE/run/ and fresh Kafka topics and InfluxDB database, replays every file
  as one MQTT device with injected gaps (random drops, one channel silent for a minute, the
  whole device silent for 30 s), waits until every tick is stored, then prints what InfluxDB
  holds: ticks scored, gaps imputed and their error against the withheld values next to
  last-observation-carried-forward, anomalies against the files' labels, latency from MQTT
  publish to queryable, throughput. Writes STATE/out/report.html and summary.json, and leaves
  the agent, the sink and `gapwatch dashboard` running: `gapwatch demo --down` (make demo-down)
  stops them.

--offline: the same replay through the agent's alignment and scoring core in this process, no
  services and no training (edge extra + matplotlib): scores with --bundle, else the bundle
  `make demo` trained (if it reads the replay's channels), else a bundle shipped in the
  package (the simulated fleet's, or the small SKAB one). Writes STATE/offline/scored.csv,
  report.html and summary.json.

data:
  default: the SKAB development files in $GAPWATCH_DATA_DIR/skab or ../shared/data/skab
  (anomaly-free, valve1/0-15, other/1-9); where they are not (a fresh clone), the embedded
  simulated fleet: --fleet-devices pump rigs (edge.fleet: flow, pressure, current, voltage,
  two vibrations, two temperatures) for --fleet-minutes each, with labelled faults
  (cavitation, bearing wear, sticking valve, leak, sensor drift, stuck-at, spikes), written
  to STATE/fleet/. Live, the fleet is scored by the bundle shipped for it, or with --train by
  one trained on the fleet's simulated fault-free history. Your own: --data FILE_OR_DIR
  (repeatable) or {DATA_ENV}=a.csv{os.pathsep}b.csv: one CSV per device, a time column
  (timestamp, datetime, time or ts), numeric channels, optionally an 'anomaly' column of 0/1
  labels.

  Live, each file's stamps are moved to the present (its newest reading stamped when it is
  sent), so the dashboard's default view shows the run; --keep-time keeps the files' own.

environment:
  every option as {ENV}<OPTION>, e.g. {ENV}SPEED=50, {ENV}OFFLINE=1; the stack's addresses
  from GAPWATCH_MQTT_PORT, GAPWATCH_KAFKA_PORT, GAPWATCH_INFLUX_PORT; the state directory
  from GAPWATCH_STATE_DIR (STATE = $GAPWATCH_STATE_DIR/demo, default .gapwatch/demo).

examples:
  make demo                                  # everything, from a fresh machine
  gapwatch demo --offline                    # no services, well under a minute
  gapwatch demo --data my.csv --speed 20     # your own file, live
  gapwatch demo --down                       # stop the agent, sink and dashboard
"""


def _env(option: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV + option.upper().replace("-", "_"), default)


def _flag(option: str) -> bool:
    return (_env(option) or "").lower() in {"1", "true", "yes", "on"}


# size: one argparse option after another, each with its help text; no logic to split
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch demo",
        description="Replay sensor files through gapwatch end to end and print what it did.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--offline",
        action="store_true",
        default=_flag("offline"),
        help="no services: align, impute and score in this process",
    )
    p.add_argument(
        "--down",
        action="store_true",
        help="stop the agent, sink and dashboard the last live run started",
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="FILE_OR_DIR",
        help=f"CSV files or folders to replay, one file per device [env {DATA_ENV}]",
    )
    p.add_argument(
        "--fleet-devices",
        type=int,
        default=int(_env("fleet_devices", "8") or 8),
        help="pump rigs of the simulated fleet, when it is the data (%(default)s)",
    )
    p.add_argument(
        "--fleet-minutes",
        type=float,
        default=float(_env("fleet_minutes", "60") or 60),
        help="simulated minutes per rig (%(default)s)",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=int(_env("rows", "0") or 0),
        help="replay at most this many rows per file (0 = all)",
    )
    p.add_argument(
        "--bundle",
        default=_env("bundle"),
        help="score with this bundle (version or model directory) instead",
    )
    p.add_argument(
        "--state-dir",
        default=_env("state_dir"),
        help="where the demo keeps bundles, configs, logs and outputs "
        "(default $GAPWATCH_STATE_DIR/demo or .gapwatch/demo)",
    )
    p.add_argument(
        "--out", default=_env("out"), help="output folder (default STATE/out or STATE/offline)"
    )
    g = p.add_argument_group("gaps injected into every file")
    d = GapSettings()
    g.add_argument(
        "--drop-rate",
        type=float,
        default=float(_env("drop_rate", str(d.drop_rate)) or 0),
        help="probability of withholding each value (%(default)s)",
    )
    g.add_argument(
        "--channel-outage",
        type=float,
        default=float(_env("channel_outage", str(d.channel_outage_s)) or 0),
        help="seconds one channel is silent (%(default)s; 0 = none)",
    )
    g.add_argument(
        "--device-outage",
        type=float,
        default=float(_env("device_outage", str(d.device_outage_s)) or 0),
        help="seconds the whole device is silent (%(default)s; 0 = none)",
    )
    g.add_argument("--seed", type=int, default=int(_env("seed", "0") or 0), help="(%(default)s)")
    s = p.add_argument_group("scoring (the agent's [[devices]] rule)")
    s.add_argument(
        "--warmup",
        type=int,
        default=int(_env("warmup", "400") or 0),
        help="ticks per device without alarms, then the threshold is recalibrated "
        "on them, as SKAB's protocol uses each file's first 400 rows (%(default)s)",
    )
    s.add_argument(
        "--rescale",
        action="store_true",
        default=_flag("rescale"),
        help="also re-centre each device's channels on its warm-up ticks",
    )
    live = p.add_argument_group("live run")
    live.add_argument(
        "--duration",
        type=float,
        default=float(_env("duration", "90") or 0),
        help="replay each file in this many seconds, each at its own speed-up (%(default)s)",
    )
    live.add_argument(
        "--speed",
        type=float,
        default=_env("speed"),
        help="instead: one replay speed for every file, x real time; 0 = as fast as possible",
    )
    live.add_argument(
        "--keep-time",
        action="store_true",
        default=_flag("keep_time"),
        help="publish the files' own timestamps (default: re-based to the present)",
    )
    live.add_argument(
        "--train",
        action="store_true",
        default=_flag("train"),
        help="simulated fleet: train on its fault-free history instead of using the bundle "
        "shipped for it",
    )
    live.add_argument(
        "--epochs",
        type=int,
        default=int(_env("epochs", "0") or 0) or None,
        help="training epochs of the demo bundle (30; the simulated fleet's: 10)",
    )
    live.add_argument(
        "--no-dashboard",
        action="store_true",
        default=_flag("no_dashboard"),
        help="do not start gapwatch dashboard",
    )
    live.add_argument(
        "--dashboard-port",
        type=int,
        default=int(_env("dashboard_port", "8050") or 0),
        help="port for the dashboard (a free one if taken; %(default)s)",
    )
    p.add_argument(
        "--no-progress", action="store_true", default=_flag("no_progress"), help="no progress bars"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead")
    p.add_argument("-v", "--verbose", action="store_true", help="log events to stderr")
    return p


def _state_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    root = os.environ.get("GAPWATCH_STATE_DIR")
    return (Path(root) if root else Path(".gapwatch")) / "demo"


class _Progress:
    """Stage lines and tqdm bars on stderr (plain lines where tqdm is not installed)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._t0 = time.monotonic()

    def stage(self, text: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - self._t0:5.0f} s] {text}\n")
        sys.stderr.flush()

    def bar(self, total: int, desc: str, unit: str) -> Callable[[int], None]:
        try:
            from tqdm import tqdm
        except ImportError:
            return lambda n: None
        bar = tqdm(
            total=total,
            desc=f"        {desc}",
            unit=unit,
            disable=not self.enabled,
            file=sys.stderr,
            leave=False,
        )

        def advance(n: int) -> None:
            if n < 0:
                bar.close()
            elif n:
                bar.update(n)

        return advance

    def each(self, items: Sequence[T], desc: str) -> Iterable[T]:
        step = self.bar(len(items), desc, "file")
        for item in items:
            yield item
            step(1)
        step(-1)


SOURCE_GIVEN, SOURCE_SKAB, SOURCE_FLEET = "given", "skab", "fleet"


def _fleet_settings(args: argparse.Namespace) -> Any:
    from gapwatch.demo.fleet import FleetSettings

    if args.fleet_devices < 1 or args.fleet_minutes <= 0:
        raise DataNotFound("--fleet-devices must be >= 1 and --fleet-minutes > 0")
    return FleetSettings(devices=args.fleet_devices, minutes=args.fleet_minutes, seed=args.seed)


def _files(
    args: argparse.Namespace, state: Path, progress: _Progress | None = None
) -> tuple[list[Path], str]:
    """``(files, where they came from: SOURCE_*)``: --data, else SKAB, else the fleet."""
    from gapwatch.demo.inputs import default_data_dir, find_files, skab_files

    given = args.data or [x for x in os.environ.get(DATA_ENV, "").split(os.pathsep) if x]
    if given:
        return find_files(given), SOURCE_GIVEN
    try:
        return skab_files(default_data_dir()), SOURCE_SKAB
    except DataNotFound:
        from gapwatch.demo.fleet import fleet_replay

    fleet = _fleet_settings(args)
    files = fleet_replay(state, fleet)
    if progress is not None:
        progress.stage(
            f"no SKAB data at {(default_data_dir() / 'skab').resolve()} and no --data: "
            f"replaying the embedded simulated fleet ({fleet.devices} pump rigs, "
            f"{fleet.minutes:g} min each, labelled faults; files in {files[0].parent})"
        )
    return files, SOURCE_FLEET


def _replays(args: argparse.Namespace, files: list[Path]) -> list[Replay]:
    from gapwatch.demo.inputs import load_replays

    gaps = GapSettings(
        drop_rate=args.drop_rate,
        channel_outage_s=args.channel_outage,
        device_outage_s=args.device_outage,
        seed=args.seed,
    )
    return load_replays(files, gaps, max_rows=args.rows)


def _write_outputs(out: Path, title: str, result: Any, extra: list[tuple[str, str]]) -> Path:
    from gapwatch.demo.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary
    (out / "summary.json").write_text(
        json.dumps(asdict(summary), indent=2, default=_jsonable) + "\n", encoding="utf-8"
    )
    return write_report(out / "report.html", title, summary, result.outcomes, extra)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _offline(args: argparse.Namespace, state: Path, progress: _Progress) -> int:
    from gapwatch.demo.bundle import FLEET_NAME, PACKAGED_NAME, load, resolve_offline
    from gapwatch.demo.offline import run_offline, write_csv
    from gapwatch.demo.summary import render_text

    t0 = time.monotonic()
    files, source = _files(args, state, progress)
    replays = _replays(args, files)
    path, origin = resolve_offline(
        args.bundle,
        state,
        packaged=FLEET_NAME if source == SOURCE_FLEET else PACKAGED_NAME,
        channels=replays[0].series.channels,
    )
    bundle = load(path)
    progress.stage(f"bundle {bundle.model_id} ({origin})")
    progress.stage(f"replaying {len(replays)} files through alignment, imputation, scoring")
    result = run_offline(
        replays,
        bundle,
        clock=time.perf_counter,
        warmup=args.warmup,
        rescale=args.rescale,
        progress=lambda it: progress.each(list(it), "devices"),
    )
    out = Path(args.out) if args.out else state / "offline"
    rows = write_csv(out / "scored.csv", result.outcomes)
    progress.stage("writing the HTML report")
    report = _write_outputs(out, "gapwatch demo (offline)", result, [])
    extra = [
        ("scored ticks", f"{out / 'scored.csv'} ({rows:,} rows)"),
        ("report", str(report)),
        ("wall time", f"{time.monotonic() - t0:.1f} s"),
    ]
    if args.json:
        print(json.dumps(asdict(result.summary), default=_jsonable, indent=2))
    else:
        print(f"gapwatch demo --offline: {len(replays)} devices, bundle {bundle.model_id}")
        print(render_text(result.summary, extra))
    return 0


def _online_bundle(
    args: argparse.Namespace, state: Path, progress: _Progress, files: list[Path], source: str
) -> Path:
    """--bundle, else the bundle shipped for the fleet, else one trained (or reused) here."""
    from gapwatch.demo.bundle import (
        FLEET_NAME,
        TrainSettings,
        ensure_trained,
        packaged_dir,
        resolve_offline,
    )

    shipped = packaged_dir(FLEET_NAME) if source == SOURCE_FLEET and not args.train else None
    if args.bundle:
        path, _ = resolve_offline(args.bundle, state)
        progress.stage(f"bundle {path} (--bundle)")
        return path
    if shipped is not None:
        progress.stage(
            f"bundle {shipped} (shipped for the simulated fleet; --train trains one on its history)"
        )
        return shipped
    train_files = files
    if source == SOURCE_FLEET:
        from gapwatch.demo.fleet import FLEET_TRAIN, fleet_history

        train_files = fleet_history(state, _fleet_settings(args))
        what = f"the simulated fleet's fault-free history ({len(train_files)} rigs)"
        settings = replace(FLEET_TRAIN, epochs=args.epochs or FLEET_TRAIN.epochs)
    else:
        what = f"the normal rows of {len(files)} files"
        name = {SOURCE_SKAB: "skab"}.get(source, "demo")
        settings = TrainSettings(name=name, epochs=args.epochs or 30)
    progress.stage(
        f"demo bundle: training on {what}, unless the last one was trained on the same "
        "files and settings"
    )
    path, reused = ensure_trained(train_files, state, settings, progress=not args.no_progress)
    progress.stage(f"bundle {path} ({'reused' if reused else 'trained'})")
    return path


def _online(args: argparse.Namespace, state: Path, progress: _Progress) -> int:
    from gapwatch.demo.bundle import load
    from gapwatch.demo.online import OnlineSettings, run_online
    from gapwatch.demo.services import Stack
    from gapwatch.demo.summary import render_text

    t0 = time.monotonic()
    files, source = _files(args, state, progress)
    replays = _replays(args, files)
    bundle = load(_online_bundle(args, state, progress, files, source))
    result = run_online(
        replays,
        bundle,
        state,
        Stack.from_env(os.environ),
        OnlineSettings(
            speed=float(args.speed or 0.0),
            duration_s=None if args.speed is not None else args.duration,
            warmup=args.warmup,
            rescale=args.rescale,
            dashboard=not args.no_dashboard,
            dashboard_port=args.dashboard_port,
            rebase=not args.keep_time,
        ),
        progress=progress,
        now=lambda: datetime.now(UTC),
    )
    out = Path(args.out) if args.out else state / "out"
    progress.stage("writing the HTML report")
    report = _write_outputs(out, "gapwatch demo", result, [])
    extra = [("report", str(report))]
    if result.dashboard_url:
        extra.append(
            (
                "dashboard",
                result.dashboard_url
                if not args.keep_time
                else f"{result.dashboard_url} (pick 'All data': --keep-time kept the files' "
                "own timestamps)",
            )
        )
    extra.append(("stop", "make demo-down (or gapwatch demo --down)"))
    extra.append(("wall time", f"{time.monotonic() - t0:.0f} s"))
    if args.json:
        print(json.dumps(asdict(result.summary), default=_jsonable, indent=2))
    else:
        print(
            f"gapwatch demo: {len(replays)} devices -> MQTT -> agent -> Kafka -> sink -> "
            f"InfluxDB (database {result.names.database})"
        )
        print(render_text(result.summary, extra))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    state = _state_dir(args.state_dir)
    progress = _Progress(enabled=not args.no_progress and sys.stderr.isatty())
    try:
        if args.down:
            from gapwatch.demo.online import down

            stopped = down(state)
            print(f"gapwatch demo --down: stopped {', '.join(stopped) or 'nothing (none running)'}")
            return 0
        return _offline(args, state, progress) if args.offline else _online(args, state, progress)
    except DemoError as exc:
        print(f"gapwatch demo: {exc}", file=sys.stderr)
        if isinstance(exc, DataNotFound | BundleNotFound):
            return 2
        if not args.offline and not args.down:
            print("gapwatch demo: `gapwatch demo --down` stops what it started", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "gapwatch demo: interrupted; `gapwatch demo --down` stops what it started",
            file=sys.stderr,
        )
        return 130
