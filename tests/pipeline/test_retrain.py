"""The retrain rule and its evaluation (tiny real ONNX bundles), and one tiny retrain end to end."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.schema import ScoredTick
from edge.signing import generate_private_key, verify_bundle
from pipeline.errors import PipelineError
from pipeline.fakes import FakeInflux
from pipeline.lineproto import LineEncoder
from pipeline.registry import Announcement, Registry
from pipeline.retrain import (
    Evaluation,
    Holdout,
    RetrainSettings,
    Tolerance,
    decide,
    evaluate,
    make_masks,
    retrain,
)

BundleFactory = Callable[..., Path]
T0 = 1_714_521_600_000


def ev(mae: float, far: float, f1: float | None = None, version: str = "x") -> Evaluation:
    return Evaluation(version, mae, {"random_20pct": mae}, far, 1000, f1, None)


def test_first_model_is_promoted() -> None:
    assert decide(ev(0.5, 0.01), None, Tolerance()).promote


def test_worse_beyond_tolerance_is_refused_and_says_why() -> None:
    tol = Tolerance(mae_rel=0.05, far_abs=0.005, f1_abs=0.02)
    champion = ev(0.40, 0.010, 0.80)
    assert decide(ev(0.419, 0.0149, 0.781), champion, tol).promote  # within every tolerance
    refused = decide(ev(0.43, 0.010, 0.80), champion, tol)
    assert not refused.promote
    assert any("imputation MAE 0.4300" in r and r.endswith("worse") for r in refused.reasons)
    assert not decide(ev(0.30, 0.02, 0.80), champion, tol).promote  # false alarms
    assert not decide(ev(0.30, 0.01, 0.70), champion, tol).promote  # F1
    assert decide(ev(0.30, 0.01, None), champion, tol).promote  # no labels: F1 not compared


def test_an_unevaluable_challenger_is_refused() -> None:
    assert not decide(ev(math.nan, 0.0), ev(0.4, 0.0), Tolerance()).promote
    assert not decide(ev(0.4, math.nan), None, Tolerance()).promote


def holdout(devices: int = 2, t_len: int = 200, labels: bool = False) -> Holdout:
    rng = np.random.default_rng(1)
    values = [10.0 + rng.normal(0, 0.5, size=(t_len, 2)) for _ in range(devices)]
    values[0][5:9, 1] = np.nan  # a real gap: never part of a mask
    ts = [T0 + np.arange(t_len, dtype=np.int64) * 1000 for _ in range(devices)]
    lab = [np.arange(t_len) >= t_len - 20 if labels else None for _ in range(devices)]
    return Holdout(("a", "b"), values, ts, lab)


def test_masks_hide_only_observed_entries_and_repeat_with_the_seed() -> None:
    h = holdout()
    masks = make_masks(h, seed=3, outage=6)
    assert set(masks) == {"random_20pct", "channel_silent_6"}
    for kind, per_device in masks.items():
        for values, hide in zip(h.values, per_device, strict=True):
            assert hide.any(), kind
            assert not (hide & np.isnan(values)).any()
    again = make_masks(h, seed=3, outage=6)
    assert all(np.array_equal(a, b) for k in masks for a, b in zip(masks[k], again[k], strict=True))


def test_a_model_that_imputes_worse_scores_worse_on_the_same_masks(
    pipeline_bundle_factory: BundleFactory,
) -> None:
    good = load_bundle(pipeline_bundle_factory("m", "1", shift=0.0))
    bad = load_bundle(pipeline_bundle_factory("m", "2", shift=3.0))
    h = holdout()
    masks = make_masks(h, seed=0)
    e_good, e_bad = evaluate(good, h, masks), evaluate(bad, h, masks)
    # the good model imputes the channel center (10), the bad one 10 + 3 * 2 = 16; the data
    # is N(10, 0.5), so in units of its std the errors are about 0.8 and 12
    assert 0.5 < e_good.imputation_mae < 1.2
    assert 10 < e_bad.imputation_mae < 14
    assert e_good.false_alarm_rate == 0.0  # threshold 50 is never reached
    assert not decide(e_bad, e_good, Tolerance()).promote
    assert decide(e_good, e_bad, Tolerance()).promote


def test_false_alarms_and_f1_are_counted(pipeline_bundle_factory: BundleFactory) -> None:
    jumpy = load_bundle(pipeline_bundle_factory("m", "3", on=1e-6))  # alarms on every tick
    h = holdout(labels=True)
    e = evaluate(jumpy, h, make_masks(h))
    assert e.false_alarm_rate > 0.9
    assert e.f1 is not None and 0 < e.f1 < 0.5
    assert e.missed_alarm_rate is not None and e.missed_alarm_rate < 0.1


def test_missing_channels_are_named(pipeline_bundle_factory: BundleFactory) -> None:
    other = load_bundle(pipeline_bundle_factory("m", "4", channels=("a", "zz")))
    with pytest.raises(PipelineError, match=r"\['zz'\]"):
        evaluate(other, holdout(), make_masks(holdout()))


def test_settings_need_ordered_times() -> None:
    with pytest.raises(PipelineError, match="--from < --holdout-from < --to"):
        RetrainSettings("m", T0, T0 + 10, T0 + 20)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Announcement] = []

    def announce(self, announcement: Announcement) -> None:
        self.sent.append(announcement)


@pytest.mark.slow
def test_retrain_trains_judges_and_promotes_or_keeps(
    tmp_path: Path, pipeline_bundle_factory: BundleFactory
) -> None:
    rng = np.random.default_rng(0)
    enc, influx = LineEncoder(), FakeInflux()
    lines = []
    for dev in ("d1", "d2"):
        for i in range(400):
            a, b = math.sin(i / 10) + rng.normal(0, 0.05), math.cos(i / 10) + rng.normal(0, 0.05)
            tick = ScoredTick(
                site="s", device=dev, ts_ms=T0 + i * 1000, values={"a": a, "b": b}, imputed=(),
                sigma={}, score=0.1, smoothed=0.1, threshold=2.0, anomaly=False, top_channels=(),
                model="m", model_version="0",
            )  # fmt: skip
            lines.append(enc.encode(tick))
    influx.write(b"".join(lines))
    key = generate_private_key()  # promotion signs: agents with trusted keys accept the winner
    registry = Registry(tmp_path / "models", "m", signing_key=key)
    # the champion imputes badly (shift) and alarms on every tick (on): easy to beat
    bad = pipeline_bundle_factory("m", "0", shift=4.0, center=0.0, scale=1.0, on=1e-6)
    champion = registry.publish(bad)
    registry.promote(champion.name)
    recorder = Recorder()
    settings = RetrainSettings(
        name="m", start_ms=T0, end_ms=T0 + 400_000, holdout_from_ms=T0 + 300_000, epochs=2,
        window=8, chunk_ms=60_000,
    )  # fmt: skip
    clock = iter([datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)] * 4)
    outcome = retrain(influx, registry, settings, clock=lambda: next(clock), announcer=recorder)
    assert outcome.decision.promote, outcome.decision.reasons
    assert outcome.champion is not None
    assert outcome.challenger.imputation_mae < outcome.champion.imputation_mae
    assert registry.current() == outcome.version == "20260101T000000Z"
    assert [a.version for a in recorder.sent] == [outcome.version]
    assert load_bundle(registry.dir / outcome.version).manifest.window == 8  # as asked
    assert registry.events()[-1].evaluation["challenger"]["version"] == outcome.version
    verify_bundle(registry.dir / outcome.version, [key.public_key()])

    strict = RetrainSettings(
        name="m", start_ms=T0, end_ms=T0 + 400_000, holdout_from_ms=T0 + 300_000, epochs=1,
        chunk_ms=60_000, tolerance=Tolerance(mae_rel=-0.99),
    )  # fmt: skip
    refused = retrain(influx, registry, strict, clock=lambda: next(clock), announcer=recorder)
    assert not refused.decision.promote
    assert registry.current() == outcome.version
    assert refused.path == registry.dir / ".rejected" / refused.version
    assert load_bundle(refused.path).manifest.window == 8  # the champion's, when not given
    assert len(recorder.sent) == 1
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".retrain-")]


def test_an_empty_period_is_refused_before_any_training(tmp_path: Path) -> None:
    enc, influx = LineEncoder(), FakeInflux()
    tick = ScoredTick(
        site="s", device="d", ts_ms=T0, values={"a": 1.0}, imputed=(), sigma={}, score=0.1,
        smoothed=0.1, threshold=2.0, anomaly=False, top_channels=(), model="m",
        model_version="0",
    )  # fmt: skip
    influx.write(enc.encode(tick))
    settings = RetrainSettings("m", T0, T0 + 400_000, T0 + 300_000, chunk_ms=60_000)
    registry = Registry(tmp_path / "models", "m")
    with pytest.raises(PipelineError, match=r"no readings between .* move --holdout-from"):
        retrain(influx, registry, settings, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    assert not list(registry.root.iterdir())  # the work directory is gone, nothing published
