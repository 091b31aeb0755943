"""The alarm tracker (open/close events per device) and the Alertmanager v2 alert it renders."""

from __future__ import annotations

from dataclasses import dataclass

from edge.alerts import AlarmTracker, AlertLabels, alertmanager_alert, rfc3339

T0 = 1_700_000_000_000


@dataclass(frozen=True)
class Tick:
    ts_ms: int
    anomaly: bool
    top_channels: tuple[str, ...] = ()
    score: float | None = 1.0
    smoothed: float | None = 1.0
    threshold: float = 2.0


def feed(tracker: AlarmTracker, device: str, flags: list[bool], tops: list[tuple[str, ...]]):
    events = []
    for i, (flag, top) in enumerate(zip(flags, tops, strict=True)):
        ev = tracker.observe("lab", device, "skab", "3", Tick(T0 + i * 1000, flag, top, 5.0, i))
        if ev is not None:
            events.append(ev)
    return events


def test_one_open_and_one_close_per_alarm_naming_the_most_frequent_channels() -> None:
    tracker = AlarmTracker(top_k=2)
    flags = [False, True, True, True, False, False]
    tops = [(), ("Current",), ("Pressure", "Current"), ("Pressure", "Current"), (), ()]
    events = feed(tracker, "pump-1", flags, tops)
    assert [e.kind for e in events] == ["open", "close"]
    opened, closed = events
    assert opened.started_ms == T0 + 1000 and opened.ended_ms is None
    assert opened.top_channels == ("Current",)
    assert closed.started_ms == T0 + 1000 and closed.ended_ms == T0 + 4000
    assert closed.top_channels == ("Current", "Pressure")
    assert closed.peak_smoothed == 3.0
    assert tracker.open_alarms == 0


def test_devices_are_tracked_separately() -> None:
    tracker = AlarmTracker()
    a = feed(tracker, "a", [True, True], [("x",), ("x",)])
    b = feed(tracker, "b", [False, True], [(), ("y",)])
    assert [(e.device, e.kind) for e in a + b] == [("a", "open"), ("b", "open")]
    assert tracker.open_alarms == 2
    assert feed(tracker, "a", [False], [()])[0].kind == "close"


def test_the_alert_is_alertmanager_v2_shaped() -> None:
    tracker = AlarmTracker()
    opened, closed = feed(tracker, "pump-1", [True, False], [("Current",), ()])
    labels = AlertLabels("GapwatchAnomaly", "critical", "http://grafana/d/x?var-device={device}")
    alert = alertmanager_alert(opened, labels)
    assert alert["labels"] == {
        "alertname": "GapwatchAnomaly",
        "site": "lab",
        "device": "pump-1",
        "model": "skab",
        "severity": "critical",
    }
    assert alert["startsAt"] == rfc3339(T0) == "2023-11-14T22:13:20.000Z"
    assert "endsAt" not in alert  # open: Alertmanager keeps it while it is re-sent
    assert alert["generatorURL"] == "http://grafana/d/x?var-device=pump-1"
    assert alert["annotations"]["top_channels"] == "Current"
    assert all(isinstance(v, str) for v in alert["annotations"].values())
    ended = alertmanager_alert(closed, AlertLabels())
    assert ended["endsAt"] == "2023-11-14T22:13:21.000Z"
    assert ended["labels"] == {**alert["labels"], "severity": "warning"}  # same identity
    assert "generatorURL" not in ended
