"""The agent's Prometheus metrics and its HTTP endpoint (``/metrics``, ``/healthz``).

:class:`AgentMetrics` is built in ``main`` on a ``CollectorRegistry`` of its own (never the
global one) and passed to the parts that update it. :class:`MetricsServer` serves that registry
and a health document; ``/healthz`` answers 200 when the agent loop is alive, its models are
loaded and delivery to Kafka is not stuck (records waiting longer than ``kafka.stuck_after_s``
with none acknowledged or quarantined), 503 otherwise, with the details as JSON either way.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from edge.errors import ConfigError
from edge.intake import IntakeSample

__all__ = [
    "AgentMetrics",
    "IntakeMetrics",
    "MetricsServer",
    "build_versions",
    "register_runtime_collectors",
]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_LAG_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """``process_*``, ``python_info`` and ``python_gc_*``: what prometheus-client registers on
    its global registry by default, added to a registry of our own (where it is not)."""
    if registry is REGISTRY:  # the global registry has them already
        return
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def build_versions() -> dict[str, str]:
    """``version`` of gapwatch and the formats/libraries a build is known by (build_info)."""
    import platform
    from importlib import metadata

    from edge.bundle import FORMAT_VERSION
    from edge.schema import SCHEMA_VERSION

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "version": version("gapwatch"),
        "bundle_format": FORMAT_VERSION,
        "schema": str(SCHEMA_VERSION),
        "onnxruntime": version("onnxruntime"),
        "python": platform.python_version(),
    }


class IntakeMetrics:
    """Intake lag, overload and arrival gaps (``gapwatch_agent_intake_*``); see edge.intake."""

    def __init__(self, registry: CollectorRegistry, ns: str = "gapwatch_agent_intake") -> None:
        r = registry
        self.queue = Gauge(
            f"{ns}_queue_messages", "messages received, not yet processed", registry=r
        )
        self.high_water = Gauge(
            f"{ns}_queue_high_water_messages",
            "most messages ever held received and unprocessed (bounded by the flow window)",
            registry=r,
        )
        self.window = Gauge(
            f"{ns}_flow_window_messages",
            "most messages in flight to the agent: MQTT 5 receive maximum (else mqtt.queue_max)",
            registry=r,
        )
        self.oldest_age = Gauge(
            f"{ns}_oldest_age_seconds", "age of the oldest message not yet processed", registry=r
        )
        self.behind = Gauge(
            f"{ns}_behind_seconds",
            "now - newest reading timestamp processed (max over devices; needs real-time clocks)",
            registry=r,
        )
        self.rate = Gauge(f"{ns}_rate", "messages processed per second, recently", registry=r)
        self.drain = Gauge(
            f"{ns}_drain_seconds",
            "unprocessed messages / processing rate (a lower bound while saturated)",
            registry=r,
        )
        self.saturated = Gauge(
            f"{ns}_saturated", "1 while the flow window is full: the broker holds back", registry=r
        )
        self.overloaded = Gauge(
            f"{ns}_overloaded", "1 while intake is overloaded (saturated or lagging)", registry=r
        )
        self.overloads = Counter(f"{ns}_overloads", "overload episodes begun", registry=r)
        self.refused = Gauge(
            f"{ns}_refused_messages",
            "messages refused by the full buffer (mqtt.queue_max) after 5 s without a poll: "
            "not acknowledged, the broker redelivers them after the next reconnect",
            registry=r,
        )
        self.gaps = Counter(
            f"{ns}_gaps",
            "device ticks with no reading: kind=missing (closed empty, imputed), "
            "kind=silent (the rest of a silent stretch, not imputed; counted once the device "
            "is back)",
            ["kind"],
            registry=r,
        )
        for kind in ("missing", "silent"):
            self.gaps.labels(kind)

    def update(self, s: IntakeSample, high_water: int) -> None:
        self.queue.set(s.depth)
        self.high_water.set(high_water)
        self.window.set(s.window)
        self.oldest_age.set(s.oldest_age_s)
        if s.behind_s is not None:
            self.behind.set(s.behind_s)
        self.rate.set(s.rate)
        self.drain.set(-1 if s.drain_s is None else s.drain_s)
        self.saturated.set(1 if s.saturated else 0)
        self.overloaded.set(1 if s.overloaded else 0)


class AgentMetrics:
    """Every metric the agent exports, registered on ``registry``."""

    # size: one metric declaration after another (name, help, labels); nothing to split
    def __init__(self, registry: CollectorRegistry) -> None:
        ns = "gapwatch_agent"
        r = registry
        self.registry = registry
        register_runtime_collectors(r)
        self.intake = IntakeMetrics(r)
        build = build_versions()
        self.build_info = Gauge(
            f"{ns}_build_info",
            "gapwatch version, bundle format and schema it reads, library versions (value 1); "
            "the bundles in use are gapwatch_agent_model_info",
            list(build),
            registry=r,
        )
        self.build_info.labels(**build).set(1)
        self.mqtt_reconnects = Counter(
            f"{ns}_mqtt_reconnects", "MQTT connections re-established after a loss", registry=r
        )
        self.last_message_age = Gauge(
            f"{ns}_last_message_age_seconds",
            "seconds since the newest reading arrived, for the quietest device (max over devices)",
            registry=r,
        )
        self.alerts = Counter(
            f"{ns}_alerts",
            "alarm events to the webhook, by outcome: sent, failed, dropped (queue full)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("sent", "failed", "dropped"):
            self.alerts.labels(outcome)
        self.messages_in = Counter(f"{ns}_messages", "MQTT messages received", registry=r)
        self.readings_in = Counter(f"{ns}_readings", "channel readings accepted", registry=r)
        self.ticks_out = Counter(f"{ns}_ticks", "scored ticks spooled", ["revision"], registry=r)
        self.imputed = Counter(f"{ns}_imputed_entries", "channel entries imputed", registry=r)
        self.anomalies = Counter(f"{ns}_anomaly_ticks", "ticks flagged anomalous", registry=r)
        self.bad_input = Counter(
            f"{ns}_bad_input", "messages or readings refused, by reason", ["reason"], registry=r
        )
        self.dead_letters = Counter(f"{ns}_dead_letters", "dead letters spooled", registry=r)
        self.transitions = Counter(
            f"{ns}_device_transitions", "devices going offline/online", ["kind"], registry=r
        )
        self.devices = Gauge(f"{ns}_devices", "devices seen, by state", ["state"], registry=r)
        self.spool_records = Gauge(
            f"{ns}_spool_records", "records waiting in the spool", registry=r
        )
        self.spool_bytes = Gauge(f"{ns}_spool_bytes", "bytes waiting in the spool", registry=r)
        self.spool_age = Gauge(
            f"{ns}_spool_oldest_age_seconds", "age of the oldest spooled record", registry=r
        )
        self.spool_dropped = Counter(
            f"{ns}_spool_dropped", "records dropped by the drop_oldest policy", registry=r
        )
        self.intake_paused = Gauge(
            f"{ns}_intake_paused", "1 while MQTT intake is paused (spool full)", registry=r
        )
        self.kafka_acked = Counter(f"{ns}_kafka_acked", "records acknowledged by Kafka", registry=r)
        self.kafka_errors = Counter(
            f"{ns}_kafka_errors", "Kafka failures, by kind", ["kind"], registry=r
        )
        self.kafka_quarantined = Counter(
            f"{ns}_kafka_quarantined",
            "records Kafka refused for good, moved to the spool's quarantine, by reason",
            ["reason"],
            registry=r,
        )
        self.kafka_stuck = Gauge(
            f"{ns}_kafka_stuck_seconds",
            "how long records have waited with none acknowledged (0: spool empty)",
            registry=r,
        )
        self.mqtt_connected = Gauge(f"{ns}_mqtt_connected", "1 while connected to MQTT", registry=r)
        self.inference_seconds = Histogram(
            f"{ns}_inference_seconds",
            "model run time per micro-batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_ticks = Histogram(
            f"{ns}_batch_ticks",
            "ticks per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.tick_lag = Histogram(
            f"{ns}_tick_lag_seconds",
            "MQTT arrival of a tick's newest reading -> its scored record spooled",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.delivery_lag = Histogram(
            f"{ns}_delivery_lag_seconds",
            "record spooled -> acknowledged by Kafka",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.model_reloads = Counter(
            f"{ns}_model_reloads", "bundle reload attempts, by result", ["result"], registry=r
        )
        self.model_info = Gauge(
            f"{ns}_model_info",
            "the bundle version in use (value 1)",
            ["model", "version"],
            registry=r,
        )


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` (JSON) on a small HTTP server."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        self._registry = registry
        self._health = health
        handler = self._handler()
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics endpoint {host}:{port}: {exc.strerror}; choose another metrics.port "
                "(0 disables the endpoint)"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gapwatch-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics.listening", extra={"port": self.port})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry, health = self._registry, self._health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in {"/healthz", "/health"}:
                    ok, detail = health()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
                    self._reply(200 if ok else 503, "application/json", body)
                else:
                    self._reply(404, "text/plain", b"try /metrics or /healthz\n")

            def _reply(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics.request", extra={"line": format % args})

        return Handler
