"""Replay pacing, publish times, and latency/throughput from polled visibility (with fakes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gapwatch.demo.inputs import GapSettings, Replay, load_replays
from gapwatch.demo.publish import (
    Scheduled,
    VisibilityPoller,
    device_speeds,
    publish,
    schedule,
    throughput,
    tick_latencies,
    tick_publish_times,
)

NO_GAPS = GapSettings(drop_rate=0.0, channel_outage_s=0.0, device_outage_s=0.0)


def replay(tmp_path: Path, name: str, rows: int, step_s: int = 1) -> Replay:
    t0 = datetime(2020, 3, 1, tzinfo=UTC)
    lines = ["datetime;a;b"]
    for i in range(rows):
        stamp = (t0 + timedelta(seconds=i * step_s)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{stamp};{i};{2 * i}")
    path = tmp_path / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_replays([path], NO_GAPS)[0]


def test_uniform_speed_starts_every_device_together(tmp_path: Path) -> None:
    a, b = replay(tmp_path, "a", 3), replay(tmp_path, "b", 2, step_s=2)
    items = schedule([a, b], ["t/a", "t/b"], speed=10.0)
    assert [(i.device, i.offset_s) for i in items] == [
        (0, 0.0),
        (1, 0.0),
        (0, 0.1),
        (1, 0.2),  # at the same moment, the earlier row goes first
        (0, 0.2),
    ]
    body = json.loads(items[0].payload)
    assert body == {"ts": int(a.series.ts_ms[0]), "values": {"a": 0.0, "b": 0.0}}
    assert items[1].topic == "t/b"


def test_duration_fits_every_file_into_the_same_time(tmp_path: Path) -> None:
    a, b = replay(tmp_path, "a", 11), replay(tmp_path, "b", 101)
    assert device_speeds([a, b], 0.0, duration_s=5.0) == pytest.approx([2.0, 20.0])
    items = schedule([a, b], ["a", "b"], speed=0.0, duration_s=5.0)
    last = {d: max(i.offset_s for i in items if i.device == d) for d in (0, 1)}
    assert last[0] == pytest.approx(5.0) and last[1] == pytest.approx(5.0)


def test_speed_zero_interleaves_devices_row_by_row(tmp_path: Path) -> None:
    a, b = replay(tmp_path, "a", 2), replay(tmp_path, "b", 2)
    items = schedule([a, b], ["a", "b"], speed=0.0)
    assert [i.device for i in items] == [0, 1, 0, 1]
    assert all(i.offset_s == 0.0 for i in items)


@dataclass
class FakePort:
    clock: FakeClock
    sent: list[tuple[str, bytes, float]] = field(default_factory=list)
    flushed: bool = False

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload, self.clock.t))
        self.clock.t += 0.001  # publishing takes a millisecond

    def flush(self, timeout_s: float) -> None:
        self.flushed = True


@dataclass
class FakeClock:
    t: float = 100.0
    slept: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_publish_waits_for_each_offset_and_returns_send_times() -> None:
    clock = FakeClock()
    port = FakePort(clock)
    items = [Scheduled(off, 0, 0, "t", b"x") for off in (0.0, 0.0, 0.5, 2.0)]
    counted: list[int] = []
    sent = publish(items, port, clock=clock.now, sleep=clock.sleep, on_sent=counted.append)
    assert [round(t - 100.0, 3) for t in sent] == [0.001, 0.002, 0.501, 2.001]
    assert len(port.sent) == 4 and port.flushed
    assert clock.slept == pytest.approx([0.498, 1.499])
    assert sum(counted) == 4


def test_tick_publish_times_take_each_ticks_last_message() -> None:
    ts = np.array([1000, 1400, 2600, 3000], dtype=np.int64)  # 1400 rounds to tick 1000
    sent = np.array([5.0, 6.0, 7.0, 8.0])
    ticks, times = tick_publish_times(ts, sent, 1000)
    assert ticks.tolist() == [1000, 3000]
    assert times.tolist() == [6.0, 8.0]


def test_tick_latencies_use_the_first_poll_that_reached_the_tick() -> None:
    tick_ts = np.array([1000, 2000, 3000, 4000], dtype=np.int64)
    sent = np.array([0.0, 1.0, 2.0, 3.0])
    seen_at = np.array([0.5, 2.5, 2.7])
    seen_newest = np.array([1000, 3000, 2000], dtype=np.int64)  # a late answer never goes back
    lat = tick_latencies(tick_ts, sent, seen_at, seen_newest)
    assert lat[:3].tolist() == pytest.approx([0.5, 1.5, 0.5])
    assert np.isnan(lat[3])  # never seen


def test_throughput_uses_the_steady_middle() -> None:
    visible = np.concatenate([np.linspace(0.0, 10.0, 1001), [np.nan, 500.0]])
    rate, seconds = throughput(visible)
    assert rate == pytest.approx(100.0, rel=0.02)
    assert seconds == pytest.approx(8.0, rel=0.05)


@dataclass
class Row:
    tags: dict[str, str]
    values: list[list[Any]]


class FakeQuery:
    def __init__(self, answers: list[list[Row]]) -> None:
        self.answers = answers
        self.queries: list[str] = []

    def query(self, influxql: str) -> list[Any]:
        self.queries.append(influxql)
        return list(self.answers.pop(0))


def test_poller_records_when_each_device_moved() -> None:
    clock = FakeClock()
    port = FakeQuery(
        [
            [Row({"device": "a"}, [[1000, 1.0]])],
            [Row({"device": "a"}, [[1000, 1.0]]), Row({"device": "b"}, [[5000, 1.0]])],
            [Row({"device": "a"}, [[3000, 1.0]]), Row({"device": "b"}, [[5000, 1.0]])],
        ]
    )
    poller = VisibilityPoller(port, measurement="readings", field_name="threshold", clock=clock.now)
    for _ in range(3):
        poller.poll_once()
        clock.t += 1.0
    assert 'last("threshold")' in port.queries[0] and 'GROUP BY "device"' in port.queries[0]
    at, newest = poller.history("a")
    assert at.tolist() == [100.0, 102.0] and newest.tolist() == [1000, 3000]
    assert poller.newest() == {"a": 3000, "b": 5000}
