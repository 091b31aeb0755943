"""Operations signals under faults: MQTT reconnects counted by the agent, the sink's ``/healthz``
turning 503 while its Kafka is down and 200 once it is back. Private servers: killing them never
disturbs the shared stack."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_mqtt_reconnects_are_counted(
    faults_harness: Any,
    faults_mosquitto: Any,
    faults_agent: Callable[..., Any],
    kafka_bootstrap: str,
) -> None:
    h, mosquitto = faults_harness, faults_mosquitto
    agent = faults_agent(mosquitto.port, kafka_bootstrap)
    agent.start()
    agent.wait_subscribed()
    assert agent.metric("gapwatch_agent_mqtt_reconnects_total") == 0
    for n in (1, 2):
        mosquitto.kill()
        h.wait_until("disconnected", lambda: agent.metric("gapwatch_agent_mqtt_connected") == 0)
        mosquitto.start()
        agent.wait_subscribed()
        h.wait_until(
            f"{n} reconnects", lambda n=n: agent.metric("gapwatch_agent_mqtt_reconnects_total") == n
        )
    assert agent.metric("gapwatch_agent_last_message_age_seconds") == 0  # no device yet
    assert agent.stop() == 0


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())
    except OSError:
        return 0, {}


def test_sink_healthz_is_503_while_kafka_is_down(
    faults_harness: Any,
    faults_kafka_factory: Callable[..., Any],
    influx_url: str,
    tmp_path: Path,
) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from pipeline.errors import StorageError
    from pipeline.influx import Influx1Client

    h = faults_harness
    kafka = faults_kafka_factory()
    bootstrap = f"127.0.0.1:{kafka.port}"
    topic = f"faults-ops-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1), NewTopic(f"{topic}.sink-deadletter", 1, 1)])
    admin.close()
    database = topic.replace("-", "_")
    port = _free_port()
    env = h.sink_env(
        kafka_bootstrap=bootstrap, topic=topic, influx_url=influx_url, database=database
    )
    env.update(
        GAPWATCH_SINK__METRICS__PORT=str(port),
        GAPWATCH_SINK__METRICS__HOST="127.0.0.1",
        GAPWATCH_SINK__METRICS__LAG_INTERVAL_S="0.5",
    )
    log = (tmp_path / "sink.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gapwatch", "sink"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    try:
        h.wait_until("sink healthy", lambda: _health(port)[0] == 200, 90)
        kafka.kill()
        try:
            h.wait_until("503 naming Kafka", lambda: _health(port)[0] == 503, 60)
        except AssertionError as exc:  # say what the sink answered and logged instead
            log.flush()
            tail = (tmp_path / "sink.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"{exc}; /healthz said {_health(port)}; log:\n{tail}") from exc
        _, body = _health(port)
        assert body["status"] == "unhealthy" and not body["consuming"]
        assert not body["kafka"]["ok"] and body["kafka"]["error"]
        assert body["influxdb"]["ok"]  # the other side is fine
        kafka.start()
        h.wait_until("sink healthy again", lambda: _health(port)[0] == 200, 120)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        client = Influx1Client(influx_url, database)
        with contextlib.suppress(StorageError):
            client.drop_database()
        client.close()
    assert proc.returncode == 0, (tmp_path / "sink.log").read_text()[-3000:]


def test_consumer_lag_fails_in_bounded_time_once_the_brokers_are_gone(
    faults_kafka_factory: Callable[..., Any],
) -> None:
    """The /healthz probe must answer "Kafka is down", not stall the consume loop.

    A group member that lost its assignment (the coordinator died with the broker) probes a
    topic that is not in its cached metadata; kafka-python's ``partitions_for_topic`` waits for
    metadata with no time bound there, so the probe must not use it. (Here the old probe failed
    fast too; this guards the bound, it did not reproduce CI's failure.)
    """
    import threading

    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from pipeline.kafka_in import consumer_lag

    kafka = faults_kafka_factory()
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{kafka.port}", group_id=None)
    outcome: list[BaseException | dict[tuple[str, int], int]] = []
    try:
        consumer.topics()  # the brokers answered once: metadata for the topics they hold
        kafka.kill()

        def probe() -> None:
            try:
                outcome.append(consumer_lag(consumer, f"never-seen-{uuid.uuid4().hex}", 2000))
            except BaseException as exc:  # handed to the test thread
                outcome.append(exc)

        worker = threading.Thread(target=probe, daemon=True)
        worker.start()
        worker.join(120)  # generous: a bounded call answers in ~2 s; an unbounded one never
        assert not worker.is_alive(), "consumer_lag is still waiting for a dead broker"
    finally:
        consumer.close(autocommit=False, timeout_ms=1000)
    assert len(outcome) == 1 and isinstance(outcome[0], KafkaError), outcome


def test_a_poll_that_raises_is_reported_and_retried_not_fatal(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python's ``poll`` can raise when a broker dies mid-poll or mid-rebalance. The
    record source turns that into "no records, Kafka failing" (503 on /healthz) instead of
    ending the sink, and the next good poll makes Kafka healthy again."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaConnectionError

    from pipeline.config import KafkaSettings, MetricsSettings, SinkConfig
    from pipeline.health import SinkHealth
    from pipeline.kafka_in import KafkaRecordSource

    topic = f"faults-poll-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    cfg = SinkConfig(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic=topic, group_id=topic),
        metrics=MetricsSettings(lag_interval_s=0.0),
    )
    health = SinkHealth(lambda: 0.0)
    source = KafkaRecordSource(cfg, on_revoke=lambda: None, health=health)
    consumer = source._consumer  # the real kafka-python consumer this source polls
    real_poll = consumer.poll
    try:

        def broken_poll(**_: Any) -> Any:
            raise KafkaConnectionError("socket disconnected")

        monkeypatch.setattr(consumer, "poll", broken_poll)
        assert source.poll(0.1, 10) == []
        healthy, detail = health.report()
        assert not healthy and detail["loop_alive"]
        assert "KafkaConnectionError" in detail["kafka"]["error"]
        monkeypatch.setattr(consumer, "poll", real_poll)
        for _ in range(100):  # the topic's metadata may take a few polls to arrive
            source.poll(0.1, 10)
            if health.report()[1]["kafka"]["ok"]:
                break
        assert health.report()[1]["kafka"]["ok"]
    finally:
        source.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
