"""Tick alignment: lateness, too-late, empty ticks, offline/online, wall-clock flush, drain."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.align import AlignResult, DeviceAligner

T = 1000  # tick ms
BASE = 1_700_000_000_000  # a multiple of T


def aligner(lateness: int = 1, max_gap: int = 3) -> DeviceAligner:
    return DeviceAligner(T, 2, lateness, max_gap)


def add(
    a: DeviceAligner, tick: int, value: float, ch: int = 0, arrival: int | None = None
) -> AlignResult:
    ts = BASE + tick * T
    return a.add(ts, [ch], [value], ts if arrival is None else arrival, token=tick)


def ticks(result: AlignResult) -> list[int]:
    return [(t.ts_ms - BASE) // T for t in result.ticks]


def test_a_tick_closes_when_a_reading_lateness_plus_one_ticks_newer_arrives() -> None:
    a = aligner(lateness=1)
    assert ticks(add(a, 0, 1.0)) == []
    assert ticks(add(a, 1, 2.0)) == []
    r = add(a, 2, 3.0)
    assert ticks(r) == [0]
    assert r.ticks[0].values.tolist()[0] == 1.0
    assert np.isnan(r.ticks[0].values[1])
    assert r.ticks[0].observed == 1


def test_out_of_order_within_lateness_merges_into_the_tick() -> None:
    a = aligner(lateness=2)
    add(a, 0, 1.0)
    add(a, 2, 3.0)
    add(a, 1, 2.0, ch=0)
    add(a, 0, 9.0, ch=1)  # second channel of tick 0 arrives late but in time
    r = add(a, 3, 4.0)
    assert ticks(r) == [0]
    assert r.ticks[0].values.tolist() == [1.0, 9.0]


def test_readings_round_to_the_nearest_tick() -> None:
    a = aligner(lateness=0)
    assert ticks(a.add(BASE + 400, [0], [1.0], BASE)) == []
    first = a.add(BASE + 600, [1], [2.0], BASE)  # rounds up to tick 1, closing tick 0
    second = a.add(BASE + 2 * T - 400, [0], [3.0], BASE)  # rounds to tick 2
    assert ticks(first) == [0] and ticks(second) == [1]
    assert first.ticks[0].values[0] == 1.0 and np.isnan(first.ticks[0].values[1])
    assert second.ticks[0].values[1] == 2.0


def test_a_reading_for_a_closed_tick_is_too_late() -> None:
    a = aligner(lateness=0)
    add(a, 0, 1.0)
    add(a, 1, 1.0)
    assert add(a, 0, 5.0).too_late
    assert not add(a, 1, 5.0).too_late  # tick 1 is still open


def test_nan_never_overwrites_a_value() -> None:
    a = aligner(lateness=0)
    add(a, 0, 1.0)
    add(a, 0, float("nan"))
    assert add(a, 1, 0.0).ticks[0].values[0] == 1.0


def test_a_tick_without_reading_is_emitted_all_missing() -> None:
    a = aligner(lateness=0, max_gap=3)
    add(a, 0, 1.0)
    r = add(a, 3, 1.0)
    assert ticks(r) == [0, 1, 2]
    assert [t.observed for t in r.ticks] == [1, 0, 0]
    assert all(np.isnan(t.values).all() for t in r.ticks[1:])
    assert r.ticks[1].received_ms is None and r.ticks[1].token is None


def test_a_silent_device_goes_offline_once_and_comes_back_without_backfill() -> None:
    a = aligner(lateness=0, max_gap=2)
    add(a, 0, 1.0)
    r = add(a, 10, 1.0)
    assert ticks(r) == [0, 1, 2]  # two imputed ticks, then offline
    assert [(t.kind, (t.ts_ms - BASE) // T, t.silent_ticks) for t in r.transitions] == [
        ("offline", 3, 3)
    ]
    assert a.offline
    r = add(a, 11, 1.0)
    assert ticks(r) == [10]
    assert [(t.kind, (t.ts_ms - BASE) // T, t.silent_ticks) for t in r.transitions] == [
        ("online", 10, 9)
    ]
    assert not a.offline


def test_wall_clock_closes_ticks_of_a_quiet_device() -> None:
    a = aligner(lateness=1, max_gap=2)
    add(a, 0, 1.0)  # arrives on time
    assert ticks(a.advance(BASE + 1 * T)) == []
    assert ticks(a.advance(BASE + 2 * T)) == [0]
    assert ticks(a.advance(BASE + 4 * T)) == [1, 2]
    r = a.advance(BASE + 60 * T)
    assert ticks(r) == [] and [t.kind for t in r.transitions] == ["offline"]
    assert a.advance(BASE + 120 * T).transitions == []  # one event only


def test_wall_clock_does_not_close_a_fast_replay_early() -> None:
    a = aligner(lateness=1)
    arrival = BASE + 10**9  # the data is old; it arrives much later than its timestamps
    for k in range(5):
        add(a, k, float(k), arrival=arrival + k)
    assert ticks(a.advance(arrival + 10)) == []  # only 10 ms of wall time passed
    assert ticks(a.advance(arrival + 4 + T)) == [3]  # one tick of wall time: one tick more


def test_drain_closes_every_pending_tick() -> None:
    a = aligner(lateness=3)
    for k in (0, 1, 2):
        add(a, k, 1.0)
    assert ticks(a.drain()) == [0, 1, 2]
    assert a.pending_ticks == 0
    assert add(a, 2, 1.0).too_late


def test_min_token_tracks_open_ticks() -> None:
    a = aligner(lateness=1)
    assert a.min_token() is None
    a.add(BASE, [0], [1.0], BASE, token=7)
    a.add(BASE + T, [0], [1.0], BASE, token=9)
    a.add(BASE, [1], [1.0], BASE, token=11)
    assert a.min_token() == 7
    a.add(BASE + 2 * T, [0], [1.0], BASE, token=12)  # closes tick 0
    assert a.min_token() == 9


def test_a_restored_watermark_refuses_ticks_already_emitted() -> None:
    a = DeviceAligner(T, 2, 1, 3, last_closed=(BASE // T) + 5)
    assert add(a, 5, 1.0).too_late
    assert not add(a, 6, 1.0).too_late


@settings(max_examples=150, deadline=None)
@given(st.permutations(range(12)), st.integers(0, 3))
def test_each_tick_is_emitted_once_in_order_whatever_the_arrival_order(
    order: list[int], lateness: int
) -> None:
    a = aligner(lateness=lateness, max_gap=100)
    emitted: list[int] = []
    observed: set[int] = set()
    late: set[int] = set()
    for k in order:
        r = add(a, k, float(k))
        if r.too_late:
            late.add(k)
        for t in [*r.ticks]:
            emitted.append((t.ts_ms - BASE) // T)
            if t.observed:
                observed.add((t.ts_ms - BASE) // T)
    for t in a.drain().ticks:
        emitted.append((t.ts_ms - BASE) // T)
        if t.observed:
            observed.add((t.ts_ms - BASE) // T)
    first = order[0]  # the grid starts at the first reading
    assert emitted == list(range(first, 12))
    assert observed == set(range(first, 12)) - late
    assert all(k < first or k in emitted for k in late)
