"""The broker settings gapwatch ships (deploy/mosquitto/gapwatch.conf) are the ones tested.

The fault suite's private Mosquitto, deploy/local/stack and the compose stack all load that one
file; here a real broker running it keeps every QoS 1 message queued for an absent persistent
session across kill -9, more of them than Mosquitto's default queue of 1000 holds. The same
broker without the file loses them (the control), so the test can fail.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "mosquitto" / "gapwatch.conf"
MESSAGES = 1500  # above Mosquitto's default max_queued_messages (1000)


def _settings(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def _conf_of(service: Any) -> str:
    return Path(service.command[-1]).read_text()


def test_the_shipped_file_holds_the_promise_settings() -> None:
    s = _settings(SHIPPED.read_text())
    assert s["persistence"] == "true"
    assert s["autosave_on_changes"] == "true" and s["autosave_interval"] == "1"
    assert int(s["max_queued_messages"]) >= 100_000
    assert s["max_queued_bytes"] == "0"
    assert int(s["max_inflight_messages"]) >= 1000
    # only this .conf sits in the directory: include_dir loads every *.conf there
    assert sorted(p.name for p in SHIPPED.parent.glob("*.conf")) == ["gapwatch.conf"]


def test_the_fault_harness_and_the_stack_load_the_shipped_file(faults_mosquitto: Any) -> None:
    conf = _conf_of(faults_mosquitto)
    assert f"include_dir {SHIPPED.parent}" in conf.splitlines()
    own = _settings(conf)
    for key in ("max_queued_messages", "autosave_on_changes", "autosave_interval"):
        assert key not in own, f"the harness overrides {key}: test what ships instead"
    stack = (REPO / "deploy" / "local" / "stack").read_text()
    assert "MOSQUITTO_SHIPPED=$ROOT/deploy/mosquitto" in stack
    body = re.search(r"write_mosquitto_conf\(\) \{(.*?)\n\}", stack, re.S)
    assert body is not None and "include_dir $MOSQUITTO_SHIPPED" in body.group(1)
    assert "max_queued_messages" not in body.group(1)


def _client(client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def _connect_subscriber(port: int, client_id: str, topic: str, got: list[bytes]) -> Any:
    """A persistent MQTT 5 session (clean_start False, 1 h expiry) subscribed at QoS 1."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = _client(client_id)
    subscribed = threading.Event()
    client.on_message = lambda c, u, msg: got.append(bytes(msg.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    return client


def _publish_all(port: int, topic: str, payloads: list[bytes]) -> None:
    client = _client(f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()  # PUBACKed: the broker has taken it
    finally:
        client.disconnect()
        client.loop_stop()


def _queued_across_kill(service: Any) -> int:
    """Messages an absent persistent session gets after the broker was SIGKILLed."""
    topic = f"faults/broker/{uuid.uuid4().hex[:8]}"
    sub_id = f"sub-{uuid.uuid4().hex[:8]}"
    got: list[bytes] = []
    sub = _connect_subscriber(service.port, sub_id, topic, got)
    sub.disconnect()
    sub.loop_stop()
    payloads = [f"{i:06d}".encode() for i in range(MESSAGES)]
    _publish_all(service.port, topic, payloads)
    time.sleep(0.5)  # a few broker loop iterations: the shipped file saves after each change
    service.kill()
    service.start()
    got.clear()
    sub = _connect_subscriber(service.port, sub_id, topic, got)
    deadline = time.monotonic() + 30
    last, still = -1, 0
    while time.monotonic() < deadline and still < 10:  # until nothing new for ~2 s
        time.sleep(0.2)
        still = still + 1 if len(got) == last else 0
        last = len(got)
    sub.disconnect()
    sub.loop_stop()
    assert set(got) <= set(payloads)  # QoS 1 may repeat a message, never invent one
    print(f"queued across kill -9: {len(set(got))} of {MESSAGES}")
    return len(set(got))


def test_an_absent_session_keeps_every_queued_message_across_kill_9(faults_mosquitto: Any) -> None:
    assert _queued_across_kill(faults_mosquitto) == MESSAGES


def test_control_mosquittos_defaults_lose_them(
    tmp_path: Path, faults_mosquitto: Any, faults_servers: Any
) -> None:
    servers = faults_servers  # faults_mosquitto: skipped (or failed) the same way without it
    service = servers.start_mosquitto(
        tmp_path / "mosquitto-default", plain_port=servers.free_port(), allow_anonymous=True
    )
    try:
        assert _queued_across_kill(service) < MESSAGES
    finally:
        service.kill()
