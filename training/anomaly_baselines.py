"""Causal anomaly-detection baselines, fitted and calibrated per file on its warm-up rows.

Each detector implements :class:`Detector` (``fit`` on warm-up rows, ``score`` any rows, higher
= more anomalous; a row's score depends on that row only). :func:`run_detector` turns one into
a causal alarm stream the way SKAB's protocol wants it:

1. fit on the first ``warmup`` rows of the file (the per-file training/calibration data);
2. calibrate the alarm on the warm-up rows only, never on labels: the warm-up is cut into
   ``folds`` contiguous blocks, each block is scored by a detector fitted on the others
   (out-of-sample, so the threshold is not fooled by in-sample fit), the scores are
   EWMA-smoothed, and the on/off thresholds are set with the same rule the VAE's bundle uses
   (:func:`edge.threshold.calibrate` at ``target_rate``);
3. score every row with the detector fitted on the whole warm-up, EWMA-smooth (causal), and
   run the same hysteresis alarm as the edge agent (:func:`edge.threshold.alarm_series`).

| name | detector |
|---|---|
| ``mahalanobis`` | Hotelling T² of the standardised row (shrunk covariance) |
| ``pca_t2q`` | PCA T² (principal subspace) and Q / SPE (residual), each over its warm-up |
|  | quantile, combined by max |
| ``isolation_forest`` | scikit-learn ``IsolationForest`` (negated ``score_samples``) |
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.bundle import ThresholdSpec
from edge.threshold import alarm_series, calibrate, ewma

__all__ = [
    "ANOMALY_BASELINES",
    "AlarmRun",
    "CalibrationSettings",
    "Detector",
    "IsolationForestDetector",
    "MahalanobisDetector",
    "PcaT2QDetector",
    "run_detector",
]


class Detector(Protocol):
    """A per-row anomaly scorer fitted on normal rows."""

    def fit(self, train: np.ndarray) -> None: ...

    def score(self, values: np.ndarray) -> np.ndarray: ...


class _Standardiser:
    def __init__(self, train: np.ndarray) -> None:
        self.mean = np.nanmean(train, axis=0)
        std = np.nanstd(train, axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        z = (np.asarray(values, np.float64) - self.mean) / self.std
        return np.where(np.isnan(z), 0.0, z)  # a missing entry sits at the training mean


class MahalanobisDetector:
    """Hotelling T² of standardised rows with a ridge-shrunk covariance."""

    def __init__(self, shrinkage: float = 0.05) -> None:
        self.shrinkage = shrinkage
        self._std: _Standardiser | None = None
        self._prec: np.ndarray | None = None

    def fit(self, train: np.ndarray) -> None:
        self._std = _Standardiser(train)
        z = self._std(train)
        cov = np.cov(z, rowvar=False)
        cov = (1 - self.shrinkage) * cov + self.shrinkage * np.eye(cov.shape[0])
        self._prec = np.linalg.pinv(cov)

    def score(self, values: np.ndarray) -> np.ndarray:
        if self._std is None or self._prec is None:
            raise RuntimeError("fit() first")
        z = self._std(values)
        return np.asarray(np.einsum("ij,jk,ik->i", z, self._prec, z), dtype=np.float64)


class PcaT2QDetector:
    """PCA T² (principal subspace) and Q / SPE (residual), each scaled by a warm-up quantile."""

    def __init__(self, explained_variance: float = 0.85, limit_quantile: float = 0.99) -> None:
        self.explained_variance = explained_variance
        self.limit_quantile = limit_quantile
        self._std: _Standardiser | None = None
        self._basis: np.ndarray | None = None  # [C, k] principal directions
        self._inv_var: np.ndarray | None = None  # [k]
        self._limits = (1.0, 1.0)

    def fit(self, train: np.ndarray) -> None:
        self._std = _Standardiser(train)
        z = self._std(train)
        eigval, eigvec = np.linalg.eigh(np.cov(z, rowvar=False))
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = np.maximum(eigval[order], 1e-12), eigvec[:, order]
        share = np.cumsum(eigval) / eigval.sum()
        k = int(np.searchsorted(share, self.explained_variance) + 1)
        k = min(k, z.shape[1] - 1) if z.shape[1] > 1 else 1
        self._basis, self._inv_var = eigvec[:, :k], 1.0 / eigval[:k]
        t2, q = self._parts(train)
        self._limits = (
            max(float(np.quantile(t2, self.limit_quantile)), 1e-12),
            max(float(np.quantile(q, self.limit_quantile)), 1e-12),
        )

    def _parts(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._std is None or self._basis is None or self._inv_var is None:
            raise RuntimeError("fit() first")
        z = self._std(values)
        proj = z @ self._basis
        t2 = np.sum(proj**2 * self._inv_var, axis=1)
        resid = z - proj @ self._basis.T
        return t2, np.sum(resid**2, axis=1)

    def score(self, values: np.ndarray) -> np.ndarray:
        t2, q = self._parts(values)
        return np.maximum(t2 / self._limits[0], q / self._limits[1])


class IsolationForestDetector:
    """scikit-learn IsolationForest on standardised rows; score = -score_samples."""

    def __init__(self, n_estimators: int = 100, seed: int = 0) -> None:
        self.n_estimators = n_estimators
        self.seed = seed
        self._std: _Standardiser | None = None
        self._forest: Any = None

    def fit(self, train: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        self._std = _Standardiser(train)
        self._forest = IsolationForest(
            n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1
        ).fit(self._std(train))

    def score(self, values: np.ndarray) -> np.ndarray:
        if self._std is None or self._forest is None:
            raise RuntimeError("fit() first")
        return -np.asarray(self._forest.score_samples(self._std(values)), dtype=np.float64)


ANOMALY_BASELINES: dict[str, Callable[[], Detector]] = {
    "mahalanobis": MahalanobisDetector,
    "pca_t2q": PcaT2QDetector,
    "isolation_forest": IsolationForestDetector,
}


@dataclass(frozen=True)
class CalibrationSettings:
    """How a baseline's threshold is set from the warm-up rows (chosen a priori, not tuned)."""

    warmup: int = 400
    ewma_alpha: float = 0.1
    target_rate: float = 0.01  # alarm rate allowed on the (out-of-sample) warm-up scores
    folds: int = 5


@dataclass(frozen=True)
class AlarmRun:
    """A detector's causal output over one file: raw score, smoothed score, alarm rule, alarms."""

    score: np.ndarray
    smoothed: np.ndarray
    threshold: ThresholdSpec
    anomaly: np.ndarray


def _cross_fitted(make: Callable[[], Detector], warm: np.ndarray, folds: int) -> np.ndarray:
    bounds = np.linspace(0, warm.shape[0], folds + 1).astype(int)
    out = np.empty(warm.shape[0], dtype=np.float64)
    for lo, hi in itertools.pairwise(bounds):
        det = make()
        det.fit(np.concatenate([warm[:lo], warm[hi:]]))
        out[lo:hi] = det.score(warm[lo:hi])
    return out


def run_detector(
    make: Callable[[], Detector], values: np.ndarray, settings: CalibrationSettings
) -> AlarmRun:
    """Fit on the warm-up rows, calibrate on them out-of-sample, score the whole file causally."""
    arr = np.asarray(values, dtype=np.float64)
    n_warm = settings.warmup
    if arr.ndim != 2 or arr.shape[0] <= n_warm:
        raise ValueError(f"need more than {n_warm} rows of [rows, channels], got {arr.shape}")
    warm = arr[:n_warm]
    calib = ewma(_cross_fitted(make, warm, max(settings.folds, 2)), settings.ewma_alpha)
    rule = calibrate(calib, settings.target_rate, alpha=settings.ewma_alpha)
    det = make()
    det.fit(warm)
    score = det.score(arr)
    smoothed = ewma(score, settings.ewma_alpha)
    return AlarmRun(
        score=score,
        smoothed=smoothed,
        threshold=rule,
        anomaly=alarm_series(smoothed, rule.on, rule.off),
    )
