"""Intake lag and overload (pure: numbers and times come in as arguments).

The agent holds at most :attr:`~edge.config.MqttConfig.flow_window` messages received and not
yet processed (MQTT 5 Receive Maximum; the broker queues the rest for our session, where a
subscriber cannot see it). Once a second the agent hands :meth:`IntakeMonitor.observe` what it
can see:

* ``depth``: messages received and not yet processed (the source's buffer, plus any held back
  by a full disk);
* ``peak``: the largest buffer depth since the previous observation. A peak at the flow window
  means the broker had every message it may send us in flight: it was holding the rest back;
* ``oldest_received_ms``: the arrival time of the oldest of them;
* how many messages were processed (:meth:`IntakeMonitor.processed`) and the newest reading
  timestamp among them (publisher time).

From these it derives an :class:`IntakeSample`: processing rate (messages/s over the last few
seconds), the age of the oldest unprocessed message, how far the agent is behind the publishers
(``now - newest processed ts``, meaningful only where device clocks are real time: a replay of
old data at any speed makes it large and constant), and the time to drain what it can see at
the current rate (a lower bound while the broker is holding messages back).

**Overloaded** while the flow window was full (saturated) or the oldest unprocessed message
is older than ``lag_s``; **recovered** after ``clear_after`` observations in a row with
neither. :class:`IntakeEvent` says when to log: at the start of an overload, every
``log_every_s`` while it lasts, and once at recovery.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["IntakeEvent", "IntakeMonitor", "IntakeSample"]


@dataclass(frozen=True)
class IntakeSample:
    depth: int  # received, not yet processed
    peak: int  # largest depth since the previous sample
    window: int  # the flow window (most messages in flight to the agent)
    oldest_age_s: float  # now - arrival of the oldest unprocessed message (0 when none)
    behind_s: float | None  # now - newest processed reading ts (None before the first)
    rate: float  # messages processed per second, recently
    drain_s: float | None  # depth / rate (None when nothing is being processed)
    saturated: bool  # the flow window was full: the broker held messages back
    overloaded: bool

    @property
    def messages_behind(self) -> int:
        """What the agent can see it is behind: at least the peak while saturated."""
        return max(self.depth, self.peak) if self.saturated else self.depth


@dataclass(frozen=True)
class IntakeEvent:
    kind: Literal["overloaded", "recovered"]
    sample: IntakeSample
    duration_s: float  # how long the overload has lasted (or lasted, at recovery)
    worst_behind: int  # most messages behind seen during the overload
    worst_age_s: float  # oldest unprocessed message seen during the overload


class IntakeMonitor:
    """Turns observations into samples and overload events; see the module docstring."""

    def __init__(
        self,
        window: int,
        lag_s: float,
        *,
        rate_span_s: float = 5.0,
        log_every_s: float = 15.0,
        clear_after: int = 2,
        start_s: float | None = None,
    ) -> None:
        if window < 1 or lag_s <= 0 or rate_span_s <= 0 or clear_after < 1:
            raise ValueError("window >= 1, lag_s > 0, rate_span_s > 0, clear_after >= 1")
        self.window = window
        self.lag_s = lag_s
        self.rate_span_s = rate_span_s
        self.log_every_s = log_every_s
        self.clear_after = clear_after
        self.count = 0  # messages processed so far
        self.newest_ts_ms: int | None = None
        self.high_water = 0  # largest depth ever seen
        self._history: deque[tuple[float, int]] = deque()  # (monotonic s, count)
        if start_s is not None:  # the rate's first baseline
            self._history.append((start_s, 0))
        self._since: float | None = None  # start of the current overload
        self._logged = 0.0
        self._quiet = 0  # observations in a row without overload signs
        self._worst = (0, 0.0)

    @property
    def overloaded(self) -> bool:
        return self._since is not None

    def processed(self, n: int, newest_ts_ms: int | None = None) -> None:
        """``n`` messages were processed; ``newest_ts_ms``: the newest reading stamp among them."""
        self.count += n
        if newest_ts_ms is not None and (
            self.newest_ts_ms is None or newest_ts_ms > self.newest_ts_ms
        ):
            self.newest_ts_ms = newest_ts_ms

    def observe(
        self,
        now_ms: int,
        mono_s: float,
        depth: int,
        oldest_received_ms: int | None,
        peak: int | None = None,
    ) -> tuple[IntakeSample, IntakeEvent | None]:
        peak = depth if peak is None else max(peak, depth)
        self.high_water = max(self.high_water, peak)
        sample = self._sample(now_ms, mono_s, depth, oldest_received_ms, peak)
        return sample, self._transition(sample, mono_s)

    def _sample(
        self, now_ms: int, mono_s: float, depth: int, oldest_ms: int | None, peak: int
    ) -> IntakeSample:
        hist = self._history
        hist.append((mono_s, self.count))
        while len(hist) > 2 and mono_s - hist[1][0] >= self.rate_span_s:
            hist.popleft()
        t0, c0 = hist[0]
        rate = (self.count - c0) / (mono_s - t0) if mono_s > t0 else 0.0
        age = 0.0 if oldest_ms is None or depth == 0 else max(0.0, (now_ms - oldest_ms) / 1000)
        behind = None if self.newest_ts_ms is None else (now_ms - self.newest_ts_ms) / 1000
        saturated = peak >= self.window
        overloaded = saturated or age >= self.lag_s
        drain = depth / rate if rate > 0 else (0.0 if depth == 0 else None)
        return IntakeSample(
            depth, peak, self.window, age, behind, rate, drain, saturated, overloaded
        )

    def _transition(self, s: IntakeSample, mono_s: float) -> IntakeEvent | None:
        if s.overloaded:
            self._quiet = 0
            worst_n, worst_age = self._worst
            self._worst = (max(worst_n, s.messages_behind), max(worst_age, s.oldest_age_s))
            if self._since is None:
                self._since = self._logged = mono_s
                return self._event("overloaded", s, mono_s)
            if mono_s - self._logged >= self.log_every_s:
                self._logged = mono_s
                return self._event("overloaded", s, mono_s)
            return None
        if self._since is None:
            return None
        self._quiet += 1
        if self._quiet < self.clear_after:
            return None
        event = self._event("recovered", s, mono_s)
        self._since, self._quiet, self._worst = None, 0, (0, 0.0)
        return event

    def _event(
        self, kind: Literal["overloaded", "recovered"], s: IntakeSample, mono_s: float
    ) -> IntakeEvent:
        assert self._since is not None
        return IntakeEvent(kind, s, mono_s - self._since, *self._worst)
