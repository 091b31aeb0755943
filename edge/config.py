"""The agent's configuration: one validated, frozen object loaded from TOML plus overrides.

Sources, later ones win:

1. built-in defaults (the dataclasses below; ``deploy/edge/agent.toml`` documents each key);
2. the TOML file given with ``--config`` (or ``GAPWATCH_AGENT_CONFIG``);
3. environment variables ``GAPWATCH_AGENT__<SECTION>__<KEY>=<value>``, e.g.
   ``GAPWATCH_AGENT__MQTT__HOST=broker.lan`` or ``GAPWATCH_AGENT__MQTT__TLS__CA_FILE=/etc/ca.pem``
   (names are case-insensitive; values are typed by the field they set, string fields taken
   verbatim: the grammar of :mod:`edge.settings`, shared with the sink and the dashboard);
4. ``--set section.key=value`` on the command line (same value rules).

Every problem is reported at once in a :class:`~edge.errors.ConfigError` naming the dotted
field, the bad value and the fix. Unknown keys are errors (a typo must not silently fall back
to a default).
"""

from __future__ import annotations

import fnmatch
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge import settings
from edge.errors import ConfigError
from edge.schema import DEADLETTER_TOPIC, SCORED_TOPIC

ENV_PREFIX = "GAPWATCH_AGENT__"

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "AlertsConfig",
    "AlignConfig",
    "BundlesConfig",
    "DeviceRule",
    "InferenceConfig",
    "InputConfig",
    "KafkaConfig",
    "MetricsConfig",
    "MqttConfig",
    "SpoolConfig",
    "TlsConfig",
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
class InputConfig:
    """One ``[[mqtt.inputs]]`` entry: a topic template and the payload format on it (edge.formats).

    Paths are dotted keys into a JSON object (``"tags.host"``); ``""`` means "none".
    """

    topic: str  # template, e.g. "telegraf/{site}/{device}"; {device} optional with device_key
    format: str = "gapwatch"  # gapwatch | flat_json | influx_line | senml
    preset: str = ""  # "telegraf": flat_json as Telegraf's JSON serializer writes it
    time_path: str = "ts"  # flat_json: where the time is; "" = stamp with the arrival time
    time_unit: str = "auto"  # auto (s/ms/us/ns by magnitude, or ISO 8601) | s | ms | us | ns | iso
    values_path: str = ""  # flat_json: the object of channels; "" = the top level itself
    value_path: str = "value"  # flat_json on a {channel} topic: the number in an object payload
    records_path: str = ""  # flat_json: a list of records there (when present) is each decoded
    name_path: str = ""  # flat_json: a name for channel_name's {name} (Telegraf: "name")
    device_key: str = ""  # device from the payload: JSON path, line-protocol tag, or senml "bn"
    site_key: str = ""  # site from the payload: JSON path or line-protocol tag
    channel_name: str = "{field}"  # channel of each field; may add {name} (measurement)
    exclude: tuple[str, ...] = ()  # fields never taken as channels (e.g. string status fields)


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
    inputs: tuple[InputConfig, ...] = ()  # other formats per topic; matched before ``topics``
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
    # MQTT 5 flow control: at most this many unacknowledged messages in flight to the agent (the
    # CONNECT Receive Maximum, capped at queue_max); the broker queues the rest for our session
    receive_maximum: int = 1000
    overload_lag_s: float = 2.0  # a message waiting this long unprocessed: intake is overloaded
    # retained "online" while connected, "offline" on a clean stop and as the last will; "" = off
    status_topic: str = "gapwatch/agents/{client_id}/status"

    @property
    def flow_window(self) -> int:
        """Most messages the agent can hold received but unprocessed: the Receive Maximum
        (MQTT 5, capped at ``queue_max``) or, under MQTT 3.1.1, ``queue_max``."""
        if self.protocol == "5":
            return min(self.receive_maximum, self.queue_max)
        return self.queue_max


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
class AlertsConfig:
    """Alarm open/close events to an Alertmanager-compatible webhook (``edge.webhook``)."""

    url: str = ""  # empty: no webhook; e.g. "http://alertmanager:9093/api/v2/alerts"
    timeout_s: float = 5.0  # per HTTP request
    retries: int = 3  # after the first attempt, on connection errors, 5xx, 408 and 429
    backoff_s: float = 1.0  # first retry delay, doubled per retry ...
    max_backoff_s: float = 30.0  # ... up to this
    queue_max: int = 1000  # events waiting for delivery; beyond this they are dropped (counted)
    resend_s: float = 60.0  # re-send open alarms this often (Alertmanager's resolve_timeout); 0 off
    auth_header: str = "Authorization"  # header that carries the value of auth_env
    auth_env: str = ""  # name of an environment variable holding e.g. "Bearer <token>"
    alertname: str = "GapwatchAnomaly"
    severity: str = "warning"
    generator_url: str = ""  # back-link per alert; "{site}" and "{device}" are filled in
    top_channels: int = 3  # channels an alarm names, most frequent while it was open


@dataclass(frozen=True)
class AgentConfig:
    site: str = "default"  # used when a topic template has no {site}
    state_dir: str = "/var/lib/gapwatch"
    log_format: str = "text"  # "text" (key=value) or "json"; "kv" is the old name of "text"
    log_level: str = "INFO"
    shutdown_timeout_s: float = 10.0  # on SIGTERM: how long to wait for Kafka to take the spool
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    bundles: BundlesConfig = field(default_factory=BundlesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
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
    problems: list[str] = []
    config = settings.load(
        AgentConfig,
        path=None if path is None else Path(path),
        env=os.environ if env is None else env,
        prefix=ENV_PREFIX,
        example="gapwatch agent --sample-config",
        sets=sets,
        problems=problems,
    )
    if not problems:
        problems.extend(_check(config))
    if problems:
        joined = "\n  - ".join(problems)
        raise ConfigError(f"invalid agent config:\n  - {joined}")
    assert isinstance(config, AgentConfig)
    return config


def _check(c: AgentConfig) -> list[str]:
    """Range and consistency checks, each naming the field and the fix."""
    p: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            p.append(msg)

    for section in (_check_mqtt, _check_kafka, _check_local, _check_alerts):
        section(c, need, p)
    return p


def _check_mqtt(c: AgentConfig, need: Callable[[bool, str], None], p: list[str]) -> None:
    """[mqtt]: ports, topics, flow control, reconnects."""
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
    need(
        bool(c.mqtt.topics) or bool(c.mqtt.inputs),
        "mqtt.topics and mqtt.inputs are empty: add at least 'sensors/{site}/{device}'",
    )
    for i, t in enumerate(c.mqtt.topics):
        need("{device}" in t, f"mqtt.topics[{i}] {t!r} needs a {{device}} field")
        need(
            not any(ch in t for ch in "+#$"), f"mqtt.topics[{i}] {t!r}: write fields, not wildcards"
        )
    from edge.formats import check_input

    for i, inp in enumerate(c.mqtt.inputs):
        p.extend(f"mqtt.inputs[{i}].{msg}" for msg in check_input(inp))
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
        1 <= c.mqtt.receive_maximum <= 65535,
        f"mqtt.receive_maximum {c.mqtt.receive_maximum} must be in 1..65535",
    )
    need(c.mqtt.overload_lag_s > 0, "mqtt.overload_lag_s must be > 0")
    need(
        not (c.mqtt.password and c.mqtt.password_file),
        "mqtt.password and mqtt.password_file are both set: keep one",
    )


def _check_kafka(c: AgentConfig, need: Callable[[bool, str], None], p: list[str]) -> None:
    """[kafka]: brokers, topics, size limits, delivery timeouts."""
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


def _check_local(c: AgentConfig, need: Callable[[bool, str], None], p: list[str]) -> None:
    """[spool], [align], [inference], [bundles], [[devices]], metrics and logging."""
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
    need(
        c.log_format in {"text", "kv", "json"}, f'log_format {c.log_format!r}: use "text" or "json"'
    )
    need(
        c.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
        f"log_level {c.log_level!r}: use DEBUG, INFO, WARNING or ERROR",
    )
    need(c.shutdown_timeout_s >= 0, "shutdown_timeout_s must be >= 0")


def _check_alerts(c: AgentConfig, need: Callable[[bool, str], None], p: list[str]) -> None:
    """[alerts]: the webhook."""
    a = c.alerts
    need(
        not a.url or a.url.startswith(("http://", "https://")),
        f"alerts.url {a.url!r}: use an http:// or https:// URL (empty disables the webhook)",
    )
    need(a.timeout_s > 0, f"alerts.timeout_s {a.timeout_s} must be > 0")
    need(0 <= a.retries <= 20, f"alerts.retries {a.retries} must be in 0..20")
    need(a.backoff_s >= 0, f"alerts.backoff_s {a.backoff_s} must be >= 0")
    need(a.max_backoff_s >= a.backoff_s, "alerts.max_backoff_s must be >= alerts.backoff_s")
    need(a.queue_max >= 1, f"alerts.queue_max {a.queue_max} must be >= 1")
    need(a.resend_s >= 0, f"alerts.resend_s {a.resend_s} must be >= 0 (0: never re-send)")
    need(bool(a.alertname), "alerts.alertname is empty: name the alert, e.g. GapwatchAnomaly")
    need(a.top_channels >= 1, f"alerts.top_channels {a.top_channels} must be >= 1")
    need(
        not a.auth_env or bool(a.auth_header),
        "alerts.auth_env is set but alerts.auth_header is empty: name the header",
    )
