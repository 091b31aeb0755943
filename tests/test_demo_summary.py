"""The demo's summary maths: baselines, imputation error by gap kind, detection, latency, text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from gapwatch.demo.inputs import KIND_CHANNEL, KIND_DEVICE, KIND_DROP
from gapwatch.demo.render import DeviceTrace
from gapwatch.demo.summary import (
    DemoSummary,
    Outcome,
    detection,
    imputation_rows,
    latency,
    linear_fill,
    locf,
    render_text,
    summary_pairs,
)

NAN = math.nan


def trace(
    values: list[list[float]],
    imputed: list[list[bool]],
    truth: list[list[float]] | None = None,
    labels: Sequence[float] | None = None,
    anomaly: list[bool] | None = None,
) -> DeviceTrace:
    v = np.array(values, dtype=np.float64)
    t = len(v)
    return DeviceTrace(
        device="d",
        ts_ms=np.arange(t, dtype=np.int64) * 1000,
        channels=tuple(f"c{i}" for i in range(v.shape[1])),
        values=v,
        imputed=np.array(imputed, dtype=bool),
        sigma=np.where(np.array(imputed), 0.1, np.nan),
        score=np.zeros(t),
        threshold=np.ones(t),
        anomaly=np.zeros(t, bool) if anomaly is None else np.array(anomaly),
        truth=None if truth is None else np.array(truth, dtype=np.float64),
        labels=None if labels is None else np.array(labels, dtype=np.float64),
    )


def test_locf_carries_the_last_observation_and_is_nan_before_the_first() -> None:
    values = np.array([[NAN, 1.0], [2.0, NAN], [NAN, NAN], [5.0, 3.0]])
    observed = np.isfinite(values)
    out = locf(values, observed)
    np.testing.assert_array_equal(out[:, 0], [NAN, 2.0, 2.0, 5.0])
    np.testing.assert_array_equal(out[:, 1], [1.0, 1.0, 1.0, 3.0])


def test_locf_ignores_values_that_are_not_marked_observed() -> None:
    values = np.array([[1.0], [9.0], [3.0]])  # the 9 is an imputed value, not an observation
    out = locf(values, np.array([[True], [False], [True]]))
    np.testing.assert_array_equal(out[:, 0], [1.0, 1.0, 3.0])


def test_linear_fill_interpolates_in_time_and_holds_the_ends() -> None:
    ts = np.array([0, 1000, 3000, 4000], dtype=np.int64)
    values = np.array([[NAN], [2.0], [NAN], [6.0]])
    out = linear_fill(ts, values, np.isfinite(values))
    np.testing.assert_allclose(out[:, 0], [2.0, 2.0, 14.0 / 3.0, 6.0])


def test_imputation_rows_score_each_gap_kind_in_z_units() -> None:
    # channel 0: observed 1, then two imputed entries whose truths are 3 and 5.
    tr = trace(
        values=[[1.0], [3.0], [4.0], [5.0]],
        imputed=[[False], [True], [True], [False]],
        truth=[[NAN], [3.0], [5.0], [NAN]],
    )
    kinds = np.array([[0], [KIND_DROP], [KIND_CHANNEL], [0]], dtype=np.int8)
    rows = {r.kind: r for r in imputation_rows([Outcome(tr, kinds, np.array([2.0]))])}
    # VAE errors 0 and 1, LOCF (carries 1) errors 2 and 4, linear (1 -> 5) errors 0 and 2;
    # divided by the scale 2.
    assert rows["all"].entries == 2
    assert rows["all"].vae == pytest.approx(0.25)
    assert rows["all"].locf == pytest.approx(1.5)
    assert rows["all"].linear == pytest.approx(0.5)
    assert rows["random drops"].entries == 1 and rows["random drops"].vae == pytest.approx(0.0)
    assert rows["channel silent"].locf == pytest.approx(2.0)
    assert rows["device silent"].entries == 0 and math.isnan(rows["device silent"].vae)


def test_imputation_rows_skip_entries_without_truth_or_without_a_baseline() -> None:
    tr = trace(
        values=[[7.0], [1.0], [2.0]],
        imputed=[[True], [False], [True]],
        truth=[[7.5], [NAN], [NAN]],  # first: no LOCF yet; last: imputed but nothing withheld
    )
    kinds = np.array([[KIND_DEVICE], [0], [0]], dtype=np.int8)
    rows = imputation_rows([Outcome(tr, kinds, np.array([1.0]))])
    assert rows[0].entries == 0


def test_detection_counts_labelled_ticks_and_delays() -> None:
    labels = [0, 0, 1, 1, 1, 1, NAN, 0, 1, 1]
    flags = [True, False, False, False, True, True, True, False, False, False]
    d = detection([trace([[0.0]] * 10, [[False]] * 10, labels=labels, anomaly=flags)])
    assert d is not None
    assert d.labelled_ticks == 9  # the NaN-labelled tick is not counted
    assert (d.counts.tp, d.counts.fp, d.counts.fn, d.counts.tn) == (2, 1, 4, 2)
    assert d.segments == 2 and d.detected == 1
    assert d.mean_delay_s == pytest.approx(2.0)  # segment starts at t=2 s, first alarm at t=4 s


def test_detection_leaves_out_warmup_ticks() -> None:
    labels = [0, 0, 0, 1, 1, 0]
    flags = [False, False, False, True, False, True]
    base = trace([[0.0]] * 6, [[False]] * 6, labels=labels, anomaly=flags)
    warm = replace(base, extra={"warmup": np.array([True, True, True, False, False, False])})
    d_all, d_warm = detection([base]), detection([warm])
    assert d_all is not None and d_warm is not None
    assert d_all.labelled_ticks == 6 and d_warm.labelled_ticks == 3
    assert d_warm.counts.tn == 0 and d_warm.counts.fp == 1
    assert d_warm.counts.far == pytest.approx(1.0) and d_all.counts.far == pytest.approx(0.25)


def test_detection_is_none_without_labels() -> None:
    assert detection([trace([[0.0]], [[False]])]) is None


def test_latency_quantiles_ignore_missing_samples() -> None:
    lat = latency(np.array([0.1] * 98 + [1.0, NAN, 5.0]), resolution_s=0.2)
    assert lat is not None
    assert lat.samples == 100
    assert lat.p50_s == pytest.approx(0.1)
    assert lat.p99_s > 0.9
    assert latency(np.array([NAN]), 0.2) is None


def test_render_text_names_the_numbers() -> None:
    tr = trace([[1.0], [3.0]], [[False], [True]], truth=[[NAN], [3.0]])
    kinds = np.array([[0], [KIND_DROP]], dtype=np.int8)
    outcome = Outcome(tr, kinds, np.array([1.0]))
    s = DemoSummary(
        mode="online",
        model="skab/1",
        devices=1,
        messages=2,
        readings=3,
        ticks=1234,
        scored_ticks=1200,
        imputed_entries=56,
        anomaly_ticks=7,
        imputation=imputation_rows([outcome]),
        detection=None,
        latency=latency(np.array([0.5, 0.7]), 0.2),
        throughput_ticks_s=99.6,
        seconds=12.0,
        counts_from="InfluxQL on database x",
        notes=("a note",),
        received=2,
    )
    text = render_text(s, [("report", "r.html")])
    assert "1,234 stored" in text and "InfluxQL on database x" in text
    assert "56 entries" in text and "MAE 0.000 z vs LOCF 2.000" in text
    assert "7 ticks (no labels" in text
    assert "p50 0.60 s" in text
    assert "100 ticks/s" in text
    assert "the agent received 2" in text
    assert text.rstrip().endswith("note: a note")
    assert ("report", "r.html") not in summary_pairs(s)
