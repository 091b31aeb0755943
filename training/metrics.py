"""Evaluation metrics: imputation error, point-wise detection, ranking, delays, NAB.

Pure functions on numpy arrays (no I/O, no clocks). Conventions:

- ``labels`` are 0/1 (or bool) per scored point, 1 = inside a labelled anomaly;
- ``flags`` are the detector's alarms per point (bool);
- ``scores`` are real numbers, higher = more anomalous;
- point-wise metrics are never point-adjusted: a segment counts point by point.

Rates follow SKAB: FAR = FP / actual negatives, MAR = FN / actual positives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NAB_PROFILES",
    "Confusion",
    "ErrorStats",
    "NabProfile",
    "alarm_onsets",
    "confusion",
    "detection_delays",
    "false_alarm_events",
    "masked_errors",
    "nab_counts",
    "nab_normalise",
    "pr_auc",
    "roc_auc",
    "segments",
]


@dataclass(frozen=True)
class ErrorStats:
    """Absolute and squared error sums over a set of entries (combine by adding)."""

    abs_sum: float
    sq_sum: float
    count: int

    @property
    def mae(self) -> float:
        return self.abs_sum / self.count if self.count else math.nan

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sq_sum / self.count) if self.count else math.nan

    def __add__(self, other: ErrorStats) -> ErrorStats:
        return ErrorStats(
            self.abs_sum + other.abs_sum, self.sq_sum + other.sq_sum, self.count + other.count
        )


def masked_errors(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> ErrorStats:
    """Errors of ``pred`` against ``truth`` on the entries where ``mask`` is true.

    A NaN prediction on a masked entry is a bug in the method, not a missing value: it raises.
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if not truth.shape == pred.shape == mask.shape:
        raise ValueError(
            f"shapes differ: truth {truth.shape}, pred {pred.shape}, mask {mask.shape}"
        )
    diff = pred[mask] - truth[mask]
    if not np.all(np.isfinite(diff)):
        raise ValueError(f"{int(np.sum(~np.isfinite(diff)))} masked entries are not finite")
    return ErrorStats(float(np.abs(diff).sum()), float(np.square(diff).sum()), int(diff.size))


@dataclass(frozen=True)
class Confusion:
    """Point-wise confusion counts and the rates derived from them."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else math.nan

    @property
    def far(self) -> float:
        """False-alarm rate: FP / actual negatives."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else math.nan

    @property
    def mar(self) -> float:
        """Missed-alarm rate: FN / actual positives."""
        return self.fn / (self.fn + self.tp) if self.fn + self.tp else math.nan


def _bool(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(bool)


def confusion(labels: np.ndarray, flags: np.ndarray) -> Confusion:
    """Point-wise confusion of alarms ``flags`` against ``labels``."""
    y = _bool(labels, "labels")
    p = _bool(flags, "flags")
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and flags {p.shape} differ in length")
    return Confusion(
        tp=int(np.sum(y & p)),
        fp=int(np.sum(~y & p)),
        fn=int(np.sum(y & ~p)),
        tn=int(np.sum(~y & ~p)),
    )


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    boundaries = np.flatnonzero(np.diff(sx)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [sx.size]))
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _scored(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = _bool(labels, "labels")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    # A point with no score (nothing observed) ranks lowest: it can never raise an alarm.
    return y, np.where(np.isnan(s), -np.inf, s)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN with one class only."""
    y, s = _scored(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over distinct score thresholds, highest first.
    """
    y, s = _scored(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ss)), ys.size - 1]
    tps = np.cumsum(ys)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tps / predicted
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of 1 in ``labels`` as ``[start, end)`` index pairs."""
    y = _bool(labels, "labels").astype(np.int8)
    edges = np.diff(np.r_[0, y, 0])
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def alarm_onsets(flags: np.ndarray) -> np.ndarray:
    """True where an alarm turns on (a rising edge; a flag at index 0 counts)."""
    p = _bool(flags, "flags")
    return np.asarray(p & ~np.r_[False, p[:-1]], dtype=bool)


def detection_delays(
    labels: np.ndarray, flags: np.ndarray, ts_s: np.ndarray | None = None
) -> list[float | None]:
    """Per anomaly segment: time from its start to the first alarm inside it, or None if missed.

    Delays are in the units of ``ts_s`` (seconds), or in points when ``ts_s`` is None.
    """
    p = _bool(flags, "flags")
    t = np.arange(p.size, dtype=np.float64) if ts_s is None else np.asarray(ts_s, np.float64)
    if t.shape != p.shape:
        raise ValueError(f"ts_s {t.shape} and flags {p.shape} differ in length")
    out: list[float | None] = []
    for start, end in segments(labels):
        hits = np.flatnonzero(p[start:end])
        out.append(float(t[start + hits[0]] - t[start]) if hits.size else None)
    return out


def false_alarm_events(labels: np.ndarray, flags: np.ndarray) -> int:
    """Alarm onsets that start on a normal point (each burst of false alarms counts once)."""
    y = _bool(labels, "labels")
    return int(np.sum(alarm_onsets(flags) & ~y))


@dataclass(frozen=True)
class NabProfile:
    """Weights of a NAB scoring profile (true positive, false positive, false negative)."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


NAB_PROFILES: tuple[NabProfile, ...] = (
    NabProfile("standard", 1.0, -0.11, -1.0),
    NabProfile("low_fp", 1.0, -0.22, -1.0),
    NabProfile("low_fn", 1.0, -0.11, -2.0),
)


def _nab_tp_weight(fraction: float, profile: NabProfile) -> float:
    """SKAB's scaled tanh: A_tp for a detection at the window start, A_fp at its end."""
    x = -math.pi / 2 + min(max(fraction, 0.0), 1.0) * math.pi
    half = (profile.a_tp - profile.a_fp) / 2
    return -half * math.tanh(x) / math.tanh(math.pi / 2) + half + profile.a_fp


def nab_counts(
    ts_s: np.ndarray,
    changepoints: np.ndarray,
    flags: np.ndarray,
    window_s: float,
    profiles: Sequence[NabProfile] = NAB_PROFILES,
) -> np.ndarray:
    """NAB-style changepoint scores of one file, as SKAB computes them.

    Each labelled changepoint opens a detection window ``[t_cp, t_cp + window_s]`` (cut at the
    next changepoint). Predicted changepoints are the alarm onsets. The first onset in a window
    scores a weight falling from ``a_tp`` (at its start) to ``a_fp`` (at its end); a window
    without an onset scores ``a_fn``; every onset outside all windows scores ``a_fp``; extra
    onsets inside a window are ignored.

    Returns an array ``[3, len(profiles)]``: raw, null-detector and perfect-detector scores.
    Sum these over files, then normalise with :func:`nab_normalise`.
    """
    t = np.asarray(ts_s, dtype=np.float64)
    cps = t[_bool(changepoints, "changepoints")]
    onsets = t[alarm_onsets(flags)]
    windows = [
        (start, min(start + window_s, cps[i + 1]) if i + 1 < cps.size else start + window_s)
        for i, start in enumerate(cps)
    ]
    in_any = np.zeros(onsets.size, dtype=bool)
    first_fraction: list[float | None] = []
    for start, end in windows:
        inside = (onsets >= start) & (onsets <= end)
        in_any |= inside
        hit = onsets[inside]
        first_fraction.append(
            float((hit[0] - start) / (end - start)) if hit.size and end > start else None
        )
    n_fp = int(np.sum(~in_any))
    out = np.zeros((3, len(profiles)), dtype=np.float64)
    for j, prof in enumerate(profiles):
        raw = n_fp * prof.a_fp
        for frac in first_fraction:
            raw += prof.a_fn if frac is None else _nab_tp_weight(frac, prof)
        out[:, j] = (raw, len(windows) * prof.a_fn, len(windows) * prof.a_tp)
    return out


def nab_normalise(counts: np.ndarray) -> np.ndarray:
    """``100 * (raw - null) / (perfect - null)`` per profile (100 = perfect, 0 = null detector)."""
    raw, null, perfect = counts
    span = perfect - null
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(span > 0, 100.0 * (raw - null) / span, np.nan)
