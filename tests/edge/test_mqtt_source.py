"""MqttSource without a broker: the buffer between paho's thread and the agent, and acks."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from edge.config import MqttConfig
from edge.fakes import FakeClock
from edge.mqtt_source import MqttSource, send_pubacks


class AckClient:
    """Records what paho would be asked to send (and offers its private queue, unused)."""

    def __init__(self, *, with_queue: bool) -> None:
        self.acks: list[tuple[int, int]] = []
        self.queued: list[tuple[int, bytes, int, int]] = []
        if with_queue:
            self._packet_queue = self._queue

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))

    def _queue(self, command: int, packet: bytes, mid: int, qos: int) -> None:
        self.queued.append((command, packet, mid, qos))


def source(queue_max: int = 100) -> MqttSource:
    return MqttSource(MqttConfig(queue_max=queue_max), "cid", ["sensors/+/+"], FakeClock())


def deliver(src: MqttSource, n: int, start: int = 1) -> None:
    for mid in range(start, start + n):
        msg = SimpleNamespace(topic="sensors/lab/p", payload=f"{mid}".encode(), mid=mid, qos=1)
        src._on_message(None, None, msg)


def test_pubacks_go_through_paho_s_public_manual_ack_api() -> None:
    client = AckClient(with_queue=True)  # even where paho's private queue exists
    send_pubacks(client, [1, 2, 65535])
    assert client.acks == [(1, 1), (2, 1), (65535, 1)]
    assert client.queued == []


def test_ack_skips_messages_of_an_older_connection() -> None:
    src = source()
    client = AckClient(with_queue=True)
    src._client = client
    deliver(src, 3)
    old = src.poll(10, 0)
    src._generation += 1  # reconnected: the broker redelivers what was not acknowledged
    deliver(src, 2, start=10)
    src.ack([*old, *src.poll(10, 0)])
    assert client.acks == [(10, 1), (11, 1)]


def test_poll_hands_out_messages_in_order_and_waits_for_the_first() -> None:
    src = source()
    assert src.poll(10, 0.01) == []
    deliver(src, 5)
    got = src.poll(3, 0)
    assert [m.payload for m in got] == [b"1", b"2", b"3"]
    assert [m.payload for m in src.poll(10, 0)] == [b"4", b"5"]
    later = threading.Timer(0.05, deliver, (src, 1, 6))
    later.start()
    assert [m.payload for m in src.poll(10, 5.0)] == [b"6"]  # woken by the message
    later.join()


def test_a_full_buffer_blocks_the_network_thread_then_drops_unacknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import edge.mqtt_source

    monkeypatch.setattr(edge.mqtt_source, "_ENQUEUE_WAIT_S", 0.05)
    src = source(queue_max=2)
    deliver(src, 3)  # the third waits 50 ms for room, then is dropped (the broker keeps it)
    assert src.dropped == 1
    result: list[Any] = []

    def network_thread() -> None:
        deliver(src, 1, start=4)
        result.append(True)

    monkeypatch.setattr(edge.mqtt_source, "_ENQUEUE_WAIT_S", 5.0)
    t = threading.Thread(target=network_thread)
    t.start()
    t.join(0.1)
    assert not result  # still waiting for room
    assert [m.payload for m in src.poll(1, 0)] == [b"1"]
    t.join(5.0)
    assert result and src.dropped == 1
    assert [m.payload for m in src.poll(10, 0)] == [b"2", b"4"]


class ConnectRecorder:
    """Stands in for paho's Client in start(): records the CONNECT arguments."""

    last: ConnectRecorder | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.connect: dict[str, Any] = {}
        ConnectRecorder.last = self

    def reconnect_delay_set(self, *args: Any) -> None: ...

    def will_set(self, *args: Any, **kwargs: Any) -> None: ...

    def connect_async(self, host: str, port: int, **kwargs: Any) -> None:
        self.connect = kwargs

    def loop_start(self) -> None: ...


@pytest.mark.parametrize(
    ("receive_maximum", "queue_max", "sent"), [(1000, 20000, 1000), (500, 100, 100)]
)
def test_mqtt5_connect_carries_a_receive_maximum_tied_to_the_queue_bound(
    monkeypatch: pytest.MonkeyPatch, receive_maximum: int, queue_max: int, sent: int
) -> None:
    import paho.mqtt.client

    monkeypatch.setattr(paho.mqtt.client, "Client", ConnectRecorder)
    config = MqttConfig(receive_maximum=receive_maximum, queue_max=queue_max)
    src = MqttSource(config, "cid", ["sensors/+/+"], FakeClock())
    src.start()
    rec = ConnectRecorder.last
    assert rec is not None and rec.kwargs["protocol"] == paho.mqtt.client.MQTTv5
    props = rec.connect["properties"]
    assert props.ReceiveMaximum == sent == src.flow_window
    assert rec.connect["clean_start"] is False


def test_mqtt311_has_no_receive_maximum_and_is_bounded_by_the_queue() -> None:
    assert MqttConfig(protocol="3.1.1", receive_maximum=10, queue_max=300).flow_window == 300


def test_depth_oldest_and_peak_describe_the_unpolled_buffer() -> None:
    clock = FakeClock()
    src = MqttSource(MqttConfig(), "cid", ["sensors/+/+"], clock)
    assert (src.depth, src.oldest_received_ms, src.take_peak()) == (0, None, 0)
    first = clock.now_ms()
    deliver(src, 5)
    clock.advance(1000)
    deliver(src, 3, start=6)
    assert (src.depth, src.oldest_received_ms) == (8, first)
    src.poll(6, 0)
    assert src.depth == 2 and src.oldest_received_ms == first + 1000
    assert src.take_peak() == 8  # the high point since the last call ...
    assert src.take_peak() == 2  # ... then it restarts from the current depth
