"""Payloads that used to stop the real agent's delivery (issue 16), on the real stack.

Mosquitto -> ``gapwatch agent`` (subprocess) -> Kafka. One MQTT payload of 1.5 MB used to
become a dead letter of 1.5 MB that Kafka refused (MessageSizeTooLargeError), retried forever
as "Kafka unavailable", with nothing behind it delivered and /healthz still ok. Now the dead
letter keeps 16 KiB plus the payload's length and sha256, and a record Kafka still refuses
(here: a dead-letter topic whose ``max.message.bytes`` is 20 kB) is quarantined in the spool,
counted, and the ticks behind it go on, across a restart too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.bundle import read_manifest
from edge.schema import DeadLetter, ScoredTick

pytestmark = pytest.mark.integration


def publish(mqtt_addr: tuple[str, int], client_id: str, sends: list[tuple[str, bytes]]) -> None:
    """Publish with QoS 1 and wait for every PUBACK (a real client, like mosquitto_pub)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(*mqtt_addr)
    client.loop_start()
    try:
        for topic, payload in sends:
            client.publish(topic, payload, qos=1).wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


def ticks(agent: Any, bundles: Path, start_s: int, n: int) -> list[tuple[str, bytes]]:
    channels = read_manifest(bundles / "skab" / "1").channel_names
    topic = f"{agent.prefix}/lab/pump-1"
    return [
        (topic, json.dumps({"ts": start_s + k, "values": dict.fromkeys(channels, 1.0)}).encode())
        for k in range(n)
    ]


def scored_ts(values: list[bytes]) -> set[int]:
    return {t.ts_ms // 1000 for t in map(ScoredTick.decode, values) if t.revision == 0}


def test_a_1_5_mb_payload_is_a_short_dead_letter_and_the_ticks_behind_it_reach_kafka(
    mqtt_addr: tuple[str, int],
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
) -> None:
    agent = agent_runner(agent_skab_bundles, align__lateness_ticks="0")
    agent.start()
    agent.wait_ready()
    start = int(time.time()) - 120
    body = {"ts": start, "values": {"x": 1.0}, "pad": "é" * 750_000}
    huge = json.dumps(body, ensure_ascii=False).encode()  # 1.5 MB of 2-byte characters
    assert len(huge) > 1_500_000
    good = ticks(agent, agent_skab_bundles, start + 1, 30)
    publish(mqtt_addr, f"{agent.prefix}-pub", [good[0], (good[0][0], huge), *good[1:]])

    wanted = set(range(start + 1, start + 30))  # the newest tick may still be open
    scored = agent_kafka_reader(f"{agent.prefix}.scored", lambda vs: wanted <= scored_ts(vs))
    assert wanted <= scored_ts(scored)
    [raw] = agent_kafka_reader(f"{agent.prefix}.deadletter", lambda vs: len(vs) >= 1, 30.0)
    letter = DeadLetter.decode(raw)
    assert letter.reason == "oversized"
    # 16 KiB of text; "é" is written as the JSON escape \u00e9 (6 bytes for 2)
    assert len(raw) < 3 * 16 * 1024 + 1024 and letter.raw_truncated
    assert huge.startswith(letter.raw)
    assert 16 * 1024 - 3 <= len(letter.raw) <= 16 * 1024
    assert (letter.raw_len, letter.raw_sha256) == (len(huge), hashlib.sha256(huge).hexdigest())
    assert agent.metric('gapwatch_agent_bad_input_total{reason="oversized"}') == 1
    assert agent.metric("gapwatch_agent_kafka_quarantined_total") == 0
    health = agent.health()
    assert health is not None and health["status"] == "ok" and not health["delivery_stuck"]
    assert agent.stop() == 0, agent.log_text()
    events = [e["event"] for e in agent.log_events()]
    assert "forward.kafka_unavailable" not in events, agent.log_text()


def test_a_record_over_the_producer_limit_is_quarantined_and_the_ticks_go_on(
    mqtt_addr: tuple[str, int],
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
) -> None:
    agent = agent_runner(
        agent_skab_bundles,
        align__lateness_ticks="0",
        mqtt__max_payload_bytes="2000",
        kafka__deadletter_raw_max_bytes="65536",
        kafka__max_request_bytes="20000",  # kafka-python refuses the letter in send()
    )
    agent.start()
    agent.wait_ready()
    start = int(time.time()) - 120
    good = ticks(agent, agent_skab_bundles, start, 20)
    publish(mqtt_addr, f"{agent.prefix}-pub", [*good[:5], (good[0][0], b"x" * 100_000), *good[5:]])
    wanted = set(range(start, start + 19))
    scored = agent_kafka_reader(f"{agent.prefix}.scored", lambda vs: wanted <= scored_ts(vs))
    assert wanted <= scored_ts(scored), agent.log_text()
    metric = 'gapwatch_agent_kafka_quarantined_total{reason="too_large"}'
    deadline = time.monotonic() + 30
    while agent.metric(metric) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent.metric(metric) == 1
    assert agent.stop() == 0, agent.log_text()
    events = agent.log_events()
    assert len([e for e in events if e["event"] == "forward.quarantined"]) == 1
    assert not [e for e in events if e["event"] == "forward.kafka_unavailable"]


def test_a_record_kafka_refuses_is_quarantined_counted_and_kept_across_a_restart(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError

    agent = agent_runner(
        agent_skab_bundles,
        align__lateness_ticks="0",
        mqtt__max_payload_bytes="2000",
        kafka__deadletter_raw_max_bytes="65536",  # a letter of ~64 KiB: over this topic's limit
    )
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    dead_topic = f"{agent.prefix}.deadletter"
    admin.create_topics([NewTopic(dead_topic, 1, 1, topic_configs={"max.message.bytes": "20000"})])
    try:
        agent.start()
        agent.wait_ready()
        start = int(time.time()) - 120
        good = ticks(agent, agent_skab_bundles, start, 40)
        big = (good[0][0], b"x" * 100_000)
        publish(mqtt_addr, f"{agent.prefix}-pub", [*good[:10], big, *good[10:20]])
        first = set(range(start, start + 19))
        scored = agent_kafka_reader(f"{agent.prefix}.scored", lambda vs: first <= scored_ts(vs))
        assert first <= scored_ts(scored), agent.log_text()

        def quarantined() -> float:
            return agent.metric('gapwatch_agent_kafka_quarantined_total{reason="too_large"}')

        deadline = time.monotonic() + 60
        while quarantined() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert quarantined() == 1, agent.log_text()
        health = agent.health()
        assert health is not None and health["status"] == "ok", health
        assert health["kafka_quarantined"] == 1
        assert agent.stop() == 0, agent.log_text()

        # A restart neither stops on it nor resends it; the ticks after it are delivered.
        agent.start()
        agent.wait_ready()
        publish(mqtt_addr, f"{agent.prefix}-pub2", good[20:])
        rest = set(range(start + 20, start + 39))
        scored = agent_kafka_reader(f"{agent.prefix}.scored", lambda vs: rest <= scored_ts(vs))
        assert rest <= scored_ts(scored)
        assert agent.stop() == 0, agent.log_text()
    finally:
        with contextlib.suppress(KafkaError):
            admin.delete_topics([dead_topic])
        admin.close()

    events = agent.log_events()
    refused = [e for e in events if e["event"] == "forward.quarantined"]
    assert len(refused) == 1 and refused[0]["reason"] == "too_large", agent.log_text()
    assert not [e for e in events if e["event"] == "forward.kafka_unavailable"]
    spool = sqlite3.connect(tmp_path / "state" / "spool.sqlite")
    try:
        rows = spool.execute("SELECT topic, reason, value FROM quarantine").fetchall()
    finally:
        spool.close()
    [(topic, reason, value)] = rows
    assert (topic, reason) == (dead_topic, "too_large")
    letter = DeadLetter.decode(bytes(value))  # kept whole: nothing is silently lost
    assert letter.reason == "oversized" and letter.raw_len == 100_000 and len(value) > 65536
