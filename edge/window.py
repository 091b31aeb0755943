"""The tick grid and the sliding window over it (numpy only, pure).

Readings arrive at irregular times; the model sees a regular grid of ticks ``k * tick_ms``
(epoch-aligned, UTC). :func:`to_grid` puts rows onto that grid: each row goes to the nearest
tick, the latest non-missing reading of a channel within a tick wins, and ticks without any
reading stay missing (NaN). Training (``training.data``) and ``gapwatch score`` both use it, so
a file is cut into ticks the same way when the model is trained and when it is run.

:class:`SlidingWindow` keeps the last ``window`` ticks of one device, oldest first.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["SlidingWindow", "median_tick_ms", "to_grid"]


def median_tick_ms(ts_ms: NDArray[np.int64]) -> int:
    """The median spacing of distinct sorted timestamps, in ms (at least 1).

    Raises ValueError when fewer than two distinct timestamps exist.
    """
    uniq = np.unique(np.asarray(ts_ms, dtype=np.int64))
    if uniq.size < 2:
        raise ValueError("need at least two distinct timestamps to infer the tick period")
    return max(1, int(np.median(np.diff(uniq))))


def to_grid(
    ts_ms: NDArray[np.int64], values: NDArray[np.float64], tick_ms: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Resample rows onto the epoch-aligned grid of period ``tick_ms``.

    ``ts_ms`` [N] (any order), ``values`` [N, C] with NaN for missing. Returns
    ``(grid_ts [T], grid_values [T, C])`` covering the first to the last row's tick; per
    channel the latest (by time, then by row order) non-missing reading of a tick wins.
    """
    if tick_ms < 1:
        raise ValueError(f"tick_ms must be >= 1, got {tick_ms}")
    ts = np.asarray(ts_ms, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 2 or vals.shape[0] != ts.shape[0]:
        raise ValueError(f"values must be [N, C] with N={ts.shape[0]}, got {vals.shape}")
    n_ch = vals.shape[1]
    if ts.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, n_ch), dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    ts, vals = ts[order], vals[order]
    idx = (ts + tick_ms // 2) // tick_ms  # nearest tick (halves go up)
    first = int(idx[0])
    n_ticks = int(idx[-1]) - first + 1
    out = np.full((n_ticks, n_ch), np.nan)
    rel = idx - first
    for c in range(n_ch):
        ok = ~np.isnan(vals[:, c])
        r = rel[ok]
        if r.size == 0:
            continue
        last = np.ones(r.size, dtype=bool)
        last[:-1] = r[1:] != r[:-1]  # r is sorted: the last row of each tick wins
        out[r[last], c] = vals[ok, c][last]
    grid_ts = (np.arange(n_ticks, dtype=np.int64) + first) * tick_ms
    return grid_ts, out


class SlidingWindow:
    """The last ``window`` ticks of one device: timestamps and raw values, oldest first.

    Positions never filled hold ``ts = -1`` and NaN values.
    """

    def __init__(self, window: int, channels: int) -> None:
        if window < 1 or channels < 1:
            raise ValueError(f"window and channels must be >= 1, got {window}, {channels}")
        self.window = window
        self.channels = channels
        self._ts = np.full(window, -1, dtype=np.int64)
        self._values = np.full((window, channels), np.nan)
        self.filled = 0

    def push(self, ts_ms: int, values: NDArray[np.float64]) -> None:
        """Append the newest tick, dropping the oldest."""
        self._ts[:-1] = self._ts[1:]
        self._values[:-1] = self._values[1:]
        self._ts[-1] = ts_ms
        self._values[-1] = values
        self.filled = min(self.window, self.filled + 1)

    @property
    def ts(self) -> NDArray[np.int64]:
        """[window] timestamps (a view; -1 where never filled)."""
        return self._ts

    @property
    def values(self) -> NDArray[np.float64]:
        """[window, channels] raw values (a view; NaN = missing)."""
        return self._values

    def recent(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Copies of the filled part: ``(ts [n], values [n, C])``, oldest first."""
        start = self.window - self.filled
        return self._ts[start:].copy(), self._values[start:].copy()
