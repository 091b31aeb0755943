"""EWMA smoothing, hysteresis and calibration at a target false-alarm rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.threshold import alarm_series, calibrate, ewma, ewma_step, hysteresis_step


def test_ewma_step_starts_at_first_score_and_holds_through_gaps() -> None:
    assert ewma_step(None, None, 0.5) is None
    assert ewma_step(None, 4.0, 0.5) == 4.0
    assert ewma_step(4.0, 2.0, 0.5) == 3.0
    assert ewma_step(3.0, None, 0.5) == 3.0
    assert ewma_step(3.0, math.nan, 0.5) == 3.0


def test_ewma_series_matches_steps() -> None:
    scores = np.array([np.nan, 1.0, 3.0, np.nan, 5.0])
    out = ewma(scores, 0.5)
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:], [1.0, 2.0, 2.0, 3.5])


def test_hysteresis_turns_on_above_on_and_off_below_off() -> None:
    smoothed = np.array([1.0, 6.0, 4.0, 3.5, 2.0, 4.0, 6.0])
    alarms = alarm_series(smoothed, on=5.0, off=3.0)
    assert alarms.tolist() == [False, True, True, True, False, False, True]
    assert hysteresis_step(True, None, 5.0, 3.0) is True


def test_calibrate_meets_target_rate_on_its_own_data() -> None:
    rng = np.random.default_rng(0)
    smoothed = ewma(rng.normal(size=5000) ** 2, 0.2)
    spec = calibrate(smoothed, 0.01, alpha=0.2)
    assert spec.off <= spec.on
    assert spec.ewma_alpha == 0.2 and spec.target_false_alarm_rate == 0.01
    rate = alarm_series(smoothed, spec.on, spec.off).mean()
    assert 0.0 < rate <= 0.01
    # the lowest such threshold: the next lower candidate breaks the target
    below = smoothed[(smoothed < spec.on) & (smoothed >= spec.off)].max()
    assert alarm_series(smoothed, float(below), spec.off).mean() > 0.01


def test_calibrate_margin_widens_above_the_median() -> None:
    smoothed = np.linspace(0.0, 10.0, 1001)
    plain = calibrate(smoothed, 0.05, alpha=1.0)
    wide = calibrate(smoothed, 0.05, alpha=1.0, margin=1.0)
    median = 5.0
    assert wide.on == pytest.approx(median + 2 * (plain.on - median))
    assert wide.on > plain.on


def test_calibrate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no finite"):
        calibrate(np.array([np.nan, np.nan]), 0.01, alpha=0.1)
    with pytest.raises(ValueError, match="rate"):
        calibrate(np.ones(10), 0.0, alpha=0.1)
