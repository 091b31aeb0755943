"""Kafka adapter (kafka-python 3.x): implements :class:`edge.ports.RecordSink`.

The producer is created lazily (kafka-python bootstraps in its constructor, and the agent must
start while Kafka is down). It uses ``acks="all"``, the idempotent producer (default in
kafka-python 3, so its own retries never duplicate a record within a session), unlimited
retries bounded by ``delivery_timeout_ms``, and ``linger_ms``/``batch_size`` batching.
``send`` blocks at most ``max_block_ms`` (metadata unavailable): then it raises
:class:`~edge.errors.TransportError` and the forwarder backs off.

Errors that doom one record (:data:`RECORD_ERRORS`: too large for ``max_request_size`` or the
broker's ``message.max.bytes``, an invalid topic name, a record the broker calls invalid) are
raised, or passed to the delivery callback, as :class:`~edge.errors.DeliveryRefused`, and the
forwarder quarantines the record. Only errors kafka-python marks non-retriable
(``retriable = False``) *and* that are about the record itself count: a non-retriable error
about the client or the cluster (authorization, an unsupported version, a fenced producer)
would refuse every record alike, so it stays a delivery failure that is retried (and shows as
stuck delivery in the health check) rather than a reason to quarantine the whole spool.

:meth:`KafkaSink.find_sent` reads back, with a short-lived consumer, the records written since
a time, to learn which spool ids already arrived (see :mod:`edge.forward`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.config import KafkaConfig
from edge.errors import ConfigError, DeliveryRefused, TransportError
from edge.ports import DeliveryCallback

__all__ = ["RECORD_ERRORS", "KafkaSink", "refusal", "security_options"]

log = logging.getLogger(__name__)
_READ_TIMEOUT_S = 30.0
_HASH_CACHE = 100_000  # keys (devices) whose partition hash is remembered


# kafka-python error class name -> the quarantine reason (all have retriable = False)
RECORD_ERRORS = {
    "MessageSizeTooLargeError": "too_large",
    "RecordListTooLargeError": "too_large",
    "InvalidTopicError": "invalid_topic",
    "InvalidRecordError": "invalid_record",
    "InvalidTimestampError": "invalid_timestamp",
    "UnsupportedForMessageFormatError": "unsupported_format",
}


def refusal(exc: BaseException) -> BaseException:
    """``exc`` as :class:`DeliveryRefused` when it dooms the record itself, else unchanged."""
    from kafka.errors import KafkaError

    original: BaseException = exc
    if isinstance(exc, KafkaError) and not exc.retriable:
        for cls in type(exc).__mro__:
            reason = RECORD_ERRORS.get(cls.__name__)
            if reason is not None and cls.__module__ == "kafka.errors":
                return DeliveryRefused(reason, f"{type(exc).__name__}: {exc}")
    return original


def _key_hash_cache() -> Any:
    """kafka-python's default partitioner, with each key's murmur2 hash remembered.

    The agent sends every record of a device with the same key, and the pure-Python murmur2
    is a large part of a send: the partition chosen is exactly the default one.
    """
    from kafka.partitioner.default import DefaultPartitioner, murmur2

    class KeyHashCache(DefaultPartitioner):  # type: ignore[misc]
        def __init__(self) -> None:
            self._hashes: dict[bytes, int] = {}

        def partition(  # noqa: PLR0917 - kafka-python calls it positionally
            self,
            topic: str,
            key: Any,
            serialized_key: bytes | None,
            value: Any,
            serialized_value: Any,
            cluster: Any,
        ) -> int:
            parts = cluster.partitions_for_topic(topic) if serialized_key is not None else None
            if not parts:
                return int(
                    super().partition(topic, key, serialized_key, value, serialized_value, cluster)
                )
            h = self._hashes.get(serialized_key)  # type: ignore[arg-type]
            if h is None:
                if len(self._hashes) >= _HASH_CACHE:
                    self._hashes.clear()
                h = murmur2(serialized_key) & 0x7FFFFFFF
                self._hashes[serialized_key] = h  # type: ignore[index]
            ordered = sorted(parts)
            return int(ordered[h % len(ordered)])

    return KeyHashCache()


def security_options(
    protocol: str, mechanism: str, username: str, password: str, cafile: str
) -> dict[str, Any]:
    """kafka-python options for TLS and SASL: the one builder of the agent and the sink."""
    opts: dict[str, Any] = {"security_protocol": protocol}
    if mechanism and protocol.startswith("SASL_"):
        opts.update(
            sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password
        )
    if cafile:
        opts["ssl_cafile"] = cafile
    return opts


class KafkaSink:
    """Producer side of the agent; thread-safe for one sending thread plus callbacks."""

    def __init__(self, config: KafkaConfig, client_id: str) -> None:
        self._config = config
        self._client_id = config.client_id or client_id
        self._producer: Any = None

    def _common(self) -> dict[str, Any]:
        c = self._config
        opts: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in c.bootstrap.split(",") if s.strip()],
            "client_id": self._client_id,
            "request_timeout_ms": c.request_timeout_ms,
            "reconnect_backoff_max_ms": 2000,  # notice a returning broker within seconds
        }
        password = c.sasl_password
        if c.sasl_mechanism and c.sasl_password_file:
            try:
                password = Path(c.sasl_password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"kafka.sasl_password_file {c.sasl_password_file!r}: {exc.strerror}"
                ) from exc
        opts.update(
            security_options(
                c.security_protocol, c.sasl_mechanism, c.sasl_username, password, c.ssl_cafile
            )
        )
        return opts

    def _ensure(self) -> Any:
        if self._producer is not None:
            return self._producer
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        c = self._config
        try:
            self._producer = KafkaProducer(
                **self._common(),
                partitioner=_key_hash_cache(),
                acks="all",
                enable_idempotence=True,
                linger_ms=c.linger_ms,
                batch_size=c.batch_size,
                compression_type=None if c.compression == "none" else c.compression,
                delivery_timeout_ms=c.delivery_timeout_ms,
                max_request_size=c.max_request_bytes,
                max_block_ms=c.max_block_ms,
                bootstrap_timeout_ms=max(c.max_block_ms, 1000),
            )
        except (KafkaError, OSError) as exc:
            raise TransportError(f"Kafka at {c.bootstrap} is unreachable: {exc!r}") from exc
        log.info("kafka.connected", extra={"bootstrap": c.bootstrap})
        return self._producer

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        on_done: DeliveryCallback,
    ) -> None:
        from kafka.errors import KafkaError

        producer = self._ensure()
        try:
            future = producer.send(topic, value=value, key=key, headers=headers)
        except (KafkaError, OSError) as exc:
            refused = refusal(exc)
            if isinstance(refused, DeliveryRefused):
                raise refused from exc
            raise TransportError(f"cannot queue a record for {topic}: {exc!r}") from exc
        future.add_callback(lambda _meta: on_done(None))
        future.add_errback(lambda exc: on_done(refusal(exc)))

    def flush(self, timeout_s: float) -> None:
        from kafka.errors import KafkaError

        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise TransportError(f"flush did not finish in {timeout_s}s: {exc!r}") from exc

    def find_sent(
        self, topics: Sequence[str], since_ms: int, header: str, prefix: bytes
    ) -> set[bytes]:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        found: set[bytes] = set()
        opts = self._common()
        opts["client_id"] = f"{self._client_id}-reconcile-{uuid.uuid4().hex[:6]}"
        try:
            consumer = KafkaConsumer(
                **opts,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_uncommitted",
                bootstrap_timeout_ms=max(self._config.max_block_ms, 1000),
            )
        except (KafkaError, OSError) as exc:
            raise TransportError(f"cannot read back from Kafka: {exc!r}") from exc
        try:
            parts = [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            if not parts:
                return found
            starts = consumer.offsets_for_times(dict.fromkeys(parts, max(0, since_ms)))
            ends = consumer.end_offsets(parts)
            todo = {
                tp: off.offset
                for tp, off in starts.items()
                if off is not None and off.offset < ends[tp]
            }
            if not todo:
                return found
            consumer.assign(list(todo))
            for tp, offset in todo.items():
                consumer.seek(tp, offset)
            remaining = dict(todo)
            idle_polls = 0
            while remaining and idle_polls < int(_READ_TIMEOUT_S):
                batch = consumer.poll(timeout_ms=1000, max_records=5000)
                idle_polls = 0 if batch else idle_polls + 1
                for records in batch.values():
                    for rec in records:
                        for name, value in rec.headers or ():
                            if name == header and value.startswith(prefix):
                                found.add(bytes(value))
                for tp in list(remaining):
                    if consumer.position(tp) >= ends[tp]:
                        del remaining[tp]
            if remaining:
                raise TransportError(
                    f"could not read Kafka back to the end of {sorted(map(str, remaining))}"
                )
        except KafkaError as exc:
            raise TransportError(f"cannot read back from Kafka: {exc!r}") from exc
        finally:
            consumer.close()
        log.info("kafka.read_back", extra={"partitions": len(parts), "found": len(found)})
        return found

    def abandon(self) -> None:
        """Drop the producer without waiting; pending deliveries fail; the next send reconnects."""
        self._close(0.0)

    def close(self) -> None:
        self._close(5.0)

    def _close(self, timeout_s: float) -> None:
        from kafka.errors import KafkaError

        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout_s)
        except KafkaError as exc:
            # close() flushes first and raises while records are still pending (a broker that
            # is gone). kafka-python has no public force-close, so the old producer is closed
            # in the background: its pending records expire within delivery_timeout_ms (they
            # are still in the spool and are resent by the new producer), then close() returns.
            log.warning("kafka.close_deferred", extra={"error": repr(exc)})
            later_s = self._config.delivery_timeout_ms / 1000.0 + 5.0
            threading.Thread(
                target=_close_later, args=(producer, later_s), name="kafka-close", daemon=True
            ).start()


def _close_later(producer: Any, timeout_s: float) -> None:
    from kafka.errors import KafkaError

    try:
        producer.close(timeout=timeout_s)
    except KafkaError as exc:
        log.error("kafka.close_failed", extra={"error": repr(exc), "waited_s": timeout_s})
