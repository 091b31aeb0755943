"""The agent's operations hooks with the in-package fakes: the alarm hook sees each causal tick
(and the tracker turns them into events), and the last-message age follows the quietest device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.alerts import AlarmEvent, AlarmTracker

FULL = {"a": 11.0, "b": 12.0, "c": 13.0}
T0 = 1_700_000_000_000


def test_the_alarm_hook_gets_causal_ticks_and_opens_once_per_device(
    tmp_path: Path, agent_bundle_factory: Callable[..., Path], agent_harness: Callable[..., Any]
) -> None:
    # every tick scores the same (about 0.92); on = 0.5: the alarm is on from the first tick
    agent_bundle_factory(on=0.5, off=0.4)
    tracker = AlarmTracker()
    seen: list[tuple[str, str, str, str, int]] = []
    events: list[AlarmEvent] = []

    def hook(site: str, device: str, model: str, version: str, out: Any) -> None:
        seen.append((site, device, model, version, out.ts_ms))
        event = tracker.observe(site, device, model, version, out)
        if event is not None:
            events.append(event)

    h = agent_harness(
        tmp_path,
        tmp_path / "bundles",
        alarms=hook,
    )
    for k in range(5):
        h.publish("pump-1", k, FULL)
        h.publish("pump-2", k, FULL)
    h.pump()
    h.agent.shutdown()
    per_device = sorted({(s, d, m, v) for s, d, m, v, _ in seen})
    assert per_device == [("lab", "pump-1", "tiny", "1"), ("lab", "pump-2", "tiny", "1")]
    assert sorted(t for _, d, _, _, t in seen if d == "pump-1") == [T0 + k * 1000 for k in range(5)]
    assert sorted((e.device, e.kind, e.started_ms) for e in events) == [
        ("pump-1", "open", T0),
        ("pump-2", "open", T0),
    ]


def test_last_message_age_is_that_of_the_quietest_device(
    tmp_path: Path, agent_bundle_factory: Callable[..., Path], agent_harness: Callable[..., Any]
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles")
    h.publish("pump-1", 0, FULL)
    h.publish("pump-2", 0, FULL)
    h.pump()
    h.clock.advance(4000)
    h.publish("pump-2", 4, FULL)  # pump-1 stays quiet
    h.pump(1)
    h.clock.advance(1500)
    h.pump(1)
    assert h.metric("gapwatch_agent_last_message_age_seconds") == 5.5
