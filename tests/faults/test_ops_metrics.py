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
        h.wait_until("503 naming Kafka", lambda: _health(port)[0] == 503, 60)
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
