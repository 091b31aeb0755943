"""``gapwatch dashboard``: serve the built-in dashboard of stored readings, imputations and alarms.

Builds one validated :class:`DashboardConfig` from flags, then environment, then defaults, wires
:class:`~pipeline.dashboard.influx_source.InfluxSource` into the API and the HTTP server, and
serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType

from edge.logs import LOG_FORMATS, configure_logging
from pipeline.dashboard.api import MAX_POINTS_CAP, DashboardApi
from pipeline.dashboard.influx_source import InfluxSource
from pipeline.dashboard.server import DashboardServer
from pipeline.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

__all__ = ["DashboardConfig", "build_parser", "load_config", "main"]

EPILOG = """\
environment (a flag given on the command line wins):
  GAPWATCH_DASHBOARD_INFLUX_URL, GAPWATCH_DASHBOARD_INFLUX_DATABASE,
  GAPWATCH_DASHBOARD_INFLUX_USERNAME, GAPWATCH_DASHBOARD_INFLUX_PASSWORD,
  GAPWATCH_DASHBOARD_INFLUX_TOKEN, GAPWATCH_DASHBOARD_HOST, GAPWATCH_DASHBOARD_PORT,
  GAPWATCH_DASHBOARD_MAX_POINTS, GAPWATCH_DASHBOARD_REFRESH_S, GAPWATCH_LOG_LEVEL,
  GAPWATCH_LOG_FORMAT

examples:
  # the local stack (deploy/local/stack up) and the database the sink writes
  gapwatch dashboard --influx http://127.0.0.1:18086 --db gapwatch
  # share it on the LAN (read-only page, no login: only on a trusted network)
  GAPWATCH_DASHBOARD_HOST=0.0.0.0 gapwatch dashboard --db gapwatch

The page needs no internet: scripts, styles and charts come from the installed package.
Replayed history keeps its original timestamps: pick "All data" in the range bar to see it.
The same data in Grafana: deploy/grafana/ (provisioning + dashboard JSON).
"""


@dataclass(frozen=True)
class DashboardConfig:
    influx_url: str
    database: str
    username: str | None
    password: str | None
    token: str | None
    host: str
    port: int
    max_points: int
    refresh_s: int
    log_level: str
    log_format: str


def _env_default(env: Mapping[str, str], name: str, default: int) -> str:
    return env.get(name, str(default))


# size: one argparse option after another, each with its help text; no logic to split
def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(
        prog="gapwatch dashboard",
        description="Serve a local web page with the fleet overview, per-device scores and "
        "channel values (imputed points with their σ bands), and alarm events, read from "
        "the InfluxDB database that `gapwatch sink` writes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--influx",
        default=env.get("GAPWATCH_DASHBOARD_INFLUX_URL", "http://127.0.0.1:8086"),
        metavar="URL",
        help="InfluxDB base URL, 1.x API (env GAPWATCH_DASHBOARD_INFLUX_URL; default %(default)s; "
        "the local stack listens on http://127.0.0.1:18086)",
    )
    p.add_argument(
        "--db",
        default=env.get("GAPWATCH_DASHBOARD_INFLUX_DATABASE", "gapwatch"),
        metavar="NAME",
        help="database the sink writes "
        "(env GAPWATCH_DASHBOARD_INFLUX_DATABASE; default %(default)s)",
    )
    p.add_argument(
        "--influx-user",
        default=env.get("GAPWATCH_DASHBOARD_INFLUX_USERNAME"),
        metavar="USER",
        help="InfluxDB user, if auth is on (env GAPWATCH_DASHBOARD_INFLUX_USERNAME)",
    )
    p.add_argument(
        "--influx-password",
        default=env.get("GAPWATCH_DASHBOARD_INFLUX_PASSWORD"),
        metavar="PASSWORD",
        help="its password; prefer the env GAPWATCH_DASHBOARD_INFLUX_PASSWORD "
        "(flags show up in ps)",
    )
    p.add_argument(
        "--influx-token",
        default=env.get("GAPWATCH_DASHBOARD_INFLUX_TOKEN"),
        metavar="TOKEN",
        help="InfluxDB 2.x token for its 1.x-compatible query API "
        "(env GAPWATCH_DASHBOARD_INFLUX_TOKEN)",
    )
    p.add_argument(
        "--host",
        default=env.get("GAPWATCH_DASHBOARD_HOST", "127.0.0.1"),
        help="address to listen on (env GAPWATCH_DASHBOARD_HOST; default %(default)s, "
        "this machine only; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--port",
        default=_env_default(env, "GAPWATCH_DASHBOARD_PORT", 8050),
        help="TCP port, 0 picks a free one (env GAPWATCH_DASHBOARD_PORT; default %(default)s)",
    )
    p.add_argument(
        "--max-points",
        default=_env_default(env, "GAPWATCH_DASHBOARD_MAX_POINTS", 800),
        metavar="N",
        help="most points per chart; longer ranges are averaged in time buckets "
        "(env GAPWATCH_DASHBOARD_MAX_POINTS; default %(default)s)",
    )
    p.add_argument(
        "--refresh",
        default=_env_default(env, "GAPWATCH_DASHBOARD_REFRESH_S", 30),
        metavar="SECONDS",
        help="how often the page reloads its data (env GAPWATCH_DASHBOARD_REFRESH_S; "
        "default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default=env.get("GAPWATCH_LOG_LEVEL", "INFO"),
        help="DEBUG logs every request (env GAPWATCH_LOG_LEVEL; default %(default)s)",
    )
    p.add_argument(
        "--log-format",
        default=env.get("GAPWATCH_LOG_FORMAT", "text"),
        choices=LOG_FORMATS,
        help="text for a terminal, json for a log collector (env GAPWATCH_LOG_FORMAT; "
        "default %(default)s)",
    )
    return p


def _as_int(value: object, flag: str, env: str, low: int, high: int) -> int:
    try:
        number = int(str(value))
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r} is not an integer (also read from {env})") from exc
    if not low <= number <= high:
        raise ConfigError(f"{flag} {number} is out of range; use {low}..{high} (or unset {env})")
    return number


def load_config(args: argparse.Namespace) -> DashboardConfig:
    """Validate the parsed flags; ConfigError names the bad flag, its value and the fix."""
    url = str(args.influx).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"--influx {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8086 "
            "(also read from GAPWATCH_DASHBOARD_INFLUX_URL)"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "--influx must not carry credentials; use --influx-user/--influx-password"
        )
    if not str(args.db).strip():
        raise ConfigError(
            "--db is empty; name the database the sink writes (GAPWATCH_DASHBOARD_INFLUX_DATABASE)"
        )
    level = str(args.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level {args.log_level!r} is not one of DEBUG INFO WARNING ERROR")
    return DashboardConfig(
        influx_url=url,
        database=str(args.db).strip(),
        username=args.influx_user or None,
        password=args.influx_password or None,
        token=args.influx_token or None,
        host=str(args.host),
        port=_as_int(args.port, "--port", "GAPWATCH_DASHBOARD_PORT", 0, 65535),
        max_points=_as_int(
            args.max_points, "--max-points", "GAPWATCH_DASHBOARD_MAX_POINTS", 10, MAX_POINTS_CAP
        ),
        refresh_s=_as_int(args.refresh, "--refresh", "GAPWATCH_DASHBOARD_REFRESH_S", 2, 3600),
        log_level=level,
        log_format=str(args.log_format),
    )


def _say(text: str, *, err: bool = False) -> None:
    """CLI output (this module is the CLI; logging goes to handlers configured below)."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        _say(f"gapwatch dashboard: {exc}", err=True)
        return 2
    configure_logging(config.log_level, config.log_format)
    source = InfluxSource(
        config.influx_url,
        config.database,
        username=config.username,
        password=config.password,
        token=config.token,
    )
    api = DashboardApi(
        source,
        clock=lambda: datetime.now(UTC),
        max_points=config.max_points,
        refresh_s=config.refresh_s,
    )
    try:
        source.ping()
    except StorageError as exc:
        log.warning("dashboard.influx_unreachable", extra={"error": str(exc)})
        _say(
            f"gapwatch dashboard: warning: {exc}\n  serving anyway; the page shows the error "
            "until InfluxDB answers.",
            err=True,
        )
    try:
        server = DashboardServer((config.host, config.port), api)
    except OSError as exc:
        _say(
            f"gapwatch dashboard: cannot listen on {config.host}:{config.port} ({exc.strerror}); "
            "pick another --port (GAPWATCH_DASHBOARD_PORT) or stop what uses it",
            err=True,
        )
        return 2
    signal.signal(signal.SIGTERM, _stop)
    _say(f"gapwatch dashboard: serving {server.url} from {source.describe()} (Ctrl-C to stop)")
    log.info("dashboard.started", extra={"url": server.url, "source": source.describe()})
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("dashboard.stopping")
    finally:
        server.server_close()
    return 0
