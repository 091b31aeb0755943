"""Score a whole recorded series the way a streaming device would (the agent's batch twin).

:func:`score_series` drives one :class:`~edge.scorer.DeviceScorer` over a series [T, C] with
batched model calls and gathers every tick's outputs into a :class:`SeriesResult`; it is what
``gapwatch score``, calibration, evaluation, retraining and the offline demo run, so each gives
what a deployed agent gives on the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from edge.errors import InputError
from edge.scorer import DeviceScorer, ModelLike

__all__ = ["SeriesResult", "score_series"]


@dataclass(frozen=True)
class SeriesResult:
    """:func:`score_series` output, one row per input tick."""

    channels: tuple[str, ...]
    ts_ms: NDArray[np.int64]  # [T]
    values: NDArray[np.float64]  # [T, C] original units, observed or imputed
    imputed: NDArray[np.bool_]  # [T, C]
    sigma: NDArray[np.float64]  # [T, C] NaN where observed
    score: NDArray[np.float64]  # [T] NaN where nothing observed
    smoothed: NDArray[np.float64]  # [T]
    threshold: NDArray[np.float64]  # [T] the ``on`` threshold in force
    anomaly: NDArray[np.bool_]  # [T]
    contributions: NDArray[np.float64]  # [T, C]
    warmup: NDArray[np.bool_]  # [T]
    top_channels: list[tuple[str, ...]]
    backfilled: NDArray[np.bool_]  # [T] values come from the back-fill revision


def score_series(
    bundle: ModelLike,
    values: NDArray[np.float64],
    ts_ms: NDArray[np.int64],
    *,
    mode: Literal["causal", "backfill"] = "causal",
    warmup: int = 0,
    rescale: bool = False,
    batch: int = 64,
    warmup_margin: float | None = None,
    target_false_alarm_rate: float | None = None,
    rescale_scale_weight: float | None = None,
) -> SeriesResult:
    """Score a whole series [T, C] (grid ticks in order) the way a streaming device would.

    Drives one :class:`DeviceScorer` with batched model calls. ``mode="backfill"`` reports
    for each tick the back-fill revision where one exists (the last ``backfill_delay`` ticks
    keep their causal imputation); scores and alarms are causal in both modes.
    """
    if mode not in ("causal", "backfill"):
        raise InputError(f"mode must be 'causal' or 'backfill', got {mode!r}")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    manifest = bundle.manifest
    vals = np.asarray(values, dtype=np.float64)
    ts = np.asarray(ts_ms, dtype=np.int64)
    n_ch = len(manifest.channels)
    if vals.ndim != 2 or vals.shape[1] != n_ch or vals.shape[0] != ts.shape[0]:
        raise InputError(f"values must be [T, {n_ch}] with T = len(ts_ms), got {vals.shape}")
    t_len = ts.shape[0]
    scorer = DeviceScorer(
        manifest,
        warmup_ticks=warmup,
        rescale=rescale,
        warmup_margin=warmup_margin,
        rescale_scale_weight=rescale_scale_weight,
        target_false_alarm_rate=target_false_alarm_rate,
    )
    res = {
        "values": np.full((t_len, n_ch), np.nan),
        "imputed": np.zeros((t_len, n_ch), dtype=bool),
        "sigma": np.full((t_len, n_ch), np.nan),
        "score": np.full(t_len, np.nan),
        "smoothed": np.full(t_len, np.nan),
        "threshold": np.full(t_len, np.nan),
        "anomaly": np.zeros(t_len, dtype=bool),
        "contributions": np.full((t_len, n_ch), np.nan),
        "warmup": np.zeros(t_len, dtype=bool),
        "backfilled": np.zeros(t_len, dtype=bool),
    }
    top: list[tuple[str, ...]] = [() for _ in range(t_len)]
    index = {int(t): i for i, t in enumerate(ts)}
    start = 0
    while start < t_len:
        end = min(t_len, start + batch)
        if rescale and start < warmup < end:
            end = warmup  # the warm-up's last tick closes its batch
        xs, masks = zip(
            *(scorer.prepare(int(ts[i]), vals[i]) for i in range(start, end)), strict=True
        )
        mean, logvar = bundle.run(np.stack(xs), np.stack(masks))
        for k in range(end - start):
            for out in scorer.finish(mean[k], logvar[k], bundle.run):
                i = index[out.ts_ms]
                if out.revision == 0:
                    res["score"][i] = np.nan if out.score is None else out.score
                    res["smoothed"][i] = np.nan if out.smoothed is None else out.smoothed
                    res["threshold"][i] = out.threshold
                    res["anomaly"][i] = out.anomaly
                    res["contributions"][i] = out.contributions
                    res["warmup"][i] = out.warmup
                    top[i] = out.top_channels
                if out.revision == 0 or mode == "backfill":
                    res["values"][i] = out.values
                    res["imputed"][i] = out.imputed
                    res["sigma"][i] = out.sigma
                    res["backfilled"][i] = out.revision == 1
        start = end
    return SeriesResult(channels=manifest.channel_names, ts_ms=ts, top_channels=top, **res)
