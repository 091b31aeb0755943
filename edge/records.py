"""Scorer output -> the versioned Kafka record (pure): :class:`edge.schema.ScoredTick`.

Values keep the manifest's channel order and original units; ``None`` where a value is NaN
(an offline device's tick); ``sigma`` only for imputed channels. ``received_ms`` is the MQTT
arrival of the tick's newest reading for the causal record (revision 0) and ``None`` for a
back-fill revision, which is computed later from newer ticks.
"""

from __future__ import annotations

import math

from edge.bundle import Manifest
from edge.schema import ScoredTick
from edge.scorer import TickOutput

__all__ = ["scored_tick"]


def scored_tick(
    site: str, device: str, manifest: Manifest, out: TickOutput, received_ms: int | None
) -> ScoredTick:
    channels = manifest.channel_names
    flags = out.imputed.tolist()
    values = {
        c: (v if math.isfinite(v) else None)
        for c, v in zip(channels, out.values.tolist(), strict=True)
    }
    sigma = {
        c: s
        for c, s, f in zip(channels, out.sigma.tolist(), flags, strict=True)
        if f and math.isfinite(s)
    }
    return ScoredTick(
        site=site,
        device=device,
        ts_ms=out.ts_ms,
        values=values,
        imputed=tuple(c for c, f in zip(channels, flags, strict=True) if f),
        sigma=sigma,
        score=out.score,
        smoothed=out.smoothed,
        threshold=out.threshold,
        anomaly=out.anomaly,
        top_channels=out.top_channels,
        model=manifest.name,
        model_version=manifest.version,
        revision=out.revision,
        warmup=out.warmup,
        received_ms=received_ms if out.revision == 0 else None,
    )
