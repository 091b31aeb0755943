"""The alarm rule: EWMA smoothing, hysteresis, and calibration at a target false-alarm rate.

Pure numpy. The per-tick score (higher = more anomalous, ``None``/NaN when nothing was
observed) is smoothed with an exponentially weighted moving average; a tick without a score
keeps the previous smoothed value. The alarm turns on when the smoothed score exceeds ``on``
and off once it falls below ``off`` (``off <= on``).

:func:`calibrate` picks ``on``/``off`` on scores of normal data so that the alarm, with its
hysteresis, is on for at most ``target_rate`` of those ticks. ``off`` sits at the
``1 - 4 * target_rate`` quantile (capped at the median). An optional ``margin`` widens both
above the median: ``t' = median + (1 + margin) * (t - median)``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edge.bundle import ThresholdSpec

__all__ = ["alarm_series", "calibrate", "ewma", "ewma_step", "hysteresis_step"]


def ewma_step(previous: float | None, score: float | None, alpha: float) -> float | None:
    """One smoothing step; a missing score (None or NaN) keeps ``previous``."""
    if score is None or not math.isfinite(score):
        return previous
    if previous is None:
        return float(score)
    return previous + alpha * (float(score) - previous)


def ewma(
    scores: NDArray[np.float64], alpha: float, initial: float | None = None
) -> NDArray[np.float64]:
    """Smooth a score series [T] (NaN = no score); NaN until the first score."""
    out = np.full(len(scores), np.nan)
    state = initial
    for i, s in enumerate(np.asarray(scores, dtype=np.float64)):
        state = ewma_step(state, float(s), alpha)
        if state is not None:
            out[i] = state
    return out


def hysteresis_step(active: bool, smoothed: float | None, on: float, off: float) -> bool:
    """Next alarm state: switch on above ``on``, off below ``off``; no score keeps the state."""
    if smoothed is None or not math.isfinite(smoothed):
        return active
    if active:
        return smoothed >= off
    return smoothed > on


def alarm_series(smoothed: NDArray[np.float64], on: float, off: float) -> NDArray[np.bool_]:
    """The alarm state [T] for a smoothed series, starting with the alarm off."""
    out = np.zeros(len(smoothed), dtype=bool)
    active = False
    for i, s in enumerate(np.asarray(smoothed, dtype=np.float64)):
        active = hysteresis_step(active, float(s), on, off)
        out[i] = active
    return out


def calibrate(
    smoothed: NDArray[np.float64],
    target_rate: float,
    *,
    alpha: float,
    margin: float = 0.0,
) -> ThresholdSpec:
    """The lowest ``on`` (given ``off``) whose alarm rate on ``smoothed`` is <= ``target_rate``.

    ``smoothed`` are EWMA-smoothed scores of normal data (NaN ignored). Raises ValueError
    when it holds no finite value or the rate is outside (0, 0.5].
    """
    if not 0 < target_rate <= 0.5:
        raise ValueError(f"target false-alarm rate must be in (0, 0.5], got {target_rate}")
    s = np.asarray(smoothed, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite smoothed score to calibrate the threshold on")
    median = float(np.median(s))
    off = max(float(np.quantile(s, 1.0 - min(0.5, 4.0 * target_rate))), median)
    candidates = np.unique(s[s >= off])
    lo, hi = 0, candidates.size - 1  # candidates[hi] = max(s): never exceeded, rate 0
    while lo < hi:
        mid = (lo + hi) // 2
        if float(np.mean(alarm_series(s, float(candidates[mid]), off))) <= target_rate:
            hi = mid
        else:
            lo = mid + 1
    on = float(candidates[lo])
    if margin:
        on = median + (1.0 + margin) * (on - median)
        off = median + (1.0 + margin) * (off - median)
    return ThresholdSpec(
        on=on, off=min(off, on), ewma_alpha=alpha, target_false_alarm_rate=target_rate
    )
