"""Replaying files over MQTT at a pace, and timing when each tick becomes queryable.

- :func:`schedule` (pure): every device starts at the same moment and sends its rows at
  ``speed`` times their original pace (``speed = 0``: as fast as possible, devices
  interleaved row by row), or, with ``duration_s``, each device at the speed that fits its
  file into that many seconds (so a long file does not keep the others waiting). Payloads
  are the simulator's (:func:`edge.simulate.messages`): ``{"ts": <original epoch ms>,
  "values": {...}}`` with the injected gaps left out.
- :func:`publish` sends a schedule through a :class:`PublishPort` (paho adapter:
  :class:`PahoPublisher`) and returns when each message left.
- :class:`VisibilityPoller` asks InfluxDB, every ``interval_s``, for each device's newest
  stored tick (``SELECT last(<field>) ... GROUP BY device``). Ticks of one device are written
  in order (one Kafka partition per device key), so once the newest visible tick of a device is
  ``t``, every tick up to ``t`` is queryable. :func:`tick_latencies` turns that into a latency
  per tick (an upper bound: the first poll that saw it, read when its answer came back).
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.simulate import messages
from gapwatch.demo.inputs import Replay

__all__ = [
    "PahoPublisher",
    "PublishPort",
    "QueryPort",
    "Scheduled",
    "VisibilityPoller",
    "device_speeds",
    "publish",
    "rebase",
    "schedule",
    "throughput",
    "tick_latencies",
    "tick_publish_times",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scheduled:
    offset_s: float  # seconds after the replay starts
    device: int  # index into the replays
    ts_ms: int
    topic: str
    payload: bytes


def _device_stream(
    k: int, replay: Replay, topic: str, speed: float
) -> Iterator[tuple[float, int, int, Scheduled]]:
    t0: int | None = None
    for row, (ts, body) in enumerate(messages(replay.series, replay.gaps)):
        t0 = ts if t0 is None else t0
        offset = (ts - t0) / 1000.0 / speed if speed > 0 else 0.0
        payload = json.dumps(body, separators=(",", ":")).encode()
        yield offset, row, k, Scheduled(offset, k, ts, topic, payload)


def device_speeds(
    replays: Sequence[Replay], speed: float, duration_s: float | None = None
) -> list[float]:
    """Each device's replay speed: ``speed`` for all, or its file's span / ``duration_s``."""
    if duration_s is None or duration_s <= 0:
        return [speed] * len(replays)
    spans = [(int(r.series.ts_ms[-1]) - int(r.series.ts_ms[0])) / 1000.0 for r in replays]
    return [max(span / duration_s, 1e-9) for span in spans]


def rebase(
    replays: Sequence[Replay],
    speeds: Sequence[float],
    now_ms: int,
    tick_ms: int,
) -> list[Replay]:
    """The replays with their stamps moved to the present (pure; ``now_ms`` is injected).

    Each device's stamps keep their spacing and move by a whole number of ticks so that its
    newest reading is stamped when it is sent and none is stamped in the future: at ``speed``
    x real time (>= 1) the file is the recent past catching up with the clock; slower than
    real time its first reading is stamped ``now``; as fast as possible (0) it ends ``now``.
    """
    out: list[Replay] = []
    for r, speed in zip(replays, speeds, strict=True):
        t0, t1 = int(r.series.ts_ms[0]), int(r.series.ts_ms[-1])
        span = t1 - t0
        if speed <= 0:
            first = now_ms - span
        elif speed >= 1:
            first = now_ms + int(span / speed) - span
        else:
            first = now_ms
        shift = (first - t0) // tick_ms * tick_ms
        out.append(r.shifted(shift))
    return out


def schedule(
    replays: Sequence[Replay],
    topics: Sequence[str],
    speed: float,
    duration_s: float | None = None,
) -> list[Scheduled]:
    """Every device's messages on one timeline (see the module docstring)."""
    speeds = device_speeds(replays, speed, duration_s)
    streams = [_device_stream(k, r, topics[k], speeds[k]) for k, r in enumerate(replays)]
    return [item for *_, item in heapq.merge(*streams, key=lambda x: (x[0], x[1], x[2]))]


class PublishPort(Protocol):
    def publish(self, topic: str, payload: bytes) -> None: ...

    def flush(self, timeout_s: float) -> None: ...


class PahoPublisher:
    """paho-mqtt 2.x client, QoS 1, many messages in flight; the adapter behind PublishPort."""

    def __init__(self, host: str, port: int, client_id: str, qos: int = 1) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._qos = qos
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        self._last: Any = None

    def publish(self, topic: str, payload: bytes) -> None:
        self._last = self._client.publish(topic, payload, qos=self._qos)

    def flush(self, timeout_s: float) -> None:
        if self._last is not None:
            self._last.wait_for_publish(timeout=timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def publish(
    items: Sequence[Scheduled],
    port: PublishPort,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    on_sent: Callable[[int], None] = lambda n: None,
) -> NDArray[np.float64]:
    """Send every item at ``start + offset_s``; return the clock reading when each was sent."""
    sent = np.zeros(len(items), dtype=np.float64)
    start = clock()
    batch = 0
    for i, item in enumerate(items):
        delay = start + item.offset_s - clock()
        if delay > 0.002:
            sleep(delay)
        port.publish(item.topic, item.payload)
        sent[i] = clock()
        batch += 1
        if batch >= 200:
            on_sent(batch)
            batch = 0
    on_sent(batch)
    port.flush(60.0)
    return sent


def tick_publish_times(
    ts_ms: NDArray[np.int64], sent: NDArray[np.float64], tick_ms: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Per tick (the agent's nearest-tick rule): its timestamp and its last message's send time."""
    ticks = (np.asarray(ts_ms, np.int64) + tick_ms // 2) // tick_ms
    order = np.lexsort((sent, ticks))
    ticks, times = ticks[order], np.asarray(sent)[order]
    last = np.ones(len(ticks), dtype=bool)
    last[:-1] = ticks[1:] != ticks[:-1]
    return ticks[last] * tick_ms, times[last]


def tick_latencies(
    tick_ts: NDArray[np.int64],
    sent: NDArray[np.float64],
    seen_at: NDArray[np.float64],
    seen_newest: NDArray[np.int64],
) -> NDArray[np.float64]:
    """Seconds from send to the first poll whose newest visible tick reached it (NaN: never).

    ``seen_at`` [P] poll times (increasing), ``seen_newest`` [P] the newest visible tick then.
    """
    newest = (
        np.maximum.accumulate(np.asarray(seen_newest, np.int64))
        if len(seen_newest)
        else seen_newest
    )
    idx = np.searchsorted(newest, np.asarray(tick_ts, np.int64), side="left")
    out = np.full(len(tick_ts), np.nan)
    ok = idx < len(newest)
    out[ok] = np.asarray(seen_at)[idx[ok]] - np.asarray(sent)[ok]
    return out


def throughput(
    visible_at: NDArray[np.float64], lo: float = 0.1, hi: float = 0.9
) -> tuple[float, float]:
    """``(ticks/s, seconds)`` between the ``lo`` and ``hi`` fractions of ticks becoming visible.

    ``visible_at`` holds, per tick, when it became visible (NaN: never); the steady middle of
    the run excludes the start-up and the tail where the last ticks wait for the clock.
    """
    t = np.sort(np.asarray(visible_at, np.float64)[np.isfinite(visible_at)])
    if t.size < 10:
        return float("nan"), float("nan")
    a, b = t[int(lo * (t.size - 1))], t[int(hi * (t.size - 1))]
    n = int(hi * (t.size - 1)) - int(lo * (t.size - 1))
    if b <= a:
        return float("nan"), float(b - a)
    return n / (b - a), float(b - a)


class QueryPort(Protocol):
    def query(self, influxql: str) -> list[Any]:
        """InfluxQL; each result has ``tags`` and ``values`` (rows of [time ms, value])."""


@dataclass
class _Seen:
    at: list[float] = field(default_factory=list)
    newest: list[int] = field(default_factory=list)


class VisibilityPoller:
    """Polls each device's newest stored tick in a thread (see the module docstring)."""

    def __init__(
        self,
        port: QueryPort,
        *,
        measurement: str,
        field_name: str,
        clock: Callable[[], float],
        interval_s: float = 0.2,
    ) -> None:
        self._port = port
        self.field_name = field_name
        self._q = f'SELECT last("{field_name}") FROM "{measurement}" GROUP BY "device"'
        self._clock = clock
        self.interval_s = interval_s
        self._seen: dict[str, _Seen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors = 0

    def poll_once(self) -> dict[str, int]:
        """One query; record and return each device's newest visible tick."""
        rows = self._port.query(self._q)
        now = self._clock()
        newest = {}
        for s in rows:
            device = s.tags.get("device")
            if device and s.values:
                newest[device] = int(s.values[-1][0])
        with self._lock:
            for device, ts in newest.items():
                seen = self._seen.setdefault(device, _Seen())
                if not seen.newest or ts > seen.newest[-1]:
                    seen.at.append(now)
                    seen.newest.append(ts)
        return newest

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the poller must survive a slow or failing query
                self.errors += 1
                log.warning("demo.poll_failed", extra={"error": str(exc)})
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gapwatch-visibility", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def newest(self) -> dict[str, int]:
        with self._lock:
            return {d: s.newest[-1] for d, s in self._seen.items() if s.newest}

    def history(self, device: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        with self._lock:
            s = self._seen.get(device, _Seen())
            return np.array(s.at, dtype=np.float64), np.array(s.newest, dtype=np.int64)
