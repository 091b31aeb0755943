"""KafkaSink's partitioner: the default murmur2 partition, with the hashes remembered."""

from __future__ import annotations

from typing import Any

from kafka.partitioner.default import DefaultPartitioner

from edge.kafka_out import _key_hash_cache


class Cluster:
    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._p = partitions

    def topics(self) -> set[str]:
        return set(self._p)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._p.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._p.get(topic, set())


def test_cached_partitioner_picks_the_default_partition_for_every_key() -> None:
    cached: Any = _key_hash_cache()
    default = DefaultPartitioner()
    for n in (1, 3, 12):
        cluster = Cluster({"t": set(range(n))})
        for k in range(300):
            key = f"site-{k % 7}/device-{k}".encode()
            for _ in range(2):  # the second time from the cache
                want = default.partition("t", key, key, b"v", b"v", cluster)
                assert cached.partition("t", key, key, b"v", b"v", cluster) == want
    grown = Cluster({"t": set(range(5))})  # partitions added: the same hash, a new modulus
    key = b"site-1/device-1"
    assert cached.partition("t", key, key, None, None, grown) == default.partition(
        "t", key, key, None, None, grown
    )
    keyless = cached.partition("t", None, None, b"v", b"v", grown)
    assert keyless in range(5)


def test_errors_that_doom_one_record_become_delivery_refused_and_others_stay() -> None:
    import pytest
    from kafka import errors

    from edge.errors import DeliveryRefused
    from edge.kafka_out import refusal

    for exc, reason in [
        (errors.MessageSizeTooLargeError("1500000 bytes"), "too_large"),
        (errors.RecordListTooLargeError(), "too_large"),
        (errors.InvalidTopicError(), "invalid_topic"),
        (errors.InvalidRecordError(), "invalid_record"),
    ]:
        out = refusal(exc)
        assert isinstance(out, DeliveryRefused) and out.reason == reason, exc
    for exc in [
        errors.KafkaTimeoutError(),  # retriable: an outage
        errors.NotEnoughReplicasError(),  # retriable
        errors.TopicAuthorizationFailedError(),  # non-retriable, but about the client
        errors.BrokerNotAvailableError(),
        OSError("reset"),
    ]:
        assert refusal(exc) is exc
    with pytest.raises(AssertionError):
        assert isinstance(refusal(errors.UnknownTopicOrPartitionError()), DeliveryRefused)


def test_send_raises_delivery_refused_for_a_record_over_the_producer_limit() -> None:
    import pytest
    from kafka import errors

    from edge.config import KafkaConfig
    from edge.errors import DeliveryRefused, TransportError
    from edge.kafka_out import KafkaSink

    class Producer:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def send(self, *_a: Any, **_k: Any) -> Any:
            raise self.exc

    sink = KafkaSink(KafkaConfig(), "test")
    sink._producer = Producer(errors.MessageSizeTooLargeError("too big"))
    with pytest.raises(DeliveryRefused, match="too_large"):
        sink.send("t", b"k", b"v" * 10, [], lambda _e: None)
    sink._producer = Producer(errors.KafkaTimeoutError("no metadata"))
    with pytest.raises(TransportError):
        sink.send("t", b"k", b"v", [], lambda _e: None)
