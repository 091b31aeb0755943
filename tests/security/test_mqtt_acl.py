"""The shipped MQTT lock-down on a real Mosquitto: deploy/mosquitto/acl plus the password file
deploy/compose/init_secrets.py generates, with the shipped broker settings (the compose stack's
broker, on a loopback port of its own).

A sensor logged in as ``<site>/<device>`` publishes its own topics and nothing else: not as
another device, not a model announcement, not an agent status; it reads nothing (Mosquitto
2.0.11 grants every SUBSCRIBE and checks "read" on each delivery, so delivery is what is
tested). The agent's
own MQTT adapter subscribes (every SUBACK granted) and sees the sensors; only the registry user
announces models; anonymous and wrong passwords are refused.
"""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.ports import SystemClock

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "deploy" / "mosquitto" / "acl"
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87


def _init_secrets() -> ModuleType:
    path = REPO / "deploy" / "compose" / "init_secrets.py"
    spec = importlib.util.spec_from_file_location("_gapwatch_init_secrets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Broker:
    port: int
    logins: dict[str, str]  # user -> password


@pytest.fixture(scope="module")
def acl_broker(
    tmp_path_factory: pytest.TempPathFactory, sec_servers: ModuleType
) -> Iterator[Broker]:
    servers = sec_servers
    secrets_dir = tmp_path_factory.mktemp("compose-secrets")
    tool = _init_secrets()
    assert tool.main(["--dir", str(secrets_dir), "--sensor", "lab/pump-1"]) == 0
    assert tool.main(["--dir", str(secrets_dir), "--sensor", "lab/pump-2"]) == 0  # adds one
    values = tool._read_env(secrets_dir / "values.env")
    logins = {user: values[key] for user, key in tool.MQTT_USERS.items()}
    for line in (secrets_dir / "sensors.txt").read_text().splitlines():
        user, _, password = line.partition(":")
        logins[user] = password
    assert set(logins) >= {"lab/pump-1", "lab/pump-2", "gapwatch-agent", "gapwatch-registry"}
    port = servers.free_port()
    service = servers.start_mosquitto(
        tmp_path_factory.mktemp("mosquitto-acl"),
        plain_port=port,
        allow_anonymous=False,
        password_file=secrets_dir / "mosquitto" / "passwd",
        acl_file=ACL,
        include_dir=servers.SHIPPED_MOSQUITTO_DIR,
    )
    try:
        yield Broker(port, logins)
    finally:
        service.kill()


class Client:
    """A paho MQTT 5 client that records what it receives and the PUBACK reason codes."""

    def __init__(self, broker: Broker, user: str | None, password: str | None = None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.connack: int | None = None
        self.granted: list[int] = []
        self._events = threading.Condition()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"acl-{uuid.uuid4().hex[:8]}", protocol=5
        )
        if user is not None:
            self.c.username_pw_set(user, broker.logins.get(user) if password is None else password)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None)

    def _notify(self) -> None:
        with self._events:
            self._events.notify_all()

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason.value
        self._notify()

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        self.got.append((msg.topic, bytes(msg.payload)))
        self._notify()

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        self.acks[mid] = reason.value
        self._notify()

    def _on_subscribe(self, c: Any, u: Any, mid: int, reasons: Any, props: Any) -> None:
        self.granted = [r.value for r in reasons]
        self._notify()

    def wait(self, done: Any, timeout_s: float = 10.0) -> bool:
        with self._events:
            return bool(self._events.wait_for(done, timeout_s))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK reason code (0 = accepted, 135 = not authorized)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.acks), f"no PUBACK for {topic}"
        return self.acks[info.mid]

    def subscribe(self, *filters: str) -> list[int]:
        self.granted = []
        self.c.subscribe([(f, 1) for f in filters])
        assert self.wait(lambda: bool(self.granted))
        return self.granted

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(acl_broker: Broker) -> Iterator[Any]:
    made: list[Client] = []

    def make(user: str | None, password: str | None = None) -> Client:
        client = Client(acl_broker, user, password)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_anonymous_and_wrong_passwords_are_refused(clients: Any) -> None:
    assert clients(None).connack != 0
    assert clients("lab/pump-1", "not-the-password").connack != 0
    assert clients("lab/pump-9", "whatever").connack != 0  # not in the password file
    assert clients("lab/pump-1").connack == 0


def test_a_sensor_writes_only_its_own_topics(clients: Any) -> None:
    tag = uuid.uuid4().hex[:6].encode()
    agent = clients("gapwatch-agent")
    agent.subscribe("sensors/+/+", "sensors/+/+/+", "gapwatch/models/+")
    sensor = clients("lab/pump-1")
    assert sensor.publish("sensors/lab/pump-1", b"own " + tag) == 0
    assert sensor.publish("sensors/lab/pump-1/Pressure", b"own channel " + tag) == 0
    refused = {
        "sensors/lab/pump-2": "another device",
        "sensors/lab/pump-2/Pressure": "another device's channel",
        "sensors/plant-b/pump-1": "the same device name at another site",
        "sensors/lab/pump-1/x/y": "below its own channel level",
        "gapwatch/models/skab": "a model announcement",
        "gapwatch/agents/gw-1/status": "an agent's status",
    }
    for topic, what in refused.items():
        assert sensor.publish(topic, b"forged " + tag, retain=True) == NOT_AUTHORIZED, what
    fence = clients("lab/pump-2")
    assert fence.publish("sensors/lab/pump-2", b"fence " + tag) == 0
    assert agent.wait(lambda: any(p == b"fence " + tag for _, p in agent.got))
    got = [(t, p) for t, p in agent.got if p.endswith(tag)]
    assert got == [
        ("sensors/lab/pump-1", b"own " + tag),
        ("sensors/lab/pump-1/Pressure", b"own channel " + tag),
        ("sensors/lab/pump-2", b"fence " + tag),
    ]  # nothing forged arrived, and the broker kept no forged retained announcement


def test_a_sensor_reads_nothing(clients: Any) -> None:
    # Mosquitto 2.0 grants the SUBSCRIBE and enforces "read" on every delivery
    tag = uuid.uuid4().hex[:6].encode()
    sensor = clients("lab/pump-1")
    sensor.subscribe("sensors/#", "gapwatch/#", "sensors/lab/pump-1")
    agent = clients("gapwatch-agent")
    agent.subscribe("sensors/+/+")
    assert clients("lab/pump-1").publish("sensors/lab/pump-1", b"own " + tag) == 0
    assert clients("lab/pump-2").publish("sensors/lab/pump-2", b"fence " + tag) == 0
    assert agent.wait(lambda: any(p == b"fence " + tag for _, p in agent.got))
    time.sleep(0.3)  # the broker sent both subscribers' copies in the same loop iteration
    assert sensor.got == []


def test_only_the_registry_announces_models(clients: Any) -> None:
    name = f"m{uuid.uuid4().hex[:6]}"
    agent = clients("gapwatch-agent")
    agent.subscribe(f"gapwatch/models/{name}")
    assert clients("gapwatch-agent").publish(f"gapwatch/models/{name}", b"x") == NOT_AUTHORIZED
    registry = clients("gapwatch-registry")
    assert registry.publish(f"gapwatch/models/{name}", b'{"version": "2"}', retain=True) == 0
    assert agent.wait(lambda: bool(agent.got))
    assert agent.got == [(f"gapwatch/models/{name}", b'{"version": "2"}')]
    assert registry.publish("sensors/lab/pump-1", b"x") == NOT_AUTHORIZED


@pytest.mark.parametrize("group", ["", "agents"])
def test_the_agents_own_adapter_connects_with_its_will_and_subscribes(
    acl_broker: Broker, clients: Any, group: str
) -> None:
    from edge.mqtt_source import MqttSource

    config = MqttConfig(
        host="127.0.0.1",
        port=acl_broker.port,
        username="gapwatch-agent",
        password=acl_broker.logins["gapwatch-agent"],
        shared_group=group,  # $share/<group>/sensors/+/+ for agents sharing the load
    )
    source = MqttSource(
        config,
        f"gw-acl-{uuid.uuid4().hex[:6]}",
        ["sensors/+/+", "sensors/+/+/+"],
        SystemClock(),
        extra_filters=["gapwatch/models/+"],
    )
    source.start()
    try:
        deadline = time.monotonic() + 20
        while not source.subscribed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.subscribed, "a SUBACK was refused: the ACL does not fit the agent"
        payload = b'{"ts": 1764000000, "values": {"x": 1}}'
        assert clients("lab/pump-2").publish("sensors/lab/pump-2", payload) == 0
        got: list[Any] = []
        while time.monotonic() < deadline and not any(m.topic.startswith("sensors/") for m in got):
            got += source.poll(10, 0.2)
        source.ack(got)
        assert [m.topic for m in got if m.topic.startswith("sensors/")] == ["sensors/lab/pump-2"]
    finally:
        source.stop()
