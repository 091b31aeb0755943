"""``gapwatch sink``: consume scored ticks from Kafka into InfluxDB (adapters: ``kafka_in``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from edge.logs import LOG_FORMATS, configure_logging
from edge.ports import SystemClock
from pipeline.config import SinkConfig, load_sink_config
from pipeline.errors import (
    ConfigError,
    PipelineError,
    StorageError,
)
from pipeline.health import SinkHealth
from pipeline.influx import Influx1Client, connect
from pipeline.kafka_in import KafkaDeadLetters, KafkaRecordSource
from pipeline.metrics import SinkMetrics
from pipeline.sink import Sink, SinkSettings
from pipeline.tuning import tune_interpreter

__all__ = ["main", "run_sink"]

log = logging.getLogger(__name__)

EPILOG = """\
The sink is one member of a Kafka consumer group: start several (same kafka.group_id) and they
share the partitions of kafka.topic. Offsets are committed only after InfluxDB accepted a batch,
so stopping, crashing or losing InfluxDB never loses a record; records that can never be
written go to kafka.deadletter_topic with the reason.

Configuration: a TOML file (commented example: deploy/pipeline/sink.toml); every key can be
overridden by GAPWATCH_SINK__<SECTION>__<KEY>, e.g. GAPWATCH_SINK__INFLUX__PASSWORD.

examples:
  gapwatch sink --config /etc/gapwatch/sink.toml
  gapwatch sink --check --config sink.toml      # validate the config and exit
  GAPWATCH_SINK__KAFKA__BOOTSTRAP=kafka:9092 gapwatch sink --config sink.toml

exit status: 0 stopped cleanly (SIGTERM/SIGINT), 1 storage gave up or failed, 2 bad config.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch sink",
        description="Consume scored ticks (gapwatch.scored) from Kafka into InfluxDB.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env = os.environ
    p.add_argument(
        "--config",
        default=env.get("GAPWATCH_SINK_CONFIG"),
        help="TOML config file [env GAPWATCH_SINK_CONFIG]; without it: defaults + env overrides",
    )
    p.add_argument("--check", action="store_true", help="validate the config, print it, exit")
    p.add_argument(
        "--log-level",
        default=env.get("GAPWATCH_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="[env GAPWATCH_LOG_LEVEL, default INFO]",
    )
    p.add_argument(
        "--log-format",
        default=env.get("GAPWATCH_LOG_FORMAT", "json"),
        choices=LOG_FORMATS,
        help="json (one object per line) or text [env GAPWATCH_LOG_FORMAT, default json]",
    )
    return p


def run_sink(cfg: SinkConfig, install_signals: bool = True) -> int:
    """Build the adapters from ``cfg``, run until SIGTERM/SIGINT, return an exit status."""
    from prometheus_client import CollectorRegistry

    from edge.errors import ConfigError as EdgeConfigError
    from edge.metrics import MetricsServer

    tune_interpreter()
    registry = CollectorRegistry()
    metrics = SinkMetrics.create(registry)
    health = SinkHealth(time.monotonic, stale_after_s=cfg.metrics.stale_after_s)
    server = None
    if cfg.metrics.port:
        # /metrics, /healthz (200 consuming and writing, 503 not; JSON either way), else 404
        try:
            server = MetricsServer(registry, cfg.metrics.host, cfg.metrics.port, health.report)
        except EdgeConfigError as exc:
            raise ConfigError(str(exc)) from exc
        server.start()
        log.info("sink.metrics_listening", extra={"port": server.port})
    influx = connect(cfg.influx)
    if cfg.influx.create_database and isinstance(influx, Influx1Client):
        influx.create_database()
    holder: list[Sink] = []

    def revoke() -> None:
        holder[0].partitions_revoked()

    source = KafkaRecordSource(cfg, on_revoke=revoke, metrics=metrics, health=health)
    letters = KafkaDeadLetters(cfg)
    sink = Sink(
        source,
        influx,
        letters,
        SystemClock(),
        settings=SinkSettings.from_config(cfg),
        metrics=metrics,
        health=health,
    )
    holder.append(sink)
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: sink.request_stop())
    try:
        sink.run()
    except StorageError as exc:
        log.error("sink.failed", extra={"error": str(exc)})
        return 1
    finally:
        source.close()
        letters.close()
        influx.close()
        if server is not None:
            server.stop()
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    configure_logging(args.log_level, args.log_format)
    try:
        cfg = load_sink_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"gapwatch sink: {exc}", file=sys.stderr)
        return 2
    if args.check:
        import json

        print(json.dumps(cfg.redacted(), indent=2))
        return 0
    log.info("sink.config", extra={"config": cfg.redacted()})
    from kafka.errors import KafkaError

    try:
        return run_sink(cfg)
    except (PipelineError, KafkaError, OSError) as exc:
        log.error("sink.failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        return 1
