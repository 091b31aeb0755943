"""Intake lag and overload: the pure monitor (injected times), and the agent's metrics, log
lines and arrival-gap counts with the in-package fakes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.intake import IntakeMonitor

T0 = 1_700_000_000_000
FULL = {"a": 11.0, "b": 12.0, "c": 13.0}


def test_rate_age_behind_and_drain_come_from_the_observations() -> None:
    m = IntakeMonitor(window=1000, lag_s=2.0)
    m.observe(T0, 0.0, 0, None)
    m.processed(400, newest_ts_ms=T0 - 1500)
    m.processed(100, newest_ts_ms=T0 - 2500)  # older stamps never move "behind" back
    s, event = m.observe(T0 + 1000, 1.0, 250, T0 + 500)
    assert s.rate == 500.0
    assert s.oldest_age_s == 0.5
    assert s.behind_s == 2.5  # now - newest processed stamp
    assert s.drain_s == 0.5  # 250 messages at 500/s
    assert (s.saturated, s.overloaded, event) == (False, False, None)


def test_the_rate_is_over_the_last_few_seconds_only() -> None:
    m = IntakeMonitor(window=1000, lag_s=2.0, rate_span_s=5.0)
    for t in range(10):
        m.processed(1000 if t < 3 else 10)
        s, _ = m.observe(T0 + t * 1000, float(t), 0, None)
    assert s.rate == pytest.approx(10.0)
    assert s.drain_s == 0.0  # nothing waiting


def test_a_full_flow_window_is_an_overload_logged_then_cleared_with_hysteresis() -> None:
    m = IntakeMonitor(window=100, lag_s=2.0, log_every_s=15.0, clear_after=2)
    events = []
    # 0 s: the buffer reached the flow window since the last look: the broker held back
    for t, (depth, peak) in enumerate([(100, 100), (80, 100), (0, 100), (0, 3), (0, 0), (0, 0)]):
        m.processed(100)
        s, ev = m.observe(T0 + t * 1000, float(t), depth, T0 + t * 1000 - 100, peak)
        events.append(None if ev is None else (ev.kind, ev.duration_s, ev.worst_behind))
        assert s.saturated is (peak >= 100)
    assert events == [
        ("overloaded", 0.0, 100),
        None,  # still overloaded: not logged again before log_every_s
        None,
        None,  # one quiet observation is not a recovery yet
        ("recovered", 4.0, 100),
        None,
    ]
    assert m.high_water == 100 and not m.overloaded


def test_an_old_unprocessed_message_is_an_overload_and_the_line_repeats_while_it_lasts() -> None:
    m = IntakeMonitor(window=1000, lag_s=2.0, log_every_s=10.0, clear_after=1)
    kinds = []
    for t in range(0, 26):
        oldest = T0 if t < 24 else None  # one message stuck since T0 until 24 s
        _, ev = m.observe(T0 + t * 1000, float(t), 1 if t < 24 else 0, oldest)
        if ev is not None:
            kinds.append((t, ev.kind, round(ev.sample.oldest_age_s)))
    assert kinds == [
        (2, "overloaded", 2),
        (12, "overloaded", 12),
        (22, "overloaded", 22),
        (24, "recovered", 0),
    ]


def test_nothing_processed_means_no_drain_estimate() -> None:
    m = IntakeMonitor(window=10, lag_s=1.0)
    m.observe(T0, 0.0, 0, None)
    s, _ = m.observe(T0 + 1000, 1.0, 5, T0 + 900)
    assert s.rate == 0.0 and s.drain_s is None and s.behind_s is None


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        IntakeMonitor(window=0, lag_s=1.0)


def test_agent_reports_overload_from_the_flow_window_and_its_recovery(
    tmp_path: Path,
    agent_bundle_factory: Callable[..., Path],
    agent_harness: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles", "mqtt.receive_maximum=100")
    caplog.set_level(logging.INFO, logger="edge.agent")
    for k in range(150):  # more than the flow window reached the buffer at once
        h.publish("pump-1", k, FULL)
    h.clock.advance(1000)
    h.pump(1)
    assert h.metric("gapwatch_agent_intake_overloaded") == 1
    assert h.metric("gapwatch_agent_intake_saturated") == 1
    assert h.metric("gapwatch_agent_intake_overloads_total") == 1
    assert h.metric("gapwatch_agent_intake_flow_window_messages") == 100
    assert h.metric("gapwatch_agent_intake_queue_high_water_messages") == 150
    assert h.metric("gapwatch_agent_intake_queue_messages") == 0
    assert h.agent.health()[1]["intake_overloaded"] is True
    assert h.metric("gapwatch_agent_intake_rate") > 0
    over = [r for r in caplog.records if r.getMessage() == "mqtt.overloaded"]
    assert len(over) == 1 and vars(over[0])["messages_behind"] == 150
    assert vars(over[0])["broker_holding_back"] is True
    for _ in range(3):  # quiet seconds: recovered after two
        h.clock.advance(1000)
        h.pump(1)
    assert h.metric("gapwatch_agent_intake_overloaded") == 0
    assert h.agent.health()[1]["intake_overloaded"] is False
    back = [r for r in caplog.records if r.getMessage() == "mqtt.recovered"]
    assert len(back) == 1 and vars(back[0])["worst_behind"] == 150
    assert h.metric("gapwatch_agent_intake_overloads_total") == 1


def test_agent_counts_ticks_that_never_arrived(
    tmp_path: Path, agent_bundle_factory: Callable[..., Path], agent_harness: Callable[..., Any]
) -> None:
    agent_bundle_factory()  # max_gap_ticks = 3
    h = agent_harness(tmp_path, tmp_path / "bundles")
    for k in (0, 1, 2, 5, 6, 20, 21):  # 3, 4 missing (imputed); 7..19 silent (offline at 10)
        h.publish("pump-1", k, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    assert h.metric("gapwatch_agent_intake_gaps_total", kind="missing") == 2 + 3  # 3, 4; 7, 8, 9
    assert h.metric("gapwatch_agent_intake_gaps_total", kind="silent") == 10  # 10..19
    imputed_ticks = {t.ts_ms for t in h.scored() if t.revision == 0 and t.imputed}
    assert {T0 + k * 1000 for k in (3, 4, 7, 8, 9)} <= imputed_ticks
