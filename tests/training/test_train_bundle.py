"""train_bundle end to end on real SKAB data: what it writes, how edge reads and runs it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.scorer import DeviceScorer
from edge.series import score_series
from training.data import Series, load_series
from training.errors import DataError, TrainingError
from training.train import TrainConfig
from training.train_bundle import BundleConfig, default_version, train_bundle


def test_manifest_describes_the_training(
    skab_small_bundle: Path, skab_normal_small: Series
) -> None:
    bundle = load_bundle(skab_small_bundle)
    m = bundle.manifest
    assert (m.name, m.version) == ("skab-small", "1")
    assert m.channel_names == skab_normal_small.channels
    assert m.tick_seconds == 1.0 and m.window == 16
    assert m.backfill_delay == 4 and m.max_gap_ticks == 16  # window // 4, window
    assert m.opset == 18 and "negative log-likelihood" in m.score
    center = np.nanmedian(skab_normal_small.values[:1600], axis=0)
    np.testing.assert_allclose(m.center, center)
    assert all(c.scale > 0 for c in m.channels)
    assert np.isfinite(m.threshold.on) and m.threshold.off <= m.threshold.on
    assert m.threshold.target_false_alarm_rate == 0.01
    assert m.training["seed"] == 7 and m.training["hyperparameters"]["epochs"] == 2
    assert m.training["train_ticks"] == 1600 and m.training["heldout_ticks"] == 400
    assert m.training["onnx_parity_max_abs_diff"] <= 1e-4
    assert m.training["time_range"][0].startswith("2020-02-08T13:30:47")
    assert set(m.producer) >= {"torch", "onnx", "onnxruntime", "numpy", "gapwatch"}
    imputation = m.evaluation["imputation_mae_scaled"]
    assert set(imputation) == {"random_20pct", "channel_silent_8", "device_silent_8"}
    for row in imputation.values():
        assert row["vae_causal"] > 0 and row["locf"] > 0 and row["linear_interpolation"] > 0
    assert np.isfinite(m.evaluation["heldout_nll_per_entry"])


def test_heldout_false_alarm_rate_is_near_target(
    skab_small_bundle: Path, skab_normal_small: Series
) -> None:
    bundle = load_bundle(skab_small_bundle)
    result = score_series(bundle, skab_normal_small.values, skab_normal_small.ts_ms)
    assert result.anomaly[1600:].mean() <= 0.05  # calibrated at 1 % on these very ticks


def test_streaming_equals_batch_on_the_onnx_model(
    skab_small_bundle: Path, skab_normal_small: Series
) -> None:
    bundle = load_bundle(skab_small_bundle)
    part = skab_normal_small.slice(0, 300)
    values = part.values.copy()
    values[200, 3] += 50 * bundle.manifest.channels[3].scale  # an obvious spike
    batch = score_series(bundle, values, part.ts_ms, warmup=100, rescale=True, batch=64)
    scorer = DeviceScorer(bundle.manifest, warmup_ticks=100, rescale=True)
    causal = []
    for t, row in zip(part.ts_ms, values, strict=True):
        x, mask = scorer.prepare(int(t), row)
        mean, logvar = bundle.run(x[None], mask[None])
        causal += [o for o in scorer.finish(mean[0], logvar[0], bundle.run) if o.revision == 0]
    scores = np.array([np.nan if o.score is None else o.score for o in causal])
    np.testing.assert_allclose(batch.score, scores, rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(batch.values, [o.values for o in causal], rtol=1e-6)
    assert batch.anomaly.tolist() == [o.anomaly for o in causal]
    assert batch.top_channels[200][0] == bundle.manifest.channel_names[3]


def test_same_seed_same_model_other_seed_other_model(
    skab_normal_small: Series, skab_small_train: TrainConfig, tmp_path: Path
) -> None:
    part = skab_normal_small.slice(0, 600)
    tc = replace(skab_small_train, epochs=1)
    paths = [
        train_bundle(
            [part], tmp_path, BundleConfig(train=replace(tc, seed=s), version=v, progress=False)
        )
        for s, v in ((11, "a"), (11, "b"), (12, "c"))
    ]
    a, b, c = (load_bundle(p) for p in paths)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 16, 8)).astype(np.float32)
    mask = (rng.random(x.shape) > 0.2).astype(np.float32)
    out_a, out_b, out_c = (bundle.run(x, mask) for bundle in (a, b, c))
    np.testing.assert_array_equal(out_a[0], out_b[0])
    np.testing.assert_array_equal(out_a[1], out_b[1])
    assert not np.allclose(out_a[0], out_c[0])
    assert a.manifest.threshold == b.manifest.threshold


def test_labelled_anomalies_are_not_trained_on(
    skab_dir: Path, skab_small_train: TrainConfig, tmp_path: Path
) -> None:
    (s,) = load_series([skab_dir / "other" / "1.csv"])
    tc = replace(skab_small_train, epochs=1)
    path = train_bundle([s], tmp_path, BundleConfig(train=tc, version="1", progress=False))
    training = json.loads((path / "manifest.json").read_text())["training"]
    assert training["excluded_anomalous_ticks"] == int(s.anomalous.sum()) > 0
    train_part = s.slice(0, training["train_ticks"])
    w = tc.window
    possible = len(train_part) - w + 1
    with_anomaly = sum(train_part.anomalous[i : i + w].any() for i in range(possible))
    assert training["train_windows"] <= possible - with_anomaly


def test_default_version_sorts_by_time_and_name_comes_from_the_file() -> None:
    early = default_version(datetime(2026, 11, 25, 9, 5, tzinfo=UTC))
    late = default_version(datetime(2026, 11, 25, 14, 30, tzinfo=UTC))
    assert early == "20261125T090500Z" and early < late


def test_bad_configuration_is_refused(skab_normal_small: Series, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="holdout"):
        train_bundle([skab_normal_small], tmp_path, BundleConfig(holdout=1.0))
    with pytest.raises(TrainingError, match="backfill delay"):
        train_bundle([skab_normal_small], tmp_path, BundleConfig(backfill_delay=32))
    other = replace(skab_normal_small, channels=tuple(reversed(skab_normal_small.channels)))
    with pytest.raises(DataError, match="differ"):
        train_bundle([skab_normal_small, other], tmp_path, BundleConfig())
