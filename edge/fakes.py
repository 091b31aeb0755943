"""In-memory test doubles of the agent's ports (:mod:`edge.ports`), for unit tests and demos.

They implement the same protocols as the real adapters and behave like them where it matters
(:class:`CenterModel` is a :class:`edge.scorer.ModelLike` whose output is known):
:class:`FakeSink` keeps records with their headers, can be "down" (sends raise
TransportError), can fail deliveries, refuses records over a size limit as kafka-python and
the broker do (:class:`~edge.errors.DeliveryRefused` from ``send`` over ``max_record_bytes``,
in the delivery callback over ``broker_max_bytes``; after such a callback refusal every later
delivery fails the same way until :meth:`FakeSink.abandon`, as kafka-python's idempotent
producer does), and answers :meth:`FakeSink.find_sent` from what it holds, like a broker would.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edge.bundle import Manifest
from edge.errors import DeliveryRefused, TransportError
from edge.ports import DeliveryCallback, InMessage

__all__ = ["CenterModel", "FakeClock", "FakeSink", "FakeSource", "SentRecord"]


class FakeClock:
    """A clock that moves only when told to (``advance``), starting at ``start_ms``."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._ms = start_ms
        self._mono = 1000.0

    def now_ms(self) -> int:
        return self._ms

    def time(self) -> float:
        return self._ms / 1000.0

    def monotonic(self) -> float:
        return self._mono

    def wait(self, event: threading.Event, seconds: float) -> None:
        """Waiting moves time on (unless the event is already set)."""
        if not event.is_set():
            self.advance(round(seconds * 1000))

    def advance(self, ms: int) -> None:
        self._ms += ms
        self._mono += ms / 1000.0


class FakeSource:
    """Messages pushed by the test; records which ones were acknowledged."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self._clock = clock or FakeClock()
        self._queue: deque[InMessage] = deque()
        self._peak = 0
        self._next = 0
        self.acked: list[InMessage] = []
        self.started = False
        self.stopped = False
        self.is_connected = True

    def push(self, topic: str, payload: bytes | str, received_ms: int | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self._next += 1
        when = self._clock.now_ms() if received_ms is None else received_ms
        self._queue.append(InMessage(topic, data, when, self._next))
        self._peak = max(self._peak, len(self._queue))

    def start(self) -> None:
        self.started = True

    def poll(self, max_messages: int, timeout_s: float) -> list[InMessage]:
        q = self._queue
        return [q.popleft() for _ in range(min(max_messages, len(q)))]

    def ack(self, messages: Sequence[InMessage]) -> None:
        self.acked.extend(messages)

    @property
    def pending(self) -> int:
        return len(self._queue)

    depth = pending  # the name MqttSource gives it

    @property
    def oldest_received_ms(self) -> int | None:
        return self._queue[0].received_ms if self._queue else None

    def take_peak(self) -> int:
        peak, self._peak = self._peak, len(self._queue)
        return max(peak, self._peak)

    @property
    def connected(self) -> bool:
        return self.is_connected

    def stop(self) -> None:
        self.stopped = True


@dataclass
class SentRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    sent_ms: int


@dataclass
class FakeSink:
    """A broker in memory. ``auto_ack``: deliveries complete at once, else on :meth:`complete`."""

    clock: FakeClock = field(default_factory=FakeClock)
    auto_ack: bool = True
    down: bool = False
    fail_deliveries: int = 0  # the next N deliveries fail (the record is *not* kept)
    ghost_deliveries: int = 0  # the next N are kept but reported as failed (ambiguous timeout)
    records: list[SentRecord] = field(default_factory=list)
    _waiting: list[tuple[SentRecord | None, DeliveryCallback, BaseException | None]] = field(
        default_factory=list
    )
    closed: bool = False
    stuck: bool = False  # deliveries never complete (a wedged producer)
    abandoned: int = 0
    max_record_bytes: int = 0  # > 0: bigger records are refused by send (producer-side check)
    broker_max_bytes: int = 0  # > 0: bigger records fail their delivery as refused (broker)
    refused: int = 0
    _fatal: BaseException | None = None  # the producer's fatal error (until abandoned)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        on_done: DeliveryCallback,
    ) -> None:
        if self.down:
            raise TransportError("fake broker is down")
        size = len(value) + len(key or b"")
        if 0 < self.max_record_bytes < size:
            self.refused += 1
            raise DeliveryRefused("too_large", f"{size} bytes > max_request_size")
        rec = SentRecord(topic, key, value, list(headers), self.clock.now_ms())
        error: BaseException | None = None
        keep: SentRecord | None = rec
        if self._fatal is not None:
            error, keep = self._fatal, None
        elif 0 < self.broker_max_bytes < size:
            self.refused += 1
            error, keep = DeliveryRefused("too_large", f"{size} bytes > message.max.bytes"), None
            self._fatal = error
        elif self.fail_deliveries > 0:
            self.fail_deliveries -= 1
            error, keep = TransportError("delivery failed"), None
        elif self.ghost_deliveries > 0:
            self.ghost_deliveries -= 1
            error = TransportError("delivery timed out (but the broker wrote it)")
        self._waiting.append((keep, on_done, error))
        if self.auto_ack and not self.stuck:
            self.complete()

    def complete(self) -> int:
        """Finish every waiting delivery; return how many."""
        waiting, self._waiting = self._waiting, []
        for rec, cb, error in waiting:
            if rec is not None:
                self.records.append(rec)
            cb(error)
        return len(waiting)

    def flush(self, timeout_s: float) -> None:
        if not self.stuck:
            self.complete()

    def abandon(self) -> None:
        """Pending deliveries are dropped (never reported), as a closed producer would."""
        self._waiting = []
        self._fatal = None
        self.abandoned += 1

    def find_sent(
        self, topics: Sequence[str], since_ms: int, header: str, prefix: bytes
    ) -> set[bytes]:
        if self.down:
            raise TransportError("fake broker is down")
        return {
            v
            for r in self.records
            if r.topic in topics and r.sent_ms >= since_ms
            for k, v in r.headers
            if k == header and v.startswith(prefix)
        }

    def close(self) -> None:
        self.closed = True

    def values(self, topic: str) -> list[bytes]:
        return [r.value for r in self.records if r.topic == topic]


class CenterModel:
    """Implements :class:`edge.scorer.ModelLike`: decodes every entry to the scaling center
    (z = 0) with unit variance, so an observed entry scores z² / 2 (+ a constant)."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def run(
        self, x: NDArray[np.float32], mask: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        return np.zeros_like(x), np.zeros_like(x)
