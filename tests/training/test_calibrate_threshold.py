"""The bundle's stored threshold (training.calibrate.calibrate_threshold) is calibrated on
held-out ticks known to be normal: those before each series' first labelled anomaly."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge.bundle import FORMAT_VERSION, INPUT_NAMES, OUTPUT_NAMES, Channel, Manifest, ThresholdSpec
from edge.fakes import CenterModel
from training.calibrate import Holdout, calibrate_threshold

TICK_MS = 1000


def _model() -> CenterModel:
    """Decodes z = 0 with unit variance (score ~ z² / 2) over channels a, b."""
    return CenterModel(
        Manifest(
            format_version=FORMAT_VERSION,
            name="fake",
            version="1",
            created_at="2026-01-01T00:00:00Z",
            channels=tuple(Channel(c, "", 0.0, 1.0) for c in ("a", "b")),
            tick_seconds=TICK_MS / 1000,
            window=4,
            max_gap_ticks=4,
            backfill_delay=0,
            inputs=INPUT_NAMES,
            outputs=OUTPUT_NAMES,
            opset=18,
            score="test",
            threshold=ThresholdSpec(float("inf"), float("inf"), 0.1, 0.01),
            training={},
            evaluation={},
            model_sha256="0" * 64,
            producer={},
        )
    )


def _part(values: NDArray[np.float64], start: int, anomalous: NDArray[np.bool_]) -> Holdout:
    ts = (np.arange(len(values), dtype=np.int64) + 1) * TICK_MS
    return Holdout(values, ts, start, anomalous)


def test_threshold_ignores_what_follows_a_labelled_fault() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(1000, 2))
    faulty = rng.normal(size=(1000, 2))
    fault = np.zeros(1000, dtype=bool)
    fault[600:700] = True
    faulty[600:] += 20.0  # the fault, and a tail that never comes back but is labelled normal
    parts = [_part(clean, 800, np.zeros(1000, dtype=bool)), _part(faulty, 800, fault)]
    spec, used = calibrate_threshold(_model(), parts, 0.01, alpha=0.1, context=16)
    assert used.size == 200  # the clean part's held-out ticks only
    assert spec.on < 5.0  # z ~ N(0, 1): smoothed scores stay near 1.8; the tail scores ~200
    # a series whose held-out part lies wholly after its fault is the only data: used anyway
    alone, used_alone = calibrate_threshold(_model(), parts[1:], 0.01, alpha=0.1, context=16)
    assert used_alone.size == 200 and alone.on > 100.0
