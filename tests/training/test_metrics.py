"""training.metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from training.metrics import (
    NAB_PROFILES,
    ErrorStats,
    alarm_onsets,
    confusion,
    detection_delays,
    false_alarm_events,
    masked_errors,
    nab_counts,
    nab_normalise,
    pr_auc,
    roc_auc,
    segments,
)


def test_masked_errors_only_count_masked_entries() -> None:
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred = np.array([[2.0, 2.0], [0.0, 100.0]])
    mask = np.array([[True, False], [True, False]])
    stats = masked_errors(truth, pred, mask)
    assert stats.count == 2
    assert stats.mae == pytest.approx((1 + 3) / 2)
    assert stats.rmse == pytest.approx(math.sqrt((1 + 9) / 2))


def test_masked_errors_refuse_nan_prediction_on_masked_entry() -> None:
    with pytest.raises(ValueError, match="not finite"):
        masked_errors(np.zeros((2, 1)), np.array([[np.nan], [0.0]]), np.ones((2, 1), bool))


def test_error_stats_add_pools_entries() -> None:
    pooled = ErrorStats(2.0, 4.0, 2) + ErrorStats(1.0, 1.0, 2)
    assert pooled.mae == pytest.approx(0.75)
    assert pooled.rmse == pytest.approx(math.sqrt(5 / 4))
    assert math.isnan(ErrorStats(0.0, 0.0, 0).mae)


def test_confusion_rates_by_hand() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    flags = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    c = confusion(labels, flags)
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 1, 1, 5)
    assert c.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert c.far == pytest.approx(1 / 6)  # FP / actual negatives
    assert c.mar == pytest.approx(1 / 4)  # FN / actual positives
    assert c.precision == pytest.approx(3 / 4)


def test_flag_everything_gives_f1_of_the_base_rate_and_far_one() -> None:
    labels = np.array([1] * 537 + [0] * 463)
    c = confusion(labels, np.ones(1000, bool))
    assert c.f1 == pytest.approx(2 * 0.537 / 1.537)
    assert c.far == 1.0
    assert c.mar == 0.0


def test_confusion_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        confusion(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.4
    scores = np.round(rng.normal(size=500) + labels * 0.8, 1)  # rounding makes ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert pr_auc(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_auc_by_hand_and_degenerate_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(labels, np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.5)
    # AP: ranks 0.8(+), 0.4(-), 0.35(+), 0.1(-) -> 0.5*1 + 0.5*(2/3)
    assert pr_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.5 + 1 / 3)
    assert math.isnan(roc_auc(np.zeros(4), np.arange(4.0)))
    # a point without a score ranks lowest
    assert roc_auc(labels, np.array([np.nan, 0.0, 1.0, 2.0])) == pytest.approx(1.0)


def test_segments_and_onsets() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1])
    assert segments(labels) == [(0, 2), (4, 5), (6, 9)]
    flags = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], bool)
    assert alarm_onsets(flags).tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 0]
    # onsets at 0 and 6 start on anomalous points; the one at 2 on a normal point
    assert false_alarm_events(labels, flags) == 1


def test_detection_delay_is_first_alarm_inside_each_segment() -> None:
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1])
    flags = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0], bool)
    # segment 1 starts at 1, first alarm inside at 3; segment 2 (6-7) missed; segment 3 at once
    assert detection_delays(labels, flags) == [2.0, None, 0.0]
    ts = np.arange(11) * 2.0 + 100
    assert detection_delays(labels, flags, ts) == [4.0, None, 0.0]


def test_nab_perfect_null_and_late_detection() -> None:
    ts = np.arange(200, dtype=np.float64)
    cps = np.zeros(200, bool)
    cps[100] = True
    perfect = np.zeros(200, bool)
    perfect[100:] = True
    assert nab_normalise(nab_counts(ts, cps, perfect, 60.0)) == pytest.approx([100, 100, 100])
    none = np.zeros(200, bool)
    assert nab_normalise(nab_counts(ts, cps, none, 60.0)) == pytest.approx([0, 0, 0])
    # detection at the end of the window earns A_fp; one extra false onset costs A_fp again
    late = np.zeros(200, bool)
    late[160:] = True
    late[10] = True
    counts = nab_counts(ts, cps, late, 60.0)
    std = NAB_PROFILES[0]
    assert counts[0, 0] == pytest.approx(std.a_fp + std.a_fp)
    expected = 100 * (2 * std.a_fp - std.a_fn) / (std.a_tp - std.a_fn)
    assert nab_normalise(counts)[0] == pytest.approx(expected)


def test_nab_midway_detection_scores_between_tp_and_fp() -> None:
    ts = np.arange(200, dtype=np.float64)
    cps = np.zeros(200, bool)
    cps[100] = True
    mid = np.zeros(200, bool)
    mid[130:] = True
    std = NAB_PROFILES[0]
    assert nab_counts(ts, cps, mid, 60.0)[0, 0] == pytest.approx((std.a_tp + std.a_fp) / 2)
