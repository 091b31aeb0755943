"""The agent's configuration: one validated, frozen object loaded from TOML plus overrides.

Sources, later ones win:

1. built-in defaults (the dataclasses below; ``deploy/edge/agent.toml`` documents each key);
2. the TOML file given with ``--config`` (or ``GAPWATCH_AGENT_CONFIG``);
3. environment variables ``GAPWATCH_AGENT__<SECTION>__<KEY>=<value>``, e.g.
   ``GAPWATCH_AGENT__MQTT__HOST=broker.lan`` or ``GAPWATCH_AGENT__MQTT__TLS__CA_FILE=/etc/ca.pem``
   (names are case-insensitive; the value is read as a TOML value when it parses as one
   (``1884``, ``true``, ``["a", "b"]``, ``[{match = "*", bundle = "skab"}]``), else as a string);
4. ``--set section.key=value`` on the command line (same value rules).

Every problem is reported at once in a :class:`~edge.errors.ConfigError` naming the dotted
field, the bad value and the fix. Unknown keys are errors (a typo must not silently fall back
to a default).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.schema import DEADLETTER_TOPIC, SCORED_TOPIC

ENV_PREFIX = "GAPWATCH_AGENT__"

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "AlignConfig",
    "BundlesConfig",
    "DeviceRule",
    "InferenceConfig",
    "KafkaConfig",
    "MetricsConfig",
    "MqttConfig",
    "SpoolConfig",
    "TlsConfig",
    "env_overrides",
    "load_config",
]

_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str = ""  # empty: the system trust store
    cert_file: str = ""  # client certificate (mutual TLS), optional
    key_file: str = ""
    insecure: bool = False  # skip hostname verification (testing only)


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""  # empty: "gapwatch-agent-<hostname>"; must be stable across restarts
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive_s: int = 30
    qos: int = 1
    session_expiry_s: int = 86400  # MQTT 5: how long the broker keeps our queue while we are away
    topics: tuple[str, ...] = ("sensors/{site}/{device}", "sensors/{site}/{device}/{channel}")
    shared_group: str = ""  # non-empty: subscribe as $share/<group>/<filter>
    username: str = ""
    password: str = ""
    password_file: str = ""
    tls: TlsConfig = field(default_factory=TlsConfig)
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    watchdog_s: float = 300.0  # disconnected this long: the agent exits non-zero (systemd restarts)
    max_payload_bytes: int = 65536
    announce_topic: str = ""  # retained model announcements, e.g. "gapwatch/models/+"
    queue_max: int = 20000  # messages buffered between the network thread and the loop
    # retained "online" while connected, "offline" on a clean stop and as the last will; "" = off
    status_topic: str = "gapwatch/agents/{client_id}/status"


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    scored_topic: str = SCORED_TOPIC
    deadletter_topic: str = DEADLETTER_TOPIC
    client_id: str = ""  # empty: the MQTT client id
    linger_ms: int = 5  # low latency; see deploy/edge/agent.toml
    batch_size: int = 65536
    compression: str = "none"  # none, gzip, lz4, zstd, snappy (the latter need extra packages)
    request_timeout_ms: int = 15000
    delivery_timeout_ms: int = 60000
    max_block_ms: int = 2000
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    sasl_password_file: str = ""  # a file holding the SASL password (keeps it out of env/config)
    ssl_cafile: str = ""
    max_in_flight_records: int = 5000
    drain_rate: float = (
        20000.0  # records per second leaving the spool (backlog drains at this pace)
    )
    deadletter_raw_max_bytes: int = 16384  # a dead letter keeps at most this much of its payload
    max_request_bytes: int = 1048576  # the producer refuses bigger records itself (quarantined)
    stuck_after_s: float = 120.0  # records waiting this long with no ack: /healthz unhealthy


@dataclass(frozen=True)
class SpoolConfig:
    path: str = ""  # empty: <state_dir>/spool.sqlite
    max_records: int = 2_000_000
    max_bytes: int = 512 * 1024 * 1024
    when_full: str = "pause"  # "pause" MQTT intake, or "drop_oldest" records
    synchronous: str = "normal"  # "normal" survives a crash of the agent; "full" also power loss
    min_free_bytes: int = 16 * 1024 * 1024  # below this free on its disk, intake pauses


@dataclass(frozen=True)
class AlignConfig:
    lateness_ticks: int = 2  # a reading may arrive this many ticks after a later one
    future_tolerance_s: float = 300.0  # readings stamped further ahead of the clock are rejected
    max_age_s: float = 0.0  # > 0: readings older than this (vs. the clock) are rejected
    min_ts: str = "2000-01-01T00:00:00Z"  # readings before this are rejected


@dataclass(frozen=True)
class InferenceConfig:
    batch_max_ticks: int = 256
    batch_max_ms: int = 5  # low latency; see deploy/edge/agent.toml
    intra_op_threads: int = 1


@dataclass(frozen=True)
class BundlesConfig:
    root: str = "/var/lib/gapwatch/bundles"
    poll_s: float = 5.0
    trusted_keys: str = ""  # PEM file of Ed25519 public keys: only bundles they signed load


@dataclass(frozen=True)
class DeviceRule:
    match: str  # fnmatch pattern on "site/device"
    bundle: str  # model name: <bundles.root>/<bundle>/
    warmup_ticks: int = 0  # > 0: recalibrate the alarm threshold on the device's first N ticks
    rescale: bool = False  # also re-centre the channels on those ticks


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9108  # 0 disables the HTTP endpoint


@dataclass(frozen=True)
class AgentConfig:
    site: str = "default"  # used when a topic template has no {site}
    state_dir: str = "/var/lib/gapwatch"
    log_format: str = "kv"  # "kv" (key=value) or "json"
    log_level: str = "INFO"
    shutdown_timeout_s: float = 10.0  # on SIGTERM: how long to wait for Kafka to take the spool
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    bundles: BundlesConfig = field(default_factory=BundlesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    devices: tuple[DeviceRule, ...] = ()

    @property
    def spool_path(self) -> Path:
        return Path(self.spool.path) if self.spool.path else Path(self.state_dir) / "spool.sqlite"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"gapwatch-agent-{socket.gethostname()}"

    def rule_for(self, site: str, device: str) -> DeviceRule | None:
        """The first device rule whose pattern matches ``site/device``."""
        key = f"{site}/{device}"
        for rule in self.devices:
            if fnmatch.fnmatchcase(key, rule.match):
                return rule
        return None


def load_config(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> AgentConfig:
    """Build the config from a TOML file, environment overrides and ``key=value`` sets."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"config file {str(path)!r} not found; pass an existing --config"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"config file {str(path)!r} cannot be read ({exc.strerror}); pass a readable file"
            ) from exc
    for dotted, value in env_overrides(os.environ if env is None else env):
        _assign(data, dotted, value)
    for item in sets:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        _assign(data, dotted.strip().lower(), _parse_value(raw))
    problems: list[str] = []
    config = _build(AgentConfig, data, "", problems)
    if not problems:
        problems.extend(_check(config))
    if problems:
        joined = "\n  - ".join(problems)
        raise ConfigError(f"invalid agent config:\n  - {joined}")
    assert isinstance(config, AgentConfig)
    return config


def env_overrides(env: Mapping[str, str]) -> list[tuple[str, Any]]:
    """``GAPWATCH_AGENT__MQTT__PORT=1884`` -> ``[("mqtt.port", 1884)]`` (sorted, deterministic)."""
    out = []
    for name in sorted(env):
        if name.upper().startswith(ENV_PREFIX):
            dotted = ".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
            out.append((dotted, _parse_value(env[name])))
    return out


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type[Any], data: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{where or 'config'} must be a table, got {data!r}")
        return cls() if cls is not DeviceRule else None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - set(fields)):
        close = [n for n in fields if n.startswith(key[:3])]
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {sorted(fields)}"
        problems.append(f"{where}{key}: unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}{name}: required, add it")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{where}{name}", problems)
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def _coerce(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, f"{where}.", problems)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if isinstance(value, str) and item is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return ()
        items = [_coerce(item, v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true or false, got {value!r}")
        return False
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{where}: expected an integer, got {value!r}")
        return 0
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # TOML integers have no size limit
                problems.append(f"{where}: {value!r:.30}... is out of range")
                return 0.0
        problems.append(f"{where}: expected a number, got {value!r}")
        return 0.0
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. protocol = 5
        problems.append(f"{where}: expected a string, got {value!r}")
        return ""
    if isinstance(hint, types.UnionType):  # pragma: no cover - no unions in the config today
        raise TypeError(f"unsupported config type {hint}")
    raise TypeError(f"unsupported config type {hint}")


def _check(c: AgentConfig) -> list[str]:
    """Range and consistency checks, each naming the field and the fix."""
    p: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            p.append(msg)

    need(0 < c.mqtt.port < 65536, f"mqtt.port {c.mqtt.port} must be in 1..65535")
    need(
        c.mqtt.protocol in {"5", "3.1.1"}, f'mqtt.protocol {c.mqtt.protocol!r}: use "5" or "3.1.1"'
    )
    need(c.mqtt.qos in {0, 1}, f"mqtt.qos {c.mqtt.qos}: use 1 (at least once) or 0")
    need(c.mqtt.keepalive_s >= 5, f"mqtt.keepalive_s {c.mqtt.keepalive_s} must be >= 5")
    need(
        not any(ch in c.mqtt.status_topic for ch in "+#"),
        f"mqtt.status_topic {c.mqtt.status_topic!r}: a topic name, not a filter (no + or #)",
    )
    need(bool(c.mqtt.topics), "mqtt.topics is empty: add at least 'sensors/{site}/{device}'")
    for i, t in enumerate(c.mqtt.topics):
        need("{device}" in t, f"mqtt.topics[{i}] {t!r} needs a {{device}} field")
        need(
            not any(ch in t for ch in "+#$"), f"mqtt.topics[{i}] {t!r}: write fields, not wildcards"
        )
    need(
        "/" not in c.mqtt.shared_group and "+" not in c.mqtt.shared_group,
        f"mqtt.shared_group {c.mqtt.shared_group!r} must be a single topic level",
    )
    need(c.mqtt.reconnect_min_s >= 1, f"mqtt.reconnect_min_s {c.mqtt.reconnect_min_s} must be >= 1")
    need(
        c.mqtt.reconnect_max_s >= c.mqtt.reconnect_min_s,
        "mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s",
    )
    need(c.mqtt.max_payload_bytes >= 64, "mqtt.max_payload_bytes must be >= 64")
    need(c.mqtt.queue_max >= 100, "mqtt.queue_max must be >= 100")
    need(
        not (c.mqtt.password and c.mqtt.password_file),
        "mqtt.password and mqtt.password_file are both set: keep one",
    )
    need(
        not (c.kafka.sasl_password and c.kafka.sasl_password_file),
        "kafka.sasl_password and kafka.sasl_password_file are both set: keep one",
    )
    need(c.mqtt.watchdog_s >= 0, "mqtt.watchdog_s must be >= 0 (0 disables the watchdog)")
    need(bool(c.kafka.bootstrap), "kafka.bootstrap is empty: give host:port[,host:port]")
    need(
        bool(c.kafka.scored_topic) and bool(c.kafka.deadletter_topic),
        "kafka.scored_topic and kafka.deadletter_topic must be non-empty",
    )
    need(
        c.kafka.compression in {"none", "gzip", "lz4", "zstd", "snappy"},
        f"kafka.compression {c.kafka.compression!r}: use none, gzip, lz4, zstd or snappy",
    )
    need(c.kafka.max_in_flight_records >= 1, "kafka.max_in_flight_records must be >= 1")
    for name in ("scored_topic", "deadletter_topic"):
        topic = getattr(c.kafka, name)
        need(
            not topic or (_KAFKA_TOPIC.fullmatch(topic) is not None and topic not in {".", ".."}),
            f"kafka.{name} {topic!r}: a Kafka topic is 1-249 of a-z A-Z 0-9 . _ -",
        )
    need(
        0 <= c.kafka.deadletter_raw_max_bytes <= 128 * 1024,
        f"kafka.deadletter_raw_max_bytes {c.kafka.deadletter_raw_max_bytes} must be in "
        "0..131072 (JSON escapes can make a dead letter 6 times that: it must stay below "
        "Kafka's 1 MiB record limit)",
    )
    need(
        c.kafka.max_request_bytes >= 1024,
        f"kafka.max_request_bytes {c.kafka.max_request_bytes} must be >= 1024; keep it at or "
        "below the broker's message.max.bytes (1048588 by default)",
    )
    need(
        c.kafka.stuck_after_s > 0,
        f"kafka.stuck_after_s {c.kafka.stuck_after_s} must be > 0 seconds",
    )
    need(c.kafka.drain_rate > 0, f"kafka.drain_rate {c.kafka.drain_rate} must be > 0 records/s")
    need(
        c.kafka.delivery_timeout_ms >= c.kafka.request_timeout_ms + c.kafka.linger_ms,
        "kafka.delivery_timeout_ms must be >= request_timeout_ms + linger_ms",
    )
    need(
        c.spool.when_full in {"pause", "drop_oldest"},
        f'spool.when_full {c.spool.when_full!r}: use "pause" or "drop_oldest"',
    )
    need(
        c.spool.synchronous in {"normal", "full"},
        f'spool.synchronous {c.spool.synchronous!r}: use "normal" or "full"',
    )
    need(c.spool.max_records >= 1000, "spool.max_records must be >= 1000")
    need(c.spool.max_bytes >= 1 << 20, "spool.max_bytes must be >= 1048576 (1 MiB)")
    need(c.spool.min_free_bytes >= 0, "spool.min_free_bytes must be >= 0 (0 disables the check)")
    need(c.align.lateness_ticks >= 0, "align.lateness_ticks must be >= 0")
    need(c.align.future_tolerance_s >= 0, "align.future_tolerance_s must be >= 0")
    need(c.align.max_age_s >= 0, "align.max_age_s must be >= 0 (0 disables the check)")
    try:
        from edge.decode import parse_ts

        parse_ts(c.align.min_ts)
    except ValueError as exc:
        p.append(f"align.min_ts {c.align.min_ts!r}: {exc}")
    need(c.inference.batch_max_ticks >= 1, "inference.batch_max_ticks must be >= 1")
    need(c.inference.batch_max_ms >= 0, "inference.batch_max_ms must be >= 0")
    need(c.inference.intra_op_threads >= 1, "inference.intra_op_threads must be >= 1")
    need(c.bundles.poll_s > 0, "bundles.poll_s must be > 0")
    need(bool(c.devices), 'devices is empty: add [[devices]] match = "*" bundle = "<model name>"')
    for i, rule in enumerate(c.devices):
        need(bool(rule.match), f"devices[{i}].match is empty: use a pattern such as 'lab/*'")
        need(
            bool(rule.bundle) and "/" not in rule.bundle,
            f"devices[{i}].bundle {rule.bundle!r} must be a model name (a folder of bundles.root)",
        )
        need(rule.warmup_ticks >= 0, f"devices[{i}].warmup_ticks must be >= 0")
    need(0 <= c.metrics.port < 65536, f"metrics.port {c.metrics.port} must be in 0..65535")
    need(c.log_format in {"kv", "json"}, f'log_format {c.log_format!r}: use "kv" or "json"')
    need(
        c.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
        f"log_level {c.log_level!r}: use DEBUG, INFO, WARNING or ERROR",
    )
    need(c.shutdown_timeout_s >= 0, "shutdown_timeout_s must be >= 0")
    return p
