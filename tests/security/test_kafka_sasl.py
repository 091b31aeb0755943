"""Kafka SASL_SSL on a private KRaft broker (same jars as the stack), started by this module.

The broker has a SASL_SSL listener with PLAIN and SCRAM-SHA-256 users and a certificate from
the test CA. kafka-python producers and consumers authenticate with either mechanism over TLS
with hostname verification on; wrong passwords and plaintext clients are refused; the agent's
Kafka adapter (``edge.kafka_out.KafkaSink``) delivers and reads back through SASL_SSL.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from edge.config import KafkaConfig
from edge.errors import TransportError

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sasl(kafka: Any, mechanism: str, user: Any, password: str | None = None) -> dict[str, Any]:
    return {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(kafka.ca_file),
        "ssl_check_hostname": True,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user.name,
        "sasl_plain_password": user.password if password is None else password,
        "request_timeout_ms": 10_000,
    }


def _round_trip(opts: dict[str, Any], topic: str) -> list[bytes]:
    producer = KafkaProducer(**opts, acks="all")
    try:
        for i in range(3):
            producer.send(topic, key=b"lab/pump-1", value=f"tick-{i}".encode())
        producer.flush(30)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        topic, **opts, group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


@pytest.mark.parametrize(("mechanism", "which"), [("PLAIN", "plain"), ("SCRAM-SHA-256", "scram")])
def test_sasl_ssl_producer_and_consumer_authenticate(
    sec_kafka: Any, mechanism: str, which: str
) -> None:
    user = sec_kafka.plain_user if which == "plain" else sec_kafka.scram_user
    topic = f"sec-{which}-{uuid.uuid4().hex[:8]}"
    assert _round_trip(_sasl(sec_kafka, mechanism, user), topic) == [
        b"tick-0",
        b"tick-1",
        b"tick-2",
    ]


@pytest.mark.parametrize(("mechanism", "which"), [("PLAIN", "plain"), ("SCRAM-SHA-256", "scram")])
def test_wrong_password_is_refused_without_leaking_it(
    sec_kafka: Any, mechanism: str, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = sec_kafka.plain_user if which == "plain" else sec_kafka.scram_user
    wrong = "wrong-" + user.password
    # INFO, not DEBUG: kafka-python's DEBUG log prints SASL PLAIN auth bytes (the password);
    # the agent clamps the "kafka" loggers to INFO for that reason (docs/reliability.md).
    caplog.set_level(logging.INFO)
    with pytest.raises(KafkaError) as err:
        producer = KafkaProducer(
            **_sasl(sec_kafka, mechanism, user, wrong),
            max_block_ms=8000,
            bootstrap_timeout_ms=8000,
        )
        producer.close()
    text = "".join(traceback.format_exception(err.value))
    assert wrong not in text
    assert user.password not in text
    assert wrong not in caplog.text


def test_plaintext_client_is_refused_on_the_sasl_ssl_listener(sec_kafka: Any) -> None:
    with pytest.raises(KafkaError):
        KafkaProducer(
            bootstrap_servers=sec_kafka.bootstrap,
            max_block_ms=5000,
            bootstrap_timeout_ms=5000,
            request_timeout_ms=5000,
        ).close()


def test_agent_kafka_sink_over_sasl_ssl(
    sec_kafka: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from edge.kafka_out import KafkaSink

    user = sec_kafka.scram_user
    topic = f"sec-agent-{uuid.uuid4().hex[:8]}"
    secret = tmp_path / "kafka.password"
    secret.write_text(user.password + "\n")
    secret.chmod(0o600)
    config = KafkaConfig(
        bootstrap=sec_kafka.bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=user.name,
        sasl_password_file=str(secret),
        ssl_cafile=str(sec_kafka.ca_file),
        max_block_ms=10_000,
    )
    caplog.set_level(logging.INFO)
    sink = KafkaSink(config, "gw-sec")
    done = threading.Event()
    results: list[Any] = []

    def on_done(exc: Exception | None) -> None:
        results.append(exc)
        done.set()

    since = int(time.time() * 1000) - 60_000
    try:
        sink.send(topic, b"lab/pump-1", b"{}", [("gw-id", b"sec-1")], on_done)
        sink.flush(30)
        assert done.wait(30)
        assert results == [None]
        assert sink.find_sent([topic], since, "gw-id", b"sec-") == {b"sec-1"}
    finally:
        sink.close()
    assert user.password not in caplog.text


def test_agent_kafka_sink_with_wrong_password_is_a_transport_error(sec_kafka: Any) -> None:
    from edge.kafka_out import KafkaSink

    user = sec_kafka.plain_user
    config = KafkaConfig(
        bootstrap=sec_kafka.bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username=user.name,
        sasl_password="wrong-" + user.password,
        ssl_cafile=str(sec_kafka.ca_file),
        max_block_ms=5000,
    )
    sink = KafkaSink(config, "gw-sec-wrong")
    try:
        with pytest.raises(TransportError) as err:
            sink.send("sec-x", None, b"{}", [], lambda exc: None)
    finally:
        sink.close()
    assert user.password not in "".join(traceback.format_exception(err.value))
