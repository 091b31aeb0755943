"""Scoring semantics of edge.scorer, with a numpy model implementing the same ``run`` contract.

``NeighbourModel`` decodes each entry as the mean of its observed neighbours in time (t-1,
t+1) with unit variance, so causal and back-fill imputations differ in a predictable way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edge.bundle import FORMAT_VERSION, INPUT_NAMES, OUTPUT_NAMES, Channel, Manifest, ThresholdSpec
from edge.errors import InputError
from edge.scorer import DeviceScorer, fit_scaling, model_inputs
from edge.series import score_series

CHANNELS = ("a", "b", "c", "d")
TICK_MS = 1000
T0 = 1_700_000_000_000


def make_manifest(
    *,
    window: int = 8,
    backfill_delay: int = 2,
    max_gap_ticks: int = 8,
    on: float = 5.0,
    off: float = 3.0,
    alpha: float = 1.0,
    center: float = 10.0,
    scale: float = 2.0,
) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name="fake",
        version="1",
        created_at="2026-01-01T00:00:00Z",
        channels=tuple(Channel(c, "", center, scale) for c in CHANNELS),
        tick_seconds=TICK_MS / 1000,
        window=window,
        max_gap_ticks=max_gap_ticks,
        backfill_delay=backfill_delay,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test",
        threshold=ThresholdSpec(on, off, alpha, 0.05),
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer={},
    )


class NeighbourModel:
    """Implements edge.scorer.ModelLike: mean = mean of observed neighbours, logvar = 0."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self.calls = 0

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def run(self, x: NDArray[np.float32], mask: NDArray[np.float32]) -> tuple[Any, Any]:
        self.calls += 1
        xm = x * mask
        total = np.zeros_like(x)
        count = np.zeros_like(x)
        total[:, 1:] += xm[:, :-1]
        count[:, 1:] += mask[:, :-1]
        total[:, :-1] += xm[:, 1:]
        count[:, :-1] += mask[:, 1:]
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        return mean.astype(np.float32), np.zeros_like(x)


def normal_series(n: int, seed: int = 0) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    ts = T0 + TICK_MS * np.arange(n, dtype=np.int64)
    values = 10.0 + 2.0 * 0.3 * rng.normal(size=(n, len(CHANNELS)))
    return ts, values


def stream(
    scorer: DeviceScorer, model: NeighbourModel, ts: Any, values: Any, *, revisions: bool = False
) -> list[Any]:
    """Tick by tick, one model call each; causal outputs only unless ``revisions``."""
    outs = []
    for t, row in zip(ts, values, strict=True):
        x, mask = scorer.prepare(int(t), row)
        mean, logvar = model.run(x[None], mask[None])
        outs.extend(scorer.finish(mean[0], logvar[0], model.run))
    return outs if revisions else [o for o in outs if o.revision == 0]


def test_model_inputs_scale_and_zero_fill() -> None:
    window = np.array([[12.0, np.nan], [8.0, 10.0]])
    x, mask = model_inputs(window, np.array([10.0, 10.0]), np.array([2.0, 4.0]))
    assert x.dtype == np.float32 and mask.dtype == np.float32
    np.testing.assert_allclose(x, [[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(mask, [[1, 0], [1, 1]])


def test_fit_scaling_is_robust_and_falls_back() -> None:
    values = np.column_stack([np.arange(101.0), np.full(101, 3.0), np.full(101, np.nan)])
    center, scale = fit_scaling(values, np.array([0, 0, 7.0]), np.array([1, 1, 9.0]))
    assert center[0] == 50.0 and scale[0] == pytest.approx(50.0 / 1.349)
    assert center[1] == 3.0 and scale[1] == 1.0  # no spread: fallback scale
    assert center[2] == 7.0 and scale[2] == 9.0  # no observation: fallback


def test_gap_does_not_raise_the_score() -> None:
    manifest = make_manifest()
    ts, values = normal_series(60)
    gappy = values.copy()
    gappy[30, [0, 2]] = np.nan
    gappy[40, :] = np.nan
    outs = stream(DeviceScorer(manifest), NeighbourModel(manifest), ts, gappy)
    scores = np.array([np.nan if o.score is None else o.score for o in outs])
    normal = np.delete(scores, [30, 31, 39, 40, 41])
    assert scores[30] <= np.nanmax(normal)
    assert outs[40].score is None
    assert outs[40].smoothed == outs[39].smoothed  # a silent tick keeps the smoothed score
    assert not any(o.anomaly for o in outs)
    assert np.isnan(outs[30].contributions[[0, 2]]).all()


def test_spike_raises_the_score_and_names_the_channel() -> None:
    manifest = make_manifest()
    ts, values = normal_series(40)
    values[25, 2] += 2.0 * 12  # +12 σ of the scaled channel c
    outs = stream(DeviceScorer(manifest), NeighbourModel(manifest), ts, values)
    spike = outs[25]
    assert spike.score is not None and spike.score > manifest.threshold.on
    assert int(np.nanargmax(spike.contributions)) == 2
    assert spike.top_channels[0] == "c"
    assert spike.anomaly and not outs[24].anomaly
    assert max(o.score or 0.0 for o in outs[:25]) < manifest.threshold.on


def test_causal_imputation_uses_decoded_mean_and_sigma() -> None:
    manifest = make_manifest(center=10.0, scale=2.0)
    ts, values = normal_series(12)
    values[11, 1] = np.nan
    outs = stream(DeviceScorer(manifest), NeighbourModel(manifest), ts, values)
    last = outs[-1]
    assert last.revision == 0 and last.ts_ms == ts[11]
    assert last.imputed.tolist() == [False, True, False, False]
    # causal: the only observed neighbour of the newest tick is the previous tick
    assert last.values[1] == pytest.approx(values[10, 1])
    assert last.sigma[1] == pytest.approx(2.0)  # exp(0 / 2) * scale
    assert np.isnan(last.sigma[[0, 2, 3]]).all()
    np.testing.assert_array_equal(last.values[[0, 2, 3]], values[11, [0, 2, 3]])


def test_backfill_revision_reimputes_with_later_ticks() -> None:
    manifest = make_manifest(backfill_delay=2)
    ts, values = normal_series(20)
    values[10, 3] = np.nan
    scorer = DeviceScorer(manifest)
    model = NeighbourModel(manifest)
    per_tick = []
    for t, row in zip(ts, values, strict=True):
        x, mask = scorer.prepare(int(t), row)
        mean, logvar = model.run(x[None], mask[None])
        per_tick.append(scorer.finish(mean[0], logvar[0], model.run))
    assert [len(o) for o in per_tick].count(2) == 1
    causal, revised = per_tick[10][0], per_tick[12][1]
    assert per_tick[12][0].ts_ms == ts[12] and per_tick[12][0].revision == 0
    assert revised.ts_ms == ts[10] and revised.revision == 1
    assert causal.values[3] == pytest.approx(values[9, 3])
    assert revised.values[3] == pytest.approx((values[9, 3] + values[11, 3]) / 2)
    assert revised.score == causal.score and revised.anomaly == causal.anomaly
    np.testing.assert_array_equal(revised.values[:3], values[10, :3])


def test_device_offline_after_max_gap() -> None:
    manifest = make_manifest(max_gap_ticks=3)
    ts, values = normal_series(20)
    values[5:12] = np.nan
    outs = stream(DeviceScorer(manifest), NeighbourModel(manifest), ts, values)
    assert all(outs[i].imputed.all() for i in range(5, 8))
    for i in range(8, 12):
        assert not outs[i].imputed.any() and np.isnan(outs[i].values).all()
    assert not outs[12].imputed.any() and np.isfinite(outs[12].values).all()


def test_skipped_ticks_are_missing_in_the_window() -> None:
    manifest = make_manifest()
    scorer = DeviceScorer(manifest)
    ts, values = normal_series(5)
    scorer.prepare(int(ts[0]), values[0])
    _, mask = scorer.prepare(int(ts[0] + 3 * TICK_MS), values[3])
    assert mask[-1].all() and not mask[-3:-1].any() and mask[-4].all()


def test_warmup_suppresses_alarms_then_recalibrates_and_rescales() -> None:
    manifest = make_manifest(on=0.5, off=0.4, alpha=0.3)  # far too low: would alarm at once
    ts, values = normal_series(200)
    values = values * 3.0 + 50.0  # another operating point than the manifest's scaling
    model = NeighbourModel(manifest)
    scorer = DeviceScorer(manifest, warmup_ticks=100, rescale=True)
    outs = stream(scorer, model, ts, values)
    assert all(o.warmup and not o.anomaly for o in outs[:100])
    assert not any(o.warmup for o in outs[100:])
    np.testing.assert_allclose(scorer.center, np.median(values[:100], axis=0))
    assert scorer.threshold.on > manifest.threshold.on
    assert scorer.threshold.target_false_alarm_rate == manifest.threshold.target_false_alarm_rate
    rate = np.mean([o.anomaly for o in outs[100:]])
    assert rate < 0.2
    assert outs[150].threshold == scorer.threshold.on


def test_streaming_equals_score_series() -> None:
    manifest = make_manifest(backfill_delay=3, alpha=0.2)
    ts, values = normal_series(150, seed=3)
    rng = np.random.default_rng(1)
    values[rng.random(values.shape) < 0.15] = np.nan
    values[60:66] = np.nan
    values[90, 1] += 30.0
    model = NeighbourModel(manifest)
    for mode in ("causal", "backfill"):
        result = score_series(
            model,
            values,
            ts,
            mode=mode,
            warmup=50,
            rescale=True,
            batch=16,
        )
        scorer = DeviceScorer(manifest, warmup_ticks=50, rescale=True)
        outs = stream(scorer, model, ts, values, revisions=True)
        causal = [o for o in outs if o.revision == 0]
        assert [o.ts_ms for o in causal] == ts.tolist()
        np.testing.assert_array_equal(
            result.score, [np.nan if o.score is None else o.score for o in causal]
        )
        np.testing.assert_array_equal(result.anomaly, [o.anomaly for o in causal])
        np.testing.assert_array_equal(result.threshold, [o.threshold for o in causal])
        assert result.top_channels == [o.top_channels for o in causal]
        expected = {o.ts_ms: o for o in causal}
        if mode == "backfill":
            expected.update({o.ts_ms: o for o in outs if o.revision == 1})
        np.testing.assert_array_equal(result.values, [expected[int(t)].values for t in ts])
        np.testing.assert_array_equal(result.sigma, [expected[int(t)].sigma for t in ts])
        assert result.backfilled.any() == (mode == "backfill")


def test_history_seeds_a_new_scorer_after_a_model_swap() -> None:
    manifest = make_manifest()
    ts, values = normal_series(30)
    values[29, 0] = np.nan
    model = NeighbourModel(manifest)
    old = DeviceScorer(manifest)
    stream(old, model, ts[:29], values[:29])
    recent_ts, recent_values = old.recent()
    assert len(recent_ts) == manifest.window and recent_ts[-1] == ts[28]
    new = DeviceScorer(manifest, history=(recent_ts, recent_values))
    a = stream(old, model, ts[29:], values[29:])[0]
    b = stream(new, model, ts[29:], values[29:])[0]
    np.testing.assert_array_equal(a.values, b.values)
    assert a.score == b.score


def test_bad_input_is_refused_with_a_clear_error() -> None:
    manifest = make_manifest()
    scorer = DeviceScorer(manifest)
    model = NeighbourModel(manifest)
    with pytest.raises(InputError, match="4 values"):
        scorer.prepare(T0, np.zeros(3))
    with pytest.raises(InputError, match="without a matching prepare"):
        scorer.finish(np.zeros((8, 4)), np.zeros((8, 4)), model.run)
    scorer.prepare(T0, np.zeros(4))
    with pytest.raises(InputError, match="does not follow"):
        scorer.prepare(T0, np.zeros(4))
    with pytest.raises(InputError, match="does not follow"):
        scorer.prepare(T0 + 1500, np.zeros(4))
    with pytest.raises(InputError, match="must be"):
        scorer.finish(np.zeros((4, 8)), np.zeros((4, 8)), model.run)
    with pytest.raises(InputError, match="mode"):
        score_series(model, np.zeros((3, 4)), T0 + np.arange(3) * 1000, mode="later")  # type: ignore[arg-type]


def test_rescaling_warmup_end_must_be_finished_before_the_next_prepare() -> None:
    manifest = make_manifest()
    scorer = DeviceScorer(manifest, warmup_ticks=2, rescale=True)
    ts, values = normal_series(3)
    scorer.prepare(int(ts[0]), values[0])
    scorer.prepare(int(ts[1]), values[1])
    assert scorer.must_finish_first
    with pytest.raises(InputError, match="warm-up"):
        scorer.prepare(int(ts[2]), values[2])
    assert math.isfinite(scorer.threshold.on)


class WobbleModel:
    """A model whose mean and log-variance vary per entry (row-local: batching cannot matter)."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def run(self, x: NDArray[np.float32], mask: NDArray[np.float32]) -> tuple[Any, Any]:
        mean = 0.8 * x * mask + 0.1 * np.sin(np.arange(x.shape[-1], dtype=np.float32))
        logvar = 0.3 * np.cos(x * 1.7) - 0.2 * mask
        return mean.astype(np.float32), logvar.astype(np.float32)


def test_finish_batch_equals_finish_tick_by_tick_across_interleaved_devices() -> None:
    from dataclasses import replace

    from edge.scorer import finish_batch

    channels = tuple(Channel(f"c{i}", "", 10.0 + i, 1.0 + 0.1 * i) for i in range(9))
    manifest = replace(
        make_manifest(max_gap_ticks=3, alpha=0.3, on=2.0, off=1.5), channels=channels
    )
    model = WobbleModel(manifest)
    rng = np.random.default_rng(7)
    n_dev, n_ticks = 3, 160
    ts = T0 + TICK_MS * np.arange(n_ticks, dtype=np.int64)
    series = []
    for _ in range(n_dev):
        v = 10.0 + rng.normal(0, 1.5, (n_ticks, len(channels)))
        v[rng.random(v.shape) < 0.15] = np.nan
        v[40:46] = np.nan  # silent longer than max_gap_ticks: offline ticks
        v[90:93] += 9.0  # an anomaly, so top channels and alarms appear
        series.append(v)
    kw: dict[str, Any] = {"warmup_ticks": 30, "rescale": True}
    one = [DeviceScorer(manifest, **kw) for _ in range(n_dev)]
    many = [DeviceScorer(manifest, **kw) for _ in range(n_dev)]
    ref: list[Any] = []
    got: list[Any] = []
    start = 0
    for size in [1, 5, 24, 7, 30, 64, 64] * 3:
        end = min(n_ticks, start + size)
        if start < kw["warmup_ticks"] < end:
            end = kw["warmup_ticks"]  # the warm-up's last tick closes its batch
        if start >= end:
            break
        items = [(d, i) for i in range(start, end) for d in range(n_dev)]
        inputs = [many[d].prepare(int(ts[i]), series[d][i]) for d, i in items]
        for d, i in items:
            x, mask = one[d].prepare(int(ts[i]), series[d][i])
            mean, logvar = model.run(x[None], mask[None])
            ref.extend(one[d].finish(mean[0], logvar[0], model.run))
        mean, logvar = model.run(np.stack([x for x, _ in inputs]), np.stack([m for _, m in inputs]))
        for outs in finish_batch(
            [many[d] for d, _ in items], mean, logvar, [model.run] * len(items)
        ):
            got.extend(outs)
        start = end
    assert start == n_ticks
    assert len(got) == len(ref)
    assert any(o.revision == 1 for o in got) and any(o.top_channels for o in got)
    assert any(o.anomaly for o in got) and any(not o.imputed.any() and o.score for o in got)
    for a, b in zip(ref, got, strict=True):
        assert (a.ts_ms, a.revision, a.score, a.smoothed, a.threshold) == (
            b.ts_ms,
            b.revision,
            b.score,
            b.smoothed,
            b.threshold,
        )
        assert (a.anomaly, a.top_channels, a.warmup) == (b.anomaly, b.top_channels, b.warmup)
        for field in ("values", "imputed", "sigma", "contributions"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        observed = ~np.isnan(b.contributions)
        if b.score is not None:  # the score is the plain mean of the observed contributions
            assert b.score == float(np.mean(b.contributions[observed]))


def test_finish_batch_refuses_rows_without_a_prepared_tick() -> None:
    from edge.scorer import finish_batch

    manifest = make_manifest()
    model = NeighbourModel(manifest)
    scorer = DeviceScorer(manifest)
    x, mask = scorer.prepare(T0, np.full(4, 10.0))
    mean, logvar = model.run(np.stack([x, x]), np.stack([mask, mask]))
    with pytest.raises(InputError, match="without a matching prepare"):
        finish_batch([scorer, scorer], mean, logvar, [model.run, model.run])
    assert len(finish_batch([scorer], mean[:1], logvar[:1], [model.run])[0]) == 1


class ColdStartModel:
    """Decodes z = 0 with unit variance, except far off while the window is not yet full
    (a row with nothing observed): the cold start of a device with no history."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def run(self, x: Any, mask: Any) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        cold = (np.asarray(mask).sum(axis=2) == 0).any(axis=1)  # [B]
        mean = np.zeros_like(x) + 8.0 * cold[:, None, None]
        return mean.astype(np.float32), np.zeros_like(x, dtype=np.float32)


@pytest.mark.parametrize("rescale", [False, True])
def test_warmup_calibration_ignores_cold_start_ticks(rescale: bool) -> None:
    manifest = make_manifest(window=8, on=0.5, off=0.4, alpha=0.3)
    ts, values = normal_series(120, seed=4)
    model = ColdStartModel(manifest)
    scorer = DeviceScorer(manifest, warmup_ticks=60, rescale=rescale)
    outs = stream(scorer, model, ts, values)
    cold = [o.score for o in outs[:7]]
    warm = [o.score for o in outs[7:60]]
    assert min(cold) > 10 * max(warm)  # the first 7 windows are not full: far-off scores
    # the threshold comes from the device's normal scores, not from the cold start
    assert scorer.threshold.on < 3 * max(warm)
    assert np.mean([o.anomaly for o in outs[60:]]) < 0.25
