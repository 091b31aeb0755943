"""``gapwatch sink``: consume scored ticks from Kafka into InfluxDB (and the Kafka adapters)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edge.schema import DeadLetter
from pipeline.config import KafkaSettings, SinkConfig, load_sink_config
from pipeline.errors import ConfigError, PipelineError, StorageError
from pipeline.health import SinkHealth
from pipeline.influx import Influx1Client, connect
from pipeline.logs import LOG_FORMATS, configure_logging
from pipeline.metrics import SinkMetrics
from pipeline.sink import (
    CommitFailed,
    PartitionRecords,
    Sink,
    SinkSettings,
    TopicPartition,
    TransportUnavailable,
)

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


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> None:
        event.wait(seconds)


GC_THRESHOLDS = (50_000, 20, 20)
SWITCH_INTERVAL_S = 0.0005


def tune_interpreter() -> None:
    """Settings for a process that runs the sink (``gapwatch sink``, the benchmark).

    - **Garbage collector.** The consume loop allocates a few container objects per record and
      holds them until the batch is committed, so with the default thresholds (700, 10, 10) the
      cyclic collector ran every few hundred records and its full passes walked every live
      object: ~1.4 us of the ~13 us of CPU a point cost (``gapwatch bench sink``). The loop
      makes no reference cycles; collecting after 50,000 net allocations frees the same memory.
      What is alive at start-up (modules, config) is frozen out of collections altogether.
    - **GIL switch interval.** The writer thread needs the GIL back each time its socket call
      returns (the request sent in pieces, the response arriving) while the consume loop is
      busy decoding the next batch; with the default 5 ms each hand-back can idle InfluxDB for
      up to 5 ms, several times per write. 0.5 ms keeps that wait short; it only costs anything
      while two threads want to run.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def kafka_security(k: KafkaSettings) -> dict[str, Any]:
    """kafka-python options for TLS and SASL (none for PLAINTEXT)."""
    opts: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL_"):
        opts.update(
            sasl_mechanism=k.sasl_mechanism,
            sasl_plain_username=k.sasl_username,
            sasl_plain_password=k.sasl_password,
        )
    if k.ssl_cafile:
        opts["ssl_cafile"] = k.ssl_cafile
    return opts


def consumer_lag(consumer: Any, topic: str, timeout_ms: int) -> dict[tuple[str, int], int]:
    """Records not yet read, per assigned partition: ``end_offsets`` - ``position``.

    kafka-python's public API only. With no partition assigned (yet), the topic's partitions
    (from cached metadata) are asked for their end offsets anyway, so the call still proves
    that the brokers answer; the result is then empty. Raises KafkaError (e.g.
    KafkaTimeoutError) when they do not answer within ``timeout_ms``.
    """
    from kafka.structs import TopicPartition as KafkaTP

    assigned = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
    probe = assigned or [
        KafkaTP(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    if not probe:
        from kafka.errors import KafkaTimeoutError

        raise KafkaTimeoutError(f"no metadata for topic {topic!r} yet")
    ends = consumer.end_offsets(probe, timeout_ms=timeout_ms)
    lag = {}
    for tp in assigned:
        position = consumer.position(tp, timeout_ms=timeout_ms)
        if position is not None and ends.get(tp) is not None:
            lag[(tp.topic, tp.partition)] = max(0, int(ends[tp]) - int(position))
    return lag


class KafkaRecordSource:
    """kafka-python consumer in a group, manual commits, rebalance hook to the sink.

    Every ``metrics.lag_interval_s`` a poll also refreshes the consumer lag (metric and
    ``/healthz``) and, with it, whether Kafka answers.
    """

    def __init__(
        self,
        cfg: SinkConfig,
        on_revoke: Callable[[], None],
        *,
        metrics: SinkMetrics | None = None,
        health: SinkHealth | None = None,
    ) -> None:
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        k = cfg.kafka

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                parts = sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)
                log.info("sink.partitions_revoked", extra={"partitions": parts})
                on_revoke()

            def on_partitions_assigned(self, assigned: Any) -> None:
                parts = sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)
                log.info("sink.partitions_assigned", extra={"partitions": parts})

        self._consumer = KafkaConsumer(
            **kafka_security(k),
            bootstrap_servers=k.bootstrap.split(","),
            group_id=k.group_id,
            client_id=k.client_id,
            enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset,
            max_poll_records=k.max_poll_records,
            fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.max_partition_fetch_bytes,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            max_poll_interval_ms=k.max_poll_interval_ms,
            check_crcs=k.check_crcs,
        )
        self._consumer.subscribe([k.topic], listener=_Listener())
        self._topic = k.topic
        self._metrics = metrics
        self._health = health
        self._lag_every = cfg.metrics.lag_interval_s
        self._lag_at = 0.0
        self._lag_labels: set[tuple[str, int]] = set()

    def poll(self, timeout_s: float, max_records: int) -> list[PartitionRecords]:
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        if self._health is not None:
            self._health.polled()
        if time.monotonic() >= self._lag_at:
            self._lag_at = time.monotonic() + self._lag_every
            self.refresh_lag()
        return [PartitionRecords(tp.topic, tp.partition, records) for tp, records in polled.items()]

    def refresh_lag(self) -> dict[tuple[str, int], int]:
        """Ask Kafka for end offsets; update the lag gauge and the Kafka part of /healthz."""
        from kafka.errors import KafkaError

        try:
            lag = consumer_lag(self._consumer, self._topic, timeout_ms=2000)
        except KafkaError as exc:
            if self._health is not None:
                self._health.failed("kafka", f"{type(exc).__name__}: {exc}")
            log.warning("sink.kafka_unavailable", extra={"error": str(exc)})
            return {}
        if self._health is not None:
            self._health.ok("kafka")
            self._health.extra = {
                "partitions": [f"{t}/{p}" for t, p in sorted(lag)],
                "consumer_lag": sum(lag.values()),
            }
        if self._metrics is not None:
            gauge = self._metrics.consumer_lag
            for t, p in self._lag_labels - set(lag):
                with contextlib.suppress(KeyError):
                    gauge.remove(t, str(p))
            for (t, p), n in lag.items():
                gauge.labels(t, str(p)).set(n)
            self._lag_labels = set(lag)
        return lag

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata
        from kafka.structs import TopicPartition as KafkaTP

        payload = {KafkaTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            self._consumer.commit(payload)
        except KafkaError as exc:
            raise CommitFailed(f"offset commit refused: {exc}") from exc

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaDeadLetters:
    """Dead letters to a Kafka topic, keyed like the record they came from."""

    def __init__(self, cfg: SinkConfig) -> None:
        from kafka import KafkaProducer

        self._topic = cfg.kafka.deadletter_topic
        self._producer = KafkaProducer(
            **kafka_security(cfg.kafka),
            bootstrap_servers=cfg.kafka.bootstrap.split(","),
            client_id=f"{cfg.kafka.client_id}-deadletter",
            acks="all",
            linger_ms=5,
        )

    def publish(self, letters: list[tuple[DeadLetter, bytes | None]]) -> None:
        from kafka.errors import KafkaError

        try:
            futures = [
                self._producer.send(self._topic, key=key, value=letter.encode())
                for letter, key in letters
            ]
            self._producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=0)
        except KafkaError as exc:
            raise TransportUnavailable(f"dead-letter topic {self._topic!r}: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=10)


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
