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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import FrameType

from edge import settings
from edge.errors import ConfigError as EdgeConfigError
from edge.logs import LOG_FORMATS, configure_logging
from pipeline.dashboard.access import Access, host_name, is_loopback
from pipeline.dashboard.api import MAX_POINTS_CAP, DashboardApi
from pipeline.dashboard.influx_source import InfluxSource
from pipeline.dashboard.server import DashboardServer
from pipeline.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

__all__ = ["ENV_PREFIX", "DashboardConfig", "build_parser", "load_config", "main"]

ENV_PREFIX = "GAPWATCH_DASHBOARD__"

EPILOG = """\
configuration, later ones win: defaults, a TOML file (--config), the environment
GAPWATCH_DASHBOARD__<KEY> (the grammar of the agent and the sink: string values verbatim), flags.
Keys: influx_url, database, username, password, token, host, port, auth_token,
allow_anonymous, allowed_hosts, max_points, refresh_s, log_level, log_format; e.g.
GAPWATCH_DASHBOARD__INFLUX_URL=http://influx:8086, GAPWATCH_DASHBOARD__PASSWORD (keep secrets
out of flags: they show up in ps). token/password are InfluxDB's; auth_token is the page's own.

access: a request whose Host header is not localhost, 127.0.0.1, ::1, the bind address or one
of allowed_hosts gets 421 (DNS rebinding). With auth_token (GAPWATCH_DASHBOARD__AUTH_TOKEN) every
request needs it: open the page once as /?token=<token> (a cookie keeps it), or send
Authorization: Bearer <token>, or Basic auth with the token as the password. A host other than
loopback without auth_token is refused at start unless allow_anonymous = true.

examples:
  # the local stack (deploy/local/stack up) and the database the sink writes
  gapwatch dashboard --influx http://127.0.0.1:18086 --db gapwatch
  # share it on the LAN, behind a token, reached as http://gw-7.plant.lan:8050/?token=...
  export GAPWATCH_DASHBOARD__AUTH_TOKEN="$(cat /etc/gapwatch/dashboard.token)"
  GAPWATCH_DASHBOARD__HOST=0.0.0.0 GAPWATCH_DASHBOARD__ALLOWED_HOSTS=gw-7.plant.lan \
    gapwatch dashboard --db gapwatch

The page needs no internet: scripts, styles and charts come from the installed package.
Replayed history keeps its original timestamps: pick "All data" in the range bar to see it.
The same data in Grafana: deploy/grafana/ (provisioning + dashboard JSON).
"""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class DashboardConfig:
    influx_url: str = "http://127.0.0.1:8086"  # 1.x query API (2.x: its v1-compatible API)
    database: str = "gapwatch"
    username: str = ""
    password: str = ""
    token: str = ""
    host: str = "127.0.0.1"  # this machine only; 0.0.0.0 for every interface
    port: int = 8050  # 0 picks a free one
    auth_token: str = ""  # the page's own token (not InfluxDB's); needed beyond loopback
    allow_anonymous: bool = False  # serve beyond loopback without auth_token (closed networks)
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides loopback and the bind address
    max_points: int = 800
    refresh_s: int = 30
    log_level: str = "INFO"
    log_format: str = "text"


# Flag → config key (the flags are the last, highest-precedence source).
FLAGS = {
    "influx": "influx_url",
    "db": "database",
    "influx_user": "username",
    "influx_password": "password",
    "influx_token": "token",
    "host": "host",
    "port": "port",
    "max_points": "max_points",
    "refresh": "refresh_s",
    "log_level": "log_level",
    "log_format": "log_format",
}


# size: one argparse option after another, each with its help text; no logic to split
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch dashboard",
        description="Serve a local web page with the fleet overview, per-device scores and "
        "channel values (imputed points with their σ bands), and alarm events, read from "
        "the InfluxDB database that `gapwatch sink` writes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DashboardConfig()
    p.add_argument("--config", metavar="TOML", help="a TOML file with the keys below")
    p.add_argument(
        "--influx",
        metavar="URL",
        help=f"InfluxDB base URL, 1.x API (influx_url; default {d.influx_url}; "
        "the local stack listens on http://127.0.0.1:18086)",
    )
    p.add_argument(
        "--db", metavar="NAME", help=f"database the sink writes (database; default {d.database})"
    )
    p.add_argument("--influx-user", metavar="USER", help="InfluxDB user, if auth is on (username)")
    p.add_argument(
        "--influx-password",
        metavar="PASSWORD",
        help="its password; prefer GAPWATCH_DASHBOARD__PASSWORD (flags show up in ps)",
    )
    p.add_argument(
        "--influx-token",
        metavar="TOKEN",
        help="InfluxDB 2.x token for its 1.x-compatible query API (token)",
    )
    p.add_argument(
        "--host",
        help=f"address to listen on (host; default {d.host}, this machine only; "
        "0.0.0.0 for every interface)",
    )
    p.add_argument("--port", help=f"TCP port, 0 picks a free one (port; default {d.port})")
    p.add_argument(
        "--max-points",
        metavar="N",
        help="most points per chart; longer ranges are averaged in time buckets "
        f"(max_points; default {d.max_points})",
    )
    p.add_argument(
        "--refresh",
        metavar="SECONDS",
        help=f"how often the page reloads its data (refresh_s; default {d.refresh_s})",
    )
    p.add_argument(
        "--log-level", help=f"DEBUG logs every request (log_level; default {d.log_level})"
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help=f"text for a terminal, json for a log collector (log_format; default {d.log_format})",
    )
    return p


def _in_range(problems: list[str], key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        problems.append(f"{key} {value} is out of range; use {low}..{high}")


def _check(c: DashboardConfig) -> list[str]:
    problems: list[str] = []
    parts = urllib.parse.urlsplit(c.influx_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(
            f"influx_url {c.influx_url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8086"
        )
    elif parts.username or parts.password:
        problems.append("influx_url must not carry credentials; use username and password")
    if not c.database.strip():
        problems.append("database is empty; name the database the sink writes")
    _in_range(problems, "port", c.port, 0, 65535)
    problems += _access_problems(c)
    _in_range(problems, "max_points", c.max_points, 10, MAX_POINTS_CAP)
    _in_range(problems, "refresh_s", c.refresh_s, 2, 3600)
    if c.log_level.upper() not in LOG_LEVELS:
        problems.append(f"log_level {c.log_level!r} is not one of {' '.join(LOG_LEVELS)}")
    if c.log_format not in (*LOG_FORMATS, "kv"):
        problems.append(f"log_format {c.log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    return problems


MIN_TOKEN = 16


def _access_problems(c: DashboardConfig) -> list[str]:
    problems = []
    if c.auth_token and len(c.auth_token) < MIN_TOKEN:
        problems.append(
            f"auth_token has {len(c.auth_token)} characters; use at least {MIN_TOKEN}, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if c.auth_token and any(ch.isspace() or ord(ch) < 32 for ch in c.auth_token):
        problems.append("auth_token must not contain spaces or control characters")
    if not is_loopback(c.host) and not c.auth_token and not c.allow_anonymous:
        problems.append(
            f"host {c.host!r} serves the dashboard beyond this machine with no login: set "
            "auth_token (GAPWATCH_DASHBOARD__AUTH_TOKEN), or on a closed network "
            "allow_anonymous = true (GAPWATCH_DASHBOARD__ALLOW_ANONYMOUS=true)"
        )
    for h in c.allowed_hosts:
        if h != "*" and host_name(h.lstrip(".") if h.startswith(".") else h) is None:
            problems.append(f"allowed_hosts entry {h!r} is not a host name (e.g. gw-7.plant.lan)")
    return problems


def load_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> DashboardConfig:
    """Defaults, ``--config``, ``GAPWATCH_DASHBOARD__*``, flags; ConfigError lists each problem."""
    env = os.environ if env is None else env
    renamed = sorted(k for k in env if k.startswith("GAPWATCH_DASHBOARD_") and "__" not in k)
    flags = [
        (key, str(getattr(args, name)), "--" + name.replace("_", "-"))
        for name, key in FLAGS.items()
        if getattr(args, name, None) is not None
    ]
    problems = [
        f"{k} is the old name; write {ENV_PREFIX}{k.removeprefix('GAPWATCH_DASHBOARD_')}"
        for k in renamed
    ]
    try:
        config = settings.load(
            DashboardConfig,
            path=args.config,
            env=env,
            prefix=ENV_PREFIX,
            example="gapwatch dashboard --help",
            flags=flags,
            problems=problems,
        )
    except EdgeConfigError as exc:
        raise ConfigError(str(exc)) from exc
    if not problems:
        problems = _check(config)
    if problems:
        raise ConfigError("invalid dashboard config:\n  - " + "\n  - ".join(problems))
    assert isinstance(config, DashboardConfig)
    return replace(
        config,
        influx_url=config.influx_url.rstrip("/"),
        database=config.database.strip(),
        log_level=config.log_level.upper(),
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
        username=config.username or None,
        password=config.password or None,
        token=config.token or None,
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
        access = Access.for_bind(
            config.host, token=config.auth_token, extra_hosts=config.allowed_hosts
        )
        server = DashboardServer((config.host, config.port), api, access=access)
    except OSError as exc:
        _say(
            f"gapwatch dashboard: cannot listen on {config.host}:{config.port} ({exc.strerror}); "
            "pick another --port (GAPWATCH_DASHBOARD__PORT) or stop what uses it",
            err=True,
        )
        return 2
    signal.signal(signal.SIGTERM, _stop)
    login = "token" if config.auth_token else "none"
    _say(
        f"gapwatch dashboard: serving {server.url} from {source.describe()} (login: {login}; "
        f"hosts: {' '.join(access.allowed_hosts)}; Ctrl-C to stop)"
    )
    log.info(
        "dashboard.started",
        extra={
            "url": server.url,
            "source": source.describe(),
            "login": login,
            "allowed_hosts": list(access.allowed_hosts),
        },
    )
    if login == "none" and not is_loopback(config.host):
        log.warning("dashboard.anonymous", extra={"host": config.host})
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("dashboard.stopping")
    finally:
        server.server_close()
    return 0
