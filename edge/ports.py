"""The agent's ports: the small interfaces its adapters (MQTT, Kafka, clock) implement.

Real adapters: :mod:`edge.mqtt_source` (paho-mqtt), :mod:`edge.kafka_out` (kafka-python) and
:class:`SystemClock`. Test doubles implementing the same protocols live in :mod:`edge.fakes`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Clock", "DeliveryCallback", "InMessage", "MessageSource", "RecordSink", "SystemClock"]

DeliveryCallback = Callable[[BaseException | None], None]


@dataclass(frozen=True)
class InMessage:
    """One message as received from the broker."""

    topic: str
    payload: bytes
    received_ms: int  # wall clock, UTC epoch ms
    ack_token: object = None  # opaque; only the source that produced it understands it


class Clock(Protocol):
    """The one clock protocol of gapwatch (the agent's and the sink's)."""

    def now_ms(self) -> int:
        """Wall-clock time, UTC epoch milliseconds."""
        ...

    def time(self) -> float:
        """Wall-clock time, UTC epoch seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds from a monotonic clock (for intervals and timeouts)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> None:
        """Sleep ``seconds`` or until ``event`` is set."""
        ...


class MessageSource(Protocol):
    """Where sensor messages come from (MQTT). Messages are acknowledged explicitly."""

    def start(self) -> None: ...

    def poll(self, max_messages: int, timeout_s: float) -> list[InMessage]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first."""
        ...

    def ack(self, messages: Sequence[InMessage]) -> None:
        """Tell the broker these messages are safely stored (QoS 1 PUBACK)."""
        ...

    @property
    def connected(self) -> bool: ...

    def stop(self) -> None: ...


class RecordSink(Protocol):
    """Where records go (Kafka)."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        on_done: DeliveryCallback,
    ) -> None:
        """Queue one record; ``on_done(None)`` once acknowledged, ``on_done(exc)`` on failure.

        Raises TransportError when the record cannot even be queued (broker unreachable).
        """
        ...

    def flush(self, timeout_s: float) -> None: ...

    def abandon(self) -> None:
        """Give up on every pending delivery (their callbacks may never come); reconnect later."""
        ...

    def find_sent(
        self, topics: Sequence[str], since_ms: int, header: str, prefix: bytes
    ) -> set[bytes]:
        """Values of header ``header`` that start with ``prefix``, in records since ``since_ms``.

        Used after a failure or crash to learn which spooled records already reached the
        broker. Raises TransportError when the broker cannot be read.
        """
        ...

    def close(self) -> None: ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> None:
        event.wait(seconds)
