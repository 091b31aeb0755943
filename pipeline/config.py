"""The sink's validated configuration: a TOML file, then environment overrides.

Every key of every section can be overridden by ``GAPWATCH_SINK__<SECTION>__<KEY>`` (upper
case, double underscores, as the agent's ``GAPWATCH_AGENT__...``), for example
``GAPWATCH_SINK__INFLUX__PASSWORD`` or ``GAPWATCH_SINK__KAFKA__BOOTSTRAP``. Errors name the
field, the bad value and the fix. The commented example is ``deploy/pipeline/sink.toml``.

:class:`InfluxSettings` is shared by ``sink``, ``history``, ``retrain`` and the benchmark.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge import settings
from edge.errors import ConfigError as EdgeConfigError
from pipeline.errors import ConfigError

ENV_PREFIX = "GAPWATCH_SINK__"
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
INFLUX_KINDS = ("v1", "v2")

__all__ = [
    "ENV_PREFIX",
    "BatchSettings",
    "InfluxSettings",
    "KafkaSettings",
    "MetricsSettings",
    "RetrySettings",
    "SinkConfig",
    "add_influx_arguments",
    "check_influx",
    "influx_settings_from_args",
    "load_sink_config",
]


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "gapwatch.scored"
    group_id: str = "gapwatch-sink"
    deadletter_topic: str = "gapwatch.deadletter"
    client_id: str = "gapwatch-sink"
    auto_offset_reset: str = "earliest"
    max_poll_records: int = 10_000
    fetch_max_bytes: int = 64 * 1024 * 1024
    max_partition_fetch_bytes: int = 16 * 1024 * 1024
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    check_crcs: bool = False
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)
    sasl_username: str = ""
    sasl_password: str = ""  # give it as GAPWATCH_SINK__KAFKA__SASL_PASSWORD, not in the file
    ssl_cafile: str = ""  # CA of the brokers' certificates (empty: the system trust store)


@dataclass(frozen=True)
class InfluxSettings:
    kind: str = "v1"  # v1: InfluxDB 1.x HTTP API; v2: InfluxDB 2.x/3.x through influxdb-client
    url: str = "http://127.0.0.1:8086"
    database: str = "gapwatch"  # v1 only
    retention_policy: str = ""  # v1 only; empty = the database's default
    username: str = ""  # v1 only
    password: str = ""  # v1 only
    org: str = ""  # v2 only
    bucket: str = ""  # v2 only
    token: str = ""  # v2 only
    gzip: bool = False
    timeout_s: float = 30.0
    create_database: bool = False  # v1 only: CREATE DATABASE at start (needs admin rights)


@dataclass(frozen=True)
class BatchSettings:
    max_points: int = 5_000
    max_wait_s: float = 1.0


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    give_up_after_s: float = 0.0  # 0 = keep retrying while InfluxDB is down (offsets never move)
    stop_grace_s: float = 20.0  # after SIGTERM, how long to keep retrying the batch in hand


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"  # this machine only; "0.0.0.0" for a Prometheus elsewhere
    port: int = 9109  # 0 = no metrics endpoint (the agent uses 9108)
    lag_interval_s: float = 5.0  # how often to ask Kafka for end offsets (consumer lag, health)
    stale_after_s: float = 60.0  # /healthz: 503 when the consume loop has not polled for this long


@dataclass(frozen=True)
class SinkConfig:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    influx: InfluxSettings = field(default_factory=InfluxSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with secrets masked, for the start-up log line."""
        out = dataclasses.asdict(self)
        for key in ("password", "token"):
            if out["influx"][key]:
                out["influx"][key] = "***"
        if out["kafka"]["sasl_password"]:
            out["kafka"]["sasl_password"] = "***"
        return out


def _positive(value: float, where: str, hint: str) -> None:
    if not value > 0:
        raise ConfigError(f"{where} = {value!r} must be > 0; {hint}")


def _validate(cfg: SinkConfig) -> None:
    k, i, b, r = cfg.kafka, cfg.influx, cfg.batch, cfg.retry
    for key in ("bootstrap", "topic", "group_id", "deadletter_topic"):
        if not getattr(k, key):
            raise ConfigError(f"kafka.{key} is empty; set it in [kafka] or {ENV_PREFIX}KAFKA__*")
    if k.security_protocol not in KAFKA_PROTOCOLS:
        raise ConfigError(
            f"kafka.security_protocol = {k.security_protocol!r}; use one of {KAFKA_PROTOCOLS}"
        )
    if k.security_protocol.startswith("SASL_") and (
        k.sasl_mechanism not in SASL_MECHANISMS or not k.sasl_username
    ):
        raise ConfigError(
            f"kafka.security_protocol = {k.security_protocol!r} needs kafka.sasl_mechanism "
            f"(one of {SASL_MECHANISMS}, got {k.sasl_mechanism!r}) and kafka.sasl_username"
        )
    if k.auto_offset_reset not in {"earliest", "latest"}:
        raise ConfigError(
            f"kafka.auto_offset_reset = {k.auto_offset_reset!r}; use 'earliest' or 'latest'"
        )
    if k.heartbeat_interval_ms * 3 > k.session_timeout_ms:
        raise ConfigError(
            f"kafka.heartbeat_interval_ms = {k.heartbeat_interval_ms} must be at most a third "
            f"of session_timeout_ms = {k.session_timeout_ms}"
        )
    _positive(k.max_poll_records, "kafka.max_poll_records", "e.g. 10000")
    check_influx(i, "influx")
    _positive(b.max_points, "batch.max_points", "5000 to 10000 points per write is a good start")
    _positive(b.max_wait_s, "batch.max_wait_s", "e.g. 1.0 seconds")
    _positive(r.initial_backoff_s, "retry.initial_backoff_s", "e.g. 0.5")
    if r.max_backoff_s < r.initial_backoff_s:
        raise ConfigError(
            f"retry.max_backoff_s = {r.max_backoff_s} is below initial_backoff_s = "
            f"{r.initial_backoff_s}; raise it"
        )
    if r.give_up_after_s < 0:
        raise ConfigError(f"retry.give_up_after_s = {r.give_up_after_s}; use 0 (never) or > 0")
    if not 0 <= cfg.metrics.port < 65536:
        raise ConfigError(f"metrics.port = {cfg.metrics.port}; use 0 (off) or a TCP port")
    _positive(cfg.metrics.lag_interval_s, "metrics.lag_interval_s", "e.g. 5.0 seconds")
    _positive(cfg.metrics.stale_after_s, "metrics.stale_after_s", "e.g. 60.0 seconds")


def check_influx(i: InfluxSettings, where: str = "influx") -> None:
    """Raise ConfigError naming the first wrong InfluxDB setting."""
    if i.kind not in INFLUX_KINDS:
        raise ConfigError(
            f"{where}.kind = {i.kind!r}; use 'v1' for InfluxDB 1.x or 'v2' for InfluxDB 2.x/3.x"
        )
    try:
        parts = urlsplit(i.url)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise ConfigError(
            f"{where}.url = {i.url!r} is not a URL ({exc}); write it as http://host:port"
        ) from exc
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"{where}.url = {i.url!r}; write it as http://host:port")
    if i.kind == "v1" and not i.database:
        raise ConfigError(f"{where}.database is empty; name the InfluxDB 1.x database")
    if i.kind == "v2":
        for key in ("org", "bucket", "token"):
            if not getattr(i, key):
                raise ConfigError(
                    f"{where}.{key} is empty; InfluxDB 2.x/3.x needs org, bucket, token"
                )
    _positive(i.timeout_s, f"{where}.timeout_s", "e.g. 30")


def load_sink_config(path: str | Path | None, env: Mapping[str, str]) -> SinkConfig:
    """Read ``path`` (or only defaults when None), apply ``env`` overrides, validate.

    The grammar is :mod:`edge.settings`' (the agent's and the dashboard's too):
    ``GAPWATCH_SINK__<SECTION>__<KEY>``, string fields verbatim, every problem at once.
    """
    problems: list[str] = []
    try:
        cfg = settings.load(
            SinkConfig,
            path=path,
            env=env,
            prefix=ENV_PREFIX,
            example="deploy/pipeline/sink.toml",
            problems=problems,
        )
    except EdgeConfigError as exc:
        raise ConfigError(str(exc)) from exc
    if problems:
        raise ConfigError("invalid sink config:\n  - " + "\n  - ".join(problems))
    assert isinstance(cfg, SinkConfig)
    _validate(cfg)
    return cfg


def add_influx_arguments(parser: Any, *, env_prefix: str = "GAPWATCH_INFLUX_") -> None:
    """``--influx --db --rp --user --password --token``, each also read from the environment."""
    env = os.environ
    g = parser.add_argument_group("InfluxDB (1.x API; 2.x/3.x through its v1-compatible API)")
    g.add_argument(
        "--influx",
        default=env.get(f"{env_prefix}URL", "http://127.0.0.1:8086"),
        metavar="URL",
        help=f"base URL [env {env_prefix}URL, default %(default)s]",
    )
    g.add_argument(
        "--db",
        default=env.get(f"{env_prefix}DB", "gapwatch"),
        metavar="NAME",
        help=f"database the sink writes (2.x: the bucket's DBRP name) [env {env_prefix}DB, "
        "default %(default)s]",
    )
    g.add_argument(
        "--rp",
        default=env.get(f"{env_prefix}RP", ""),
        help=f"retention policy [env {env_prefix}RP]",
    )
    g.add_argument(
        "--user", default=env.get(f"{env_prefix}USER", ""), help=f"[env {env_prefix}USER]"
    )
    g.add_argument(
        "--password",
        default=env.get(f"{env_prefix}PASSWORD", ""),
        help=f"prefer env {env_prefix}PASSWORD (flags show in ps)",
    )
    g.add_argument(
        "--token",
        default=env.get(f"{env_prefix}TOKEN", ""),
        help=f"InfluxDB 2.x/3.x token (uses the v1-compatible /query; 2.x needs a DBRP mapping) "
        f"[env {env_prefix}TOKEN]",
    )


def influx_settings_from_args(args: Any) -> InfluxSettings:
    """The settings ``add_influx_arguments`` collected, validated."""
    settings = InfluxSettings(
        kind="v1",
        url=str(args.influx),
        database=str(args.db),
        retention_policy=str(args.rp),
        username=str(args.user),
        password=str(args.password),
        token=str(args.token),
    )
    check_influx(settings, "--influx/--db")
    return settings
