"""Imputation and anomaly baselines on tiny arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.anomaly_baselines import (
    ANOMALY_BASELINES,
    CalibrationSettings,
    MahalanobisDetector,
    PcaT2QDetector,
    run_detector,
)
from training.baselines import (
    BASELINE_NAMES,
    BaselineSettings,
    imputation_baselines,
    linear_interpolation,
    locf,
    mean_fill,
)

NAN = np.nan
TRAIN = np.array([[1.0, 10.0], [3.0, NAN], [5.0, 30.0]])  # channel means 3 and 20
VALUES = np.array(
    [
        [NAN, 1.0],
        [2.0, NAN],
        [NAN, NAN],
        [NAN, 7.0],
        [8.0, NAN],
    ]
)


def test_mean_fill_uses_training_means() -> None:
    out = mean_fill(TRAIN, VALUES)
    assert out[:, 0].tolist() == [3.0, 2.0, 3.0, 3.0, 8.0]
    assert out[:, 1].tolist() == [1.0, 20.0, 20.0, 7.0, 20.0]


def test_locf_carries_last_observation_and_starts_from_the_mean() -> None:
    out = locf(TRAIN, VALUES)
    assert out[:, 0].tolist() == [3.0, 2.0, 2.0, 2.0, 8.0]
    assert out[:, 1].tolist() == [1.0, 1.0, 1.0, 7.0, 7.0]


def test_locf_is_causal() -> None:
    changed = VALUES.copy()
    changed[4, 0] = 99.0
    assert np.array_equal(locf(TRAIN, VALUES)[:4], locf(TRAIN, changed)[:4])


def test_linear_interpolates_and_holds_the_ends() -> None:
    out = linear_interpolation(TRAIN, VALUES)
    assert out[:, 0].tolist() == [2.0, 2.0, 4.0, 6.0, 8.0]
    assert out[:, 1].tolist() == [1.0, 3.0, 5.0, 7.0, 7.0]


def test_linear_channel_without_observation_takes_the_mean() -> None:
    values = np.array([[NAN, 1.0], [NAN, 2.0]])
    assert linear_interpolation(TRAIN, values)[:, 0].tolist() == [3.0, 3.0]


def test_baselines_reject_wrong_width() -> None:
    with pytest.raises(ValueError, match="expected \\[ticks, 3\\]"):
        mean_fill(np.zeros((3, 3)), VALUES)


@pytest.fixture(scope="module")
def correlated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Channel 1 = 2 * channel 0 exactly, so per-tick imputers can recover it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=600)
    data = np.stack([x, 2 * x, rng.normal(size=600)], axis=1)
    train, test = data[:500], data[500:].copy()
    hidden = np.zeros(test.shape, bool)
    hidden[::2, 1] = True
    test[hidden] = np.nan
    return train, test, data[500:][hidden]


@pytest.mark.parametrize("name", ["knn", "iterative", "missforest"])
def test_per_tick_imputers_use_the_other_channels(
    name: str, correlated: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    train, test, truth = correlated
    settings = BaselineSettings(max_fit_rows=300, forest_trees=5, forest_max_iter=2)
    baseline = {b.name: b for b in imputation_baselines(settings)}[name]
    out = baseline.impute(train, test)
    observed = ~np.isnan(test)
    assert np.array_equal(out[observed], test[observed])
    assert not np.isnan(out).any()
    err = np.mean(np.abs(out[np.isnan(test)] - truth))
    mean_err = np.mean(np.abs(mean_fill(train, test)[np.isnan(test)] - truth))
    assert err < 0.5 * mean_err


def test_every_baseline_fills_a_fully_silent_tick() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(50, 3))
    values = rng.normal(size=(6, 3))
    values[2:4] = np.nan
    settings = BaselineSettings(max_fit_rows=50, forest_trees=3, forest_max_iter=1)
    baselines = imputation_baselines(settings)
    assert tuple(b.name for b in baselines) == BASELINE_NAMES
    for b in baselines:
        out = b.impute(train, values)
        assert out.shape == values.shape and not np.isnan(out).any(), b.name


def test_causal_flags() -> None:
    causal = {b.name: b.causal for b in imputation_baselines()}
    assert causal["locf"] and causal["mean"] and not causal["linear"]


def _stream(seed: int, n: int = 700, shift_at: int = 550) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    x[:, 1] = x[:, 0] + 0.1 * rng.normal(size=n)
    x[shift_at:, 1] -= 3.0  # breaks the correlation and the level
    return x


@pytest.mark.parametrize("name", sorted(ANOMALY_BASELINES))
def test_anomaly_baselines_flag_the_shift_not_the_normal_part(name: str) -> None:
    values = _stream(0)
    run = run_detector(ANOMALY_BASELINES[name], values, CalibrationSettings(warmup=400))
    assert run.anomaly.shape == (700,)
    assert run.anomaly[560:].mean() > 0.9
    assert run.anomaly[400:550].mean() < 0.2
    assert run.threshold.off <= run.threshold.on


def test_detector_scores_depend_only_on_their_row() -> None:
    values = _stream(1)
    for det in (MahalanobisDetector(), PcaT2QDetector()):
        det.fit(values[:400])
        full = det.score(values)
        assert np.allclose(full[600:], det.score(values[600:]))


def test_run_detector_needs_rows_after_warmup() -> None:
    with pytest.raises(ValueError, match="more than 400 rows"):
        run_detector(MahalanobisDetector, np.zeros((400, 2)), CalibrationSettings())
