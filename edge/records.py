"""Scorer output -> the versioned Kafka record (pure): :class:`edge.schema.ScoredTick`.

Values keep the manifest's channel order and original units; ``None`` where a value is NaN
(an offline device's tick); ``sigma`` only for imputed channels. ``received_ms`` is the MQTT
arrival of the tick's newest reading for the causal record (revision 0) and ``None`` for a
back-fill revision, which is computed later from newer ticks.

:func:`encode_scored` is the agent's hot path: it writes the same bytes as
``scored_tick(...).encode()`` without building the intermediate objects (a test checks both).
"""

from __future__ import annotations

import math

from edge.bundle import Manifest
from edge.schema import SCHEMA_VERSION, ScoredTick, encode_scored_dict
from edge.scorer import TickOutput

__all__ = ["encode_scored", "scored_tick"]

_isfinite = math.isfinite


def _channel_fields(
    channels: tuple[str, ...], out: TickOutput
) -> tuple[dict[str, float | None], list[str], dict[str, float]]:
    """``values`` (None where not finite), ``imputed`` channel names and their ``sigma``."""
    flags = out.imputed.tolist()
    values = {
        c: (v if _isfinite(v) else None) for c, v in zip(channels, out.values.tolist(), strict=True)
    }
    if not any(flags):
        return values, [], {}
    imputed = [c for c, f in zip(channels, flags, strict=True) if f]
    sigma = {
        c: s
        for c, s, f in zip(channels, out.sigma.tolist(), flags, strict=True)
        if f and _isfinite(s)
    }
    return values, imputed, sigma


def scored_tick(
    site: str, device: str, manifest: Manifest, out: TickOutput, received_ms: int | None
) -> ScoredTick:
    values, imputed, sigma = _channel_fields(manifest.channel_names, out)
    return ScoredTick(
        site=site,
        device=device,
        ts_ms=out.ts_ms,
        values=values,
        imputed=tuple(imputed),
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


def _finite(v: float | None) -> float | None:
    return None if v is None or not _isfinite(v) else float(v)


def encode_scored(
    site: str, device: str, manifest: Manifest, out: TickOutput, received_ms: int | None
) -> bytes:
    """``scored_tick(site, device, manifest, out, received_ms).encode()``, faster."""
    values, imputed, sigma = _channel_fields(manifest.channel_names, out)
    revision = int(out.revision)
    return encode_scored_dict(
        {
            "schema": SCHEMA_VERSION,
            "site": site,
            "device": device,
            "ts_ms": int(out.ts_ms),
            "values": values,
            "imputed": imputed,
            "sigma": sigma,
            "score": _finite(out.score),
            "smoothed": _finite(out.smoothed),
            "threshold": float(out.threshold),
            "anomaly": bool(out.anomaly),
            "top_channels": list(out.top_channels),
            "model": manifest.name,
            "model_version": manifest.version,
            "revision": revision,
            "warmup": bool(out.warmup),
            "received_ms": None if received_ms is None or revision != 0 else int(received_ms),
        }
    )
