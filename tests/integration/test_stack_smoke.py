"""Smoke tests of the local stack: each service does the one thing gapwatch needs from it.

Real services only (``deploy/local/stack up``); each test works on its own topic or database.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.integration

TIMEOUT_S = 20.0


def test_mqtt_qos1_roundtrip(mqtt_addr: tuple[str, int], unique_name: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"sensors/{unique_name}/dev-1"
    payload = json.dumps({"ts": 1_700_000_000, "values": {"temp": 21.5, "rh": None}}).encode()
    subscribed = threading.Event()
    received: list[mqtt.MQTTMessage] = []
    got = threading.Event()

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received.append(msg)
        got.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique_name}-sub")
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect(*mqtt_addr, keepalive=30)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique_name}-pub")
    try:
        assert subscribed.wait(TIMEOUT_S), "SUBACK not received"
        pub.connect(*mqtt_addr, keepalive=30)
        pub.loop_start()
        info = pub.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT_S)
        assert info.is_published(), "PUBACK not received"
        assert got.wait(TIMEOUT_S), "message not delivered to the subscriber"
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
    assert received[0].topic == topic
    assert received[0].payload == payload
    assert received[0].qos == 1


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    """A fresh 3-partition topic, deleted after the test."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id=unique_name)
    try:
        admin.create_topics({unique_name: {"num_partitions": 3, "replication_factor": 1}})
        admin.wait_for_topics([unique_name], timeout_ms=int(TIMEOUT_S * 1000))
        yield unique_name
        admin.delete_topics([unique_name])
    finally:
        admin.close()


def test_kafka_produce_consume(kafka_bootstrap: str, kafka_topic: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    sent = [(f"site/dev-{i % 2}".encode(), f"tick-{i}".encode()) for i in range(6)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for key, value in sent:
            producer.send(kafka_topic, key=key, value=value).get(timeout=TIMEOUT_S)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{kafka_topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(TIMEOUT_S * 1000),
    )
    received: list[tuple[bytes, bytes, int]] = []
    try:
        for record in consumer:
            received.append((record.key, record.value, record.partition))
            if len(received) == len(sent):
                break
    finally:
        consumer.close()

    assert sorted((k, v) for k, v, _ in received) == sorted(sent)
    # same key -> same partition, and per-key order is kept
    for key in {k for k, _ in sent}:
        assert len({p for k, _, p in received if k == key}) == 1
        assert [v for k, v, _ in received if k == key] == [v for k, v in sent if k == key]


def _influx(url: str, path: str, params: dict[str, str], body: bytes | None = None) -> Any:
    request = urllib.request.Request(
        f"{url}{path}?{urllib.parse.urlencode(params)}", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None


@pytest.fixture
def influx_db(influx_url: str, unique_name: str) -> Iterator[str]:
    """A fresh InfluxDB database, dropped after the test."""
    db = unique_name.replace("-", "_")
    _influx(influx_url, "/query", {"q": f'CREATE DATABASE "{db}"'})
    yield db
    _influx(influx_url, "/query", {"q": f'DROP DATABASE "{db}"'})


def test_influx_write_and_query(influx_url: str, influx_db: str) -> None:
    lines = (
        "readings,site=s1,device=d1 temp=21.5,temp_imputed=false,score=0.25 1700000000000\n"
        "readings,site=s1,device=d1 temp=22.0,temp_imputed=true,score=3.5 1700000001000\n"
    )
    status, _ = _influx(influx_url, "/write", {"db": influx_db, "precision": "ms"}, lines.encode())
    assert status == 204

    status, result = _influx(
        influx_url,
        "/query",
        {
            "db": influx_db,
            "epoch": "ms",
            "q": "SELECT temp, temp_imputed, score FROM readings WHERE device = 'd1' ORDER BY time",
        },
    )
    assert status == 200
    series = result["results"][0]["series"][0]
    assert series["columns"] == ["time", "temp", "temp_imputed", "score"]
    assert series["values"] == [
        [1700000000000, 21.5, False, 0.25],
        [1700000001000, 22.0, True, 3.5],
    ]
