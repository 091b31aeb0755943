"""Alarm open and close events, and their Alertmanager-compatible JSON. Pure: no I/O, no clock.

:class:`AlarmTracker` watches each device's causal (revision 0) scored ticks and turns the
alarm state that the threshold's hysteresis produced (``TickOutput.anomaly``) into events:

* ``open``: the first anomalous tick after a normal one (``started_ms`` = that tick's time);
* ``close``: the first normal tick after an open alarm (``ended_ms`` = that tick's time).

The channels an alarm names are the ones most often among the ticks' ``top_channels`` while it
was open (ties: first seen first), at most :attr:`AlarmTracker.top_k`.

:func:`alertmanager_alert` renders an event as one alert of Alertmanager's API v2
(``POST /api/v2/alerts`` takes a JSON list of these): ``labels`` identify the alert
(``alertname``, ``site``, ``device``, ``model``, ``severity``), ``annotations`` describe it,
``startsAt`` is the opening tick's time, ``endsAt`` is set only once the alarm closed (an open
alert is re-sent while it lasts; see :mod:`edge.webhook`), ``generatorURL`` is optional.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = [
    "AlarmEvent",
    "AlarmHook",
    "AlarmTracker",
    "AlertLabels",
    "Scored",
    "alertmanager_alert",
    "rfc3339",
]


class Scored(Protocol):
    """What the tracker reads of a scored tick (``edge.scorer.TickOutput`` fits)."""

    @property
    def ts_ms(self) -> int: ...
    @property
    def anomaly(self) -> bool: ...
    @property
    def top_channels(self) -> tuple[str, ...]: ...
    @property
    def score(self) -> float | None: ...
    @property
    def smoothed(self) -> float | None: ...
    @property
    def threshold(self) -> float: ...


@dataclass(frozen=True)
class AlarmEvent:
    """An alarm of one device opening or closing."""

    kind: Literal["open", "close"]
    site: str
    device: str
    model: str
    model_version: str
    started_ms: int  # tick time of the first anomalous tick
    ended_ms: int | None  # tick time of the first normal tick after it (close only)
    top_channels: tuple[str, ...]
    peak_smoothed: float | None  # highest smoothed score while open (so far)
    threshold: float

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"


@dataclass
class _Open:
    started_ms: int
    model: str
    version: str
    channels: Counter[str] = field(default_factory=Counter)
    peak: float | None = None
    threshold: float = 0.0


class AlarmTracker:
    """Per-device alarm state -> :class:`AlarmEvent` on each transition (see module doc)."""

    def __init__(self, top_k: int = 3) -> None:
        self.top_k = top_k
        self._open: dict[str, _Open] = {}

    @property
    def open_alarms(self) -> int:
        return len(self._open)

    def observe(
        self, site: str, device: str, model: str, version: str, out: Scored
    ) -> AlarmEvent | None:
        """Feed one causal scored tick of ``site/device``; return the event it causes, if any."""
        key = f"{site}/{device}"
        state = self._open.get(key)
        if out.anomaly:
            opening = state is None
            if state is None:
                state = _Open(out.ts_ms, model, version, threshold=out.threshold)
                self._open[key] = state
            state.channels.update(out.top_channels)
            if out.smoothed is not None and (state.peak is None or out.smoothed > state.peak):
                state.peak = out.smoothed
            state.threshold = out.threshold
            if opening:
                return self._event("open", site, device, state, None)
            return None
        if state is None:
            return None
        del self._open[key]
        return self._event("close", site, device, state, out.ts_ms)

    def _event(
        self, kind: Literal["open", "close"], site: str, device: str, s: _Open, ended: int | None
    ) -> AlarmEvent:
        top = tuple(c for c, _ in s.channels.most_common(self.top_k))
        return AlarmEvent(
            kind, site, device, s.model, s.version, s.started_ms, ended, top, s.peak, s.threshold
        )


@dataclass(frozen=True)
class AlertLabels:
    """The fixed parts of every alert: its name, severity and back-link."""

    alertname: str = "GapwatchAnomaly"
    severity: str = "warning"
    generator_url: str = ""  # "{site}" and "{device}" are filled in; "" leaves it out


def rfc3339(ms: int) -> str:
    """``1700000000123`` -> ``"2023-11-14T22:13:20.123Z"`` (UTC)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def alertmanager_alert(event: AlarmEvent, labels: AlertLabels) -> dict[str, Any]:
    """One Alertmanager v2 alert (an item of the JSON list POSTed to ``/api/v2/alerts``)."""
    top = ", ".join(event.top_channels) or "none named"
    peak = "n/a" if event.peak_smoothed is None else f"{event.peak_smoothed:.4g}"
    alert: dict[str, Any] = {
        "labels": {
            "alertname": labels.alertname,
            "site": event.site,
            "device": event.device,
            "model": event.model,
            "severity": labels.severity,
        },
        "annotations": {
            "summary": f"anomaly on {event.key} (channels: {top})",
            "description": (
                f"gapwatch alarm on {event.key}, model {event.model} {event.model_version}: "
                f"smoothed score peaked at {peak} (threshold {event.threshold:.4g}); "
                f"top channels: {top}"
            ),
            "top_channels": ",".join(event.top_channels),
            "model_version": event.model_version,
            "threshold": f"{event.threshold:.6g}",
            "peak_smoothed_score": peak,
        },
        "startsAt": rfc3339(event.started_ms),
    }
    if event.ended_ms is not None:
        alert["endsAt"] = rfc3339(event.ended_ms)
    if labels.generator_url:
        alert["generatorURL"] = labels.generator_url.replace("{site}", event.site).replace(
            "{device}", event.device
        )
    return alert


AlarmHook = Callable[[str, str, str, str, Scored], None]
"""``hook(site, device, model, version, tick)``: what the agent calls for each causal tick."""
