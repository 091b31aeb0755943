"""edge.records: the agent's fast record encoder writes exactly what ScoredTick.encode writes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.bundle import FORMAT_VERSION, INPUT_NAMES, OUTPUT_NAMES, Channel, Manifest, ThresholdSpec
from edge.records import encode_scored, scored_tick
from edge.schema import ScoredTick
from edge.scorer import TickOutput

CHANNELS = ("Pressure", "Current", "Température")


def manifest() -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name="skab",
        version="20261125T120000",
        created_at="2026-01-01T00:00:00Z",
        channels=tuple(Channel(c, "", 1.0, 2.0) for c in CHANNELS),
        tick_seconds=1.0,
        window=4,
        max_gap_ticks=3,
        backfill_delay=1,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test",
        threshold=ThresholdSpec(2.5, 2.0, 0.3, 0.01),
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer={},
    )


def outputs(seed: int) -> list[TickOutput]:
    rng = np.random.default_rng(seed)
    out = []
    specials = [math.nan, math.inf, -math.inf, 1e-7, 2.5e-5, 1e22, -0.0]
    for k in range(300):
        values = rng.normal(0, 10.0 ** rng.integers(-6, 7), len(CHANNELS))
        imputed = rng.random(len(CHANNELS)) < 0.4
        sigma = np.where(imputed, np.abs(rng.normal(0, 1, len(CHANNELS))), np.nan)
        if k % 5 == 0:
            values[rng.integers(len(CHANNELS))] = specials[k % len(specials)]
            sigma[rng.integers(len(CHANNELS))] = specials[(k + 1) % len(specials)]
        score = None if k % 7 == 0 else float(rng.normal(0, 3))
        out.append(
            TickOutput(
                ts_ms=1_700_000_000_000 + 1000 * k,
                values=values,
                imputed=imputed,
                sigma=sigma,
                score=math.nan if k % 11 == 0 else score,
                contributions=values,
                smoothed=None if k % 13 == 0 else float(rng.normal()),
                threshold=2.5,
                anomaly=bool(k % 3 == 0),
                top_channels=tuple(CHANNELS[: k % 3]),
                revision=k % 2,
                warmup=bool(k % 4 == 0),
            )
        )
    return out


@pytest.mark.parametrize("received_ms", [None, 1_700_000_000_020])
def test_encode_scored_writes_the_same_bytes_as_the_dataclass(received_ms: int | None) -> None:
    m = manifest()
    for out in outputs(0):
        fast = encode_scored("lab", "pump-ü", m, out, received_ms)
        assert fast == scored_tick("lab", "pump-ü", m, out, received_ms).encode()
        tick = ScoredTick.decode(fast)
        assert tick.revision == out.revision and tick.model == "skab"
        assert tick.received_ms == (received_ms if out.revision == 0 else None)
