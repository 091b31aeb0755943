"""The sink's Kafka adapters: the consumer-group record source and the dead-letter producer.

:class:`KafkaRecordSource` implements :class:`pipeline.sink.RecordSource` (manual commits, a
rebalance hook to the sink, consumer lag per partition); :class:`KafkaDeadLetters` implements
:class:`pipeline.sink.DeadLetterPort`. Both use kafka-python's public API only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge.kafka_out import security_options
from edge.schema import DeadLetter
from pipeline.config import KafkaSettings, SinkConfig
from pipeline.errors import CommitFailed, TransportUnavailable
from pipeline.health import SinkHealth
from pipeline.metrics import SinkMetrics
from pipeline.sink import PartitionRecords, TopicPartition

__all__ = ["KafkaDeadLetters", "KafkaRecordSource", "consumer_lag", "kafka_security"]

log = logging.getLogger(__name__)

# How long one offset commit may wait for the group coordinator. A commit that times out is
# counted (``commit_failures``) and covered by the next one; its batch is already in InfluxDB,
# so at worst it is re-read and rewritten (the same points) after a restart.
COMMIT_TIMEOUT_MS = 15_000


def kafka_security(k: KafkaSettings) -> dict[str, Any]:
    """kafka-python options for TLS and SASL (none for PLAINTEXT), from the sink's settings."""
    return security_options(
        k.security_protocol, k.sasl_mechanism, k.sasl_username, k.sasl_password, k.ssl_cafile
    )


def consumer_lag(consumer: Any, topic: str, timeout_ms: int) -> dict[tuple[str, int], int]:
    """Records not yet read, per assigned partition: ``end_offsets`` - ``position``.

    kafka-python's public API only, and only calls bounded by ``timeout_ms``. With no partition
    assigned (yet, or after the group lost its coordinator), partition 0 of the topic (every
    topic has one) is asked for its end offset anyway, so the call still proves that the
    brokers answer; the result is then empty. ``partitions_for_topic`` is not used: when the
    topic is not in the cached metadata it fetches metadata with no time bound (kafka-python
    3.0.12), so with the brokers down it would stall the consume loop. Raises KafkaError (e.g.
    KafkaTimeoutError) when the brokers do not answer within ``timeout_ms``.
    """
    from kafka.structs import TopicPartition as KafkaTP

    assigned = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
    probe = assigned or [KafkaTP(topic, 0)]
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
        """Records by partition; none while Kafka fails (logged, counted in /healthz, retried).

        A broker that dies mid-poll (or mid-rebalance) can make kafka-python's ``poll`` raise;
        that must not end the sink: records already read are in the batch in hand, and the
        next poll resumes from the position once the brokers answer again.
        """
        from kafka.errors import KafkaError

        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            if self._health is not None:
                self._health.polled()
            error = self._kafka_failed("poll: ", exc)
            log.warning("sink.kafka_poll_failed", extra={"error": error})
            time.sleep(min(max(timeout_s, 0.1), 1.0))  # no busy loop while the brokers are away
            return []
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
            self._kafka_failed("", exc)
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
        try:  # bounded: with the coordinator gone an unbounded commit would stall the loop
            self._consumer.commit(payload, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            self._kafka_failed("commit: ", exc)
            raise CommitFailed(f"offset commit refused: {exc}") from exc

    def _kafka_failed(self, where: str, exc: Exception) -> str:
        """Mark Kafka as failing in /healthz (when there is one); return the error text."""
        error = f"{where}{type(exc).__name__}: {exc}"
        if self._health is not None:
            self._health.failed("kafka", error)
        return error

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
