"""Imputation baselines that the VAE is measured against.

A baseline is fitted once on the training part and then fills any number of series:
``baseline.fit(train)`` returns a filler ``filled = filler(values)``. ``train`` is ``[N, C]``
(scaled, NaN = missing); ``values`` is ``[T, C]`` (scaled, NaN = missing, including injected
gaps); ``filled`` has the same shape and no NaN, and keeps the observed entries unchanged.
``baseline.impute(train, values)`` does both in one call.

| name | causal | what it does |
|---|---|---|
| ``mean`` | yes | the training mean of the channel |
| ``locf`` | yes | last observation carried forward (training mean before the first one) |
| ``linear`` | no | linear interpolation in time between the neighbouring observations |
| ``knn`` | yes | scikit-learn ``KNNImputer`` per tick, neighbours from the training part |
| ``iterative`` | yes | scikit-learn ``IterativeImputer`` (BayesianRidge) per tick |
| ``missforest`` | yes | ``IterativeImputer`` + ``ExtraTreesRegressor`` per tick (missForest) |

The per-tick imputers see one tick at a time, so they cannot use temporal context. Fitting
them is the slow part: ``BaselineSettings.max_fit_rows`` subsamples the training rows and
``forest_trees`` limits the ExtraTrees ensemble (both reported with the results).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BASELINE_NAMES",
    "BaselineSettings",
    "Filler",
    "ImputationBaseline",
    "imputation_baselines",
    "linear_interpolation",
    "locf",
    "mean_fill",
]

Filler = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ImputationBaseline:
    """One baseline: a name, whether it only uses the past, and how it is fitted."""

    name: str
    causal: bool
    summary: str
    fit: Callable[[np.ndarray], Filler]

    def impute(self, train: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Fit on ``train`` and fill ``values`` in one call."""
        return self.fit(train)(values)


@dataclass(frozen=True)
class BaselineSettings:
    """Knobs of the scikit-learn baselines (defaults keep a 35k-row evaluation to minutes)."""

    max_fit_rows: int = 4000  # training rows sampled to fit the per-tick imputers
    knn_neighbors: int = 5
    iterative_max_iter: int = 10
    forest_trees: int = 20
    forest_max_iter: int = 5
    forest_min_samples_leaf: int = 2
    seed: int = 0


def _train_means(train: np.ndarray) -> np.ndarray:
    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2:
        raise ValueError(f"train must be [rows, channels], got shape {train.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN, handled below
        means = np.nanmean(train, axis=0)
    return np.asarray(np.where(np.isfinite(means), means, 0.0), dtype=np.float64)


def _check(values: np.ndarray, width: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"values have shape {arr.shape}, expected [ticks, {width}] like train")
    return arr


def mean_fill(train: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fill every missing entry with its channel's training mean."""
    means = _train_means(train)
    arr = _check(values, means.size)
    return np.where(np.isnan(arr), means[None, :], arr)


def locf(train: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Last observation carried forward per channel; the training mean before the first one."""
    means = _train_means(train)
    arr = _check(values, means.size)
    observed = ~np.isnan(arr)
    idx = np.where(observed, np.arange(arr.shape[0])[:, None], -1)
    last = np.maximum.accumulate(idx, axis=0)  # index of the latest observation so far
    cols = np.broadcast_to(np.arange(arr.shape[1]), arr.shape)
    carried = arr[np.maximum(last, 0), cols]
    return np.where(last >= 0, carried, means[None, :])


def linear_interpolation(train: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Linear interpolation between observations per channel (non-causal).

    Before the first and after the last observation the nearest observation is held; a
    channel with no observation at all takes its training mean.
    """
    means = _train_means(train)
    arr = _check(values, means.size)
    out = arr.copy()
    t = np.arange(arr.shape[0], dtype=np.float64)
    for c in range(arr.shape[1]):
        obs = ~np.isnan(arr[:, c])
        if not obs.any():
            out[:, c] = means[c]
        elif not obs.all():
            out[~obs, c] = np.interp(t[~obs], t[obs], arr[obs, c])
    return out


def _fit_rows(train: np.ndarray, settings: BaselineSettings) -> np.ndarray:
    train = np.asarray(train, dtype=np.float64)
    keep = train[~np.all(np.isnan(train), axis=1)]
    if keep.shape[0] == 0:
        raise ValueError("train has no row with an observed entry; per-tick imputers cannot fit")
    if keep.shape[0] > settings.max_fit_rows:
        rng = np.random.default_rng(settings.seed)
        keep = keep[np.sort(rng.choice(keep.shape[0], settings.max_fit_rows, replace=False))]
    return np.asarray(keep, dtype=np.float64)


def _sklearn_filler(imputer: Any, train: np.ndarray, settings: BaselineSettings) -> Filler:
    """Fit a scikit-learn imputer on (sampled) training rows; fill tick by tick afterwards."""
    means = _train_means(train)
    with warnings.catch_warnings():
        # IterativeImputer warns when it stops at max_iter: expected with a capped budget.
        warnings.simplefilter("ignore")
        imputer.fit(_fit_rows(train, settings))

    def fill(values: np.ndarray) -> np.ndarray:
        arr = _check(values, means.size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            filled = np.asarray(imputer.transform(arr), dtype=np.float64)
        filled = np.where(np.isfinite(filled), filled, means[None, :])
        return np.where(np.isnan(arr), filled, arr)

    return fill


def _knn(settings: BaselineSettings) -> Callable[[np.ndarray], Filler]:
    def fit(train: np.ndarray) -> Filler:
        from sklearn.impute import KNNImputer

        imputer = KNNImputer(n_neighbors=settings.knn_neighbors, keep_empty_features=True)
        return _sklearn_filler(imputer, train, settings)

    return fit


def _iterative(settings: BaselineSettings) -> Callable[[np.ndarray], Filler]:
    def fit(train: np.ndarray) -> Filler:
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        imputer = IterativeImputer(
            max_iter=settings.iterative_max_iter,
            random_state=settings.seed,
            keep_empty_features=True,
        )
        return _sklearn_filler(imputer, train, settings)

    return fit


def _miss_forest(settings: BaselineSettings) -> Callable[[np.ndarray], Filler]:
    def fit(train: np.ndarray) -> Filler:
        from sklearn.ensemble import ExtraTreesRegressor
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        forest = ExtraTreesRegressor(
            n_estimators=settings.forest_trees,
            min_samples_leaf=settings.forest_min_samples_leaf,
            random_state=settings.seed,
            n_jobs=1,
        )
        imputer = IterativeImputer(
            estimator=forest,
            max_iter=settings.forest_max_iter,
            random_state=settings.seed,
            keep_empty_features=True,
        )
        return _sklearn_filler(imputer, train, settings)

    return fit


def _simple(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray], Filler]:
    def fit(train: np.ndarray) -> Filler:
        means_only = _train_means(train)[None, :]  # all the training part these methods need
        return lambda values: fn(means_only, values)

    return fit


def imputation_baselines(
    settings: BaselineSettings | None = None,
) -> tuple[ImputationBaseline, ...]:
    """All baselines, in the order reports list them."""
    s = settings or BaselineSettings()
    return (
        ImputationBaseline("mean", True, "training mean per channel", _simple(mean_fill)),
        ImputationBaseline("locf", True, "last observation carried forward", _simple(locf)),
        ImputationBaseline(
            "linear", False, "linear interpolation in time", _simple(linear_interpolation)
        ),
        ImputationBaseline(
            "knn",
            True,
            f"KNNImputer per tick, k={s.knn_neighbors}, fit on <= {s.max_fit_rows} rows",
            _knn(s),
        ),
        ImputationBaseline(
            "iterative",
            True,
            f"IterativeImputer (BayesianRidge) per tick, {s.iterative_max_iter} rounds,"
            f" fit on <= {s.max_fit_rows} rows",
            _iterative(s),
        ),
        ImputationBaseline(
            "missforest",
            True,
            f"IterativeImputer + ExtraTrees ({s.forest_trees} trees, {s.forest_max_iter} rounds)"
            f" per tick, fit on <= {s.max_fit_rows} rows",
            _miss_forest(s),
        ),
    )


BASELINE_NAMES: tuple[str, ...] = tuple(b.name for b in imputation_baselines())
