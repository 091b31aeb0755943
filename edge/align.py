"""Per-device tick alignment (pure: no clock is read; time comes in as arguments).

A device's readings are placed on the bundle's epoch-aligned grid the way training cuts a
file (``edge.window.to_grid``): a reading goes to the nearest tick ``k = round(ts / tick_ms)``
(halves go up), stamped ``k * tick_ms``. Several readings in one tick merge per channel (the
last finite value wins; ``NaN`` never overwrites a value).

When is a tick closed (handed on for imputation and scoring)?

* **Event time** (drives replays at any speed): when a reading for tick ``m`` arrives, every
  tick ``k <= m - lateness_ticks - 1`` closes. So a reading may arrive out of order as long as no
  reading ``lateness_ticks + 1`` ticks newer has been seen.
* **Wall clock** (a device that goes quiet): :meth:`DeviceAligner.advance` takes ``now_ms`` and
  extrapolates the device's event time from its newest reading:
  ``event_now = newest_ts + (now_ms - newest_arrival)``; ticks with
  ``k <= round(event_now / tick_ms) - lateness_ticks - 1`` close. Replays faster than real time are
  therefore driven by their own timestamps, never closed early by the wall clock.

A reading for a tick that is already closed is **too late** (the caller dead-letters it).
A closed tick with no reading is emitted with all channels missing (to be imputed), unless the
device has been silent for more than ``max_gap_ticks`` ticks: then one ``offline`` transition is
emitted and nothing more until the device speaks again (one ``online`` transition, and the grid
resumes at the new reading without back-filling the silent stretch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

_isfinite = math.isfinite
_NAN = math.nan

__all__ = ["AlignResult", "ClosedTick", "DeviceAligner", "Transition"]


@dataclass(frozen=True)
class ClosedTick:
    """One device tick on the grid, ready to be imputed and scored."""

    tick: int
    ts_ms: int
    values: np.ndarray  # [C] float64, NaN where nothing was measured
    observed: int  # number of finite entries
    received_ms: int | None  # newest arrival among its readings (None: an all-missing tick)
    token: int | None  # smallest caller token (journal id) of its readings


@dataclass(frozen=True)
class Transition:
    kind: Literal["offline", "online"]
    ts_ms: int  # offline: first tick not imputed; online: the tick the device came back on
    silent_ticks: int  # ticks without a reading before this transition


@dataclass(frozen=True)
class AlignResult:
    ticks: list[ClosedTick] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    too_late: bool = False


@dataclass
class _Slot:
    values: list[float]  # [C], NaN where nothing was measured (plain floats: cheap per reading)
    received_ms: int
    token: int | None


class DeviceAligner:
    """Aligns one device's readings onto a tick grid; see the module docstring."""

    def __init__(
        self,
        tick_ms: int,
        n_channels: int,
        lateness_ticks: int,
        max_gap_ticks: int,
        last_closed: int | None = None,
    ) -> None:
        if tick_ms <= 0 or n_channels <= 0 or lateness_ticks < 0 or max_gap_ticks < 0:
            raise ValueError("tick_ms, n_channels > 0 and lateness_ticks, max_gap_ticks >= 0")
        self.tick_ms = tick_ms
        self.n_channels = n_channels
        self.lateness_ticks = lateness_ticks
        self.max_gap_ticks = max_gap_ticks
        self._pending: dict[int, _Slot] = {}
        self._last_closed = last_closed
        self._last_obs = last_closed
        self._offline = False
        self._anchor: tuple[int, int] | None = None  # (newest event ms, its arrival ms)
        self._max_tick: int | None = None

    @property
    def last_closed(self) -> int | None:
        return self._last_closed

    @property
    def last_arrival_ms(self) -> int | None:
        """Arrival time (clock ms) of the newest-stamped reading so far; None before the first."""
        return None if self._anchor is None else self._anchor[1]

    @property
    def offline(self) -> bool:
        return self._offline

    @property
    def pending_ticks(self) -> int:
        return len(self._pending)

    def min_token(self) -> int | None:
        tokens = [s.token for s in self._pending.values() if s.token is not None]
        return min(tokens) if tokens else None

    def add(
        self,
        ts_ms: int,
        channels: Sequence[int] | np.ndarray,
        values: Sequence[float] | np.ndarray,
        received_ms: int,
        token: int | None = None,
    ) -> AlignResult:
        """Place one reading; return the ticks (and transitions) it closes, or too_late."""
        k = (ts_ms + self.tick_ms // 2) // self.tick_ms
        if self._last_closed is not None and k <= self._last_closed:
            return AlignResult(too_late=True)
        if self._last_closed is None:
            self._last_closed = k - 1
            self._last_obs = k - 1
        slot = self._pending.get(k)
        if slot is None:
            slot = _Slot([_NAN] * self.n_channels, received_ms, token)
            self._pending[k] = slot
        else:
            slot.received_ms = max(slot.received_ms, received_ms)
            if token is not None:
                slot.token = token if slot.token is None else min(slot.token, token)
        row = slot.values
        for i, v in zip(_ints(channels), _floats(values), strict=True):
            if _isfinite(v):
                row[i] = v
        if self._max_tick is None or k > self._max_tick:
            self._max_tick = k
        if self._anchor is None or ts_ms >= self._anchor[0]:
            self._anchor = (ts_ms, received_ms)
        return self._close_through(self._max_tick - self.lateness_ticks - 1)

    def advance(self, now_ms: int) -> AlignResult:
        """Close what the wall clock says is due (see the module docstring)."""
        if self._anchor is None:
            return AlignResult()
        event_ms, arrival_ms = self._anchor
        event_now = event_ms + max(0, now_ms - arrival_ms)
        newest = (event_now + self.tick_ms // 2) // self.tick_ms
        return self._close_through(newest - self.lateness_ticks - 1)

    def drain(self) -> AlignResult:
        """Close every pending tick now (graceful shutdown)."""
        if not self._pending:
            return AlignResult()
        return self._close_through(max(self._pending))

    def _close_through(self, end: int) -> AlignResult:
        result = AlignResult()
        if self._last_closed is None or end <= self._last_closed:
            return result
        k = self._last_closed + 1
        while k <= end:
            slot = self._pending.pop(k, None)
            last_obs = self._last_obs if self._last_obs is not None else k - 1
            if slot is not None:
                if self._offline:
                    self._offline = False
                    result.transitions.append(
                        Transition("online", k * self.tick_ms, k - last_obs - 1)
                    )
                # unmeasured entries are still the _NAN placed there (only finite values land)
                observed = self.n_channels - slot.values.count(_NAN)
                values = np.array(slot.values, dtype=np.float64)
                result.ticks.append(
                    ClosedTick(k, k * self.tick_ms, values, observed, slot.received_ms, slot.token)
                )
                self._last_obs = k
                k += 1
                continue
            if not self._offline and k - last_obs > self.max_gap_ticks:
                self._offline = True
                result.transitions.append(Transition("offline", k * self.tick_ms, k - last_obs))
            if self._offline:  # jump over the silent stretch to the next pending reading
                later = [t for t in self._pending if t > k]
                k = min([*later, end + 1]) if later else end + 1
                continue
            values = np.full(self.n_channels, np.nan)
            result.ticks.append(ClosedTick(k, k * self.tick_ms, values, 0, None, None))
            k += 1
        self._last_closed = end
        return result


def _ints(channels: Sequence[int] | np.ndarray) -> Sequence[int]:
    return channels.tolist() if isinstance(channels, np.ndarray) else channels


def _floats(values: Sequence[float] | np.ndarray) -> Sequence[float]:
    if isinstance(values, np.ndarray):
        out: list[float] = values.astype(np.float64).tolist()
        return out
    return values
