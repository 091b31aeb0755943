"""EWMA smoothing, hysteresis and calibration at a target false-alarm rate, and how far the
per-device warm-up rescales (``rescale_scale_weight``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edge.bundle import FORMAT_VERSION, INPUT_NAMES, OUTPUT_NAMES, Channel, Manifest, ThresholdSpec
from edge.errors import InputError
from edge.fakes import CenterModel
from edge.scorer import DeviceScorer, fit_scaling
from edge.series import score_series
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


# -- the per-device warm-up rule (edge.scorer.DeviceScorer._end_warmup) ----------------------

TICK_MS = 1000


def _manifest(
    *, window: int = 8, center: float = 0.0, scale: float = 1.0, extra: dict[str, Any] | None = None
) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name="fake",
        version="1",
        created_at="2026-01-01T00:00:00Z",
        channels=tuple(Channel(c, "", center, scale) for c in ("a", "b")),
        tick_seconds=TICK_MS / 1000,
        window=window,
        max_gap_ticks=window,
        backfill_delay=0,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test",
        threshold=ThresholdSpec(1e9, 1e9, 1.0, 0.05),  # alpha 1: smoothed = score
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer={},
        extra=extra or {},
    )


def _ts(n: int) -> NDArray[np.int64]:
    return (np.arange(n, dtype=np.int64) + 1) * TICK_MS


def test_rescale_scale_weight_moves_the_scale_geometrically() -> None:
    rng = np.random.default_rng(1)
    values = 50.0 + rng.normal(size=(120, 2)) * np.array([0.5, 2.0])
    center, spread = fit_scaling(values[:100])
    bundle_scale = 100.0
    for weight in (0.0, 0.5, 0.8, 1.0):
        scorer = DeviceScorer(
            _manifest(scale=bundle_scale),
            warmup_ticks=100,
            rescale=True,
            rescale_scale_weight=weight,
        )
        model = CenterModel(scorer.manifest)
        for t, row in zip(_ts(120), values, strict=True):
            x, mask = scorer.prepare(int(t), row)
            mean, logvar = model.run(x[None], mask[None])
            out = scorer.finish(mean[0], logvar[0], model.run)[0]
        expected = bundle_scale ** (1 - weight) * spread**weight
        np.testing.assert_allclose(scorer.center, center)
        np.testing.assert_allclose(scorer.scale, expected)
        z = (values[-1] - center) / expected
        assert out.score == pytest.approx(float(np.mean(0.5 * (math.log(2 * math.pi) + z**2))))


def test_rescale_scale_weight_comes_from_the_bundle_and_is_checked() -> None:
    rng = np.random.default_rng(2)
    values = 5.0 + rng.normal(size=(80, 2))
    ts = _ts(80)
    own = CenterModel(_manifest(scale=10.0, extra={"scoring": {"rescale_scale_weight": 0.5}}))
    plain = CenterModel(_manifest(scale=10.0))
    from_bundle = score_series(own, values, ts, warmup=50, rescale=True)
    given = score_series(plain, values, ts, warmup=50, rescale=True, rescale_scale_weight=0.5)
    full = score_series(plain, values, ts, warmup=50, rescale=True)  # default: warm-up spread
    np.testing.assert_array_equal(from_bundle.score, given.score)
    assert not np.allclose(full.score[50:], given.score[50:])
    with pytest.raises(InputError, match="rescale_scale_weight"):
        DeviceScorer(plain.manifest, rescale=True, rescale_scale_weight=1.5)
