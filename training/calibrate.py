"""Calibration and checks on held-out normal data, run through edge's scorer on the ONNX graph.

A held-out part is the chronologically last ticks of a series (:class:`Holdout`). It is scored
with :func:`edge.series.score_series` starting ``context`` ticks earlier, so windows and the
EWMA are warm when the held-out part begins; only held-out ticks not labelled anomalous count.

- :func:`calibrate_threshold`: on/off at the target false-alarm rate (``edge.threshold``),
  on the held-out ticks *before* each series' first labelled anomaly: what follows a fault is
  not known to be normal (on SKAB, post-fault tails labelled normal score ~100x the normal
  ones and lifted ``on`` from ~0 to ~370). Only when no such tick exists anywhere are all
  unlabelled held-out ticks used;
- :func:`holdout_report`: held-out NLL per observed entry, and imputation MAE (scaled units)
  on artificially hidden held-out entries (random 20 %, one channel silent, whole device
  silent) for the causal VAE vs last observation carried forward, and for the back-fill vs
  linear interpolation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.bundle import ThresholdSpec
from edge.scorer import ModelLike
from edge.series import SeriesResult, score_series
from edge.threshold import calibrate
from training.baselines import linear_interpolation, locf
from training.errors import TrainingError
from training.masks import channel_silence, device_silence, random_points

__all__ = ["Holdout", "calibrate_threshold", "holdout_report"]


@dataclass(frozen=True)
class Holdout:
    """A series and where its held-out part starts."""

    values: NDArray[np.float64]  # [T, C] raw, NaN = missing
    ts_ms: NDArray[np.int64]  # [T]
    start: int  # first held-out tick
    anomalous: NDArray[np.bool_]  # [T] labelled anomalous (excluded from every statistic)


def _score(
    model: ModelLike, part: Holdout, context: int, values: NDArray[np.float64], mode: str
) -> tuple[SeriesResult, int]:
    begin = max(0, part.start - context)
    result = score_series(
        model,
        values[begin:],
        part.ts_ms[begin:],
        mode="backfill" if mode == "backfill" else "causal",
        batch=256,
    )
    return result, part.start - begin


def calibrate_threshold(
    model: ModelLike,
    parts: Sequence[Holdout],
    target_rate: float,
    *,
    alpha: float,
    context: int,
) -> tuple[ThresholdSpec, NDArray[np.float64]]:
    """Threshold at ``target_rate`` on the held-out smoothed scores; also returns those scores.

    Ticks at or after a series' first labelled anomaly are left out (see the module
    docstring), unless that leaves no tick at all.
    """
    before: list[NDArray[np.float64]] = []
    unlabelled: list[NDArray[np.float64]] = []
    for part in parts:
        result, offset = _score(model, part, context, part.values, "causal")
        held = result.smoothed[offset:]
        normal = ~part.anomalous[part.start :]
        unlabelled.append(held[normal])
        first = np.flatnonzero(part.anomalous)
        cut = part.anomalous.size if first.size == 0 else int(first[0])
        before.append(held[: max(0, cut - part.start)])
    kept = [s for s in before if np.isfinite(s).any()]
    pooled = kept if kept else unlabelled
    smoothed = np.concatenate(pooled) if pooled else np.zeros(0)
    try:
        return calibrate(smoothed, target_rate, alpha=alpha), smoothed
    except ValueError as exc:
        raise TrainingError(f"cannot calibrate the threshold on held-out data: {exc}") from exc


MaskMaker = Callable[[tuple[int, int], np.random.Generator], NDArray[np.bool_]]


def _mask_kinds(length: int) -> dict[str, MaskMaker]:
    def stretches(t: int) -> int:
        return max(1, t // (4 * length))

    return {
        "random_20pct": lambda shape, rng: random_points(shape, 0.2, rng),
        f"channel_silent_{length}": lambda shape, rng: channel_silence(
            shape, length, rng, count=stretches(shape[0])
        ),
        f"device_silent_{length}": lambda shape, rng: device_silence(
            shape, length, rng, count=stretches(shape[0])
        ),
    }


def holdout_report(
    model: ModelLike,
    parts: Sequence[Holdout],
    *,
    context: int,
    outage_length: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out NLL and imputation MAE (scaled units) vs LOCF and linear interpolation."""
    manifest = model.manifest
    center, scale = manifest.center, manifest.scale
    nll = []
    for part in parts:
        result, offset = _score(model, part, context, part.values, "causal")
        normal = ~part.anomalous[part.start :]
        scores = result.score[offset:][normal]
        nll.append(scores[np.isfinite(scores)])
    all_nll = np.concatenate(nll) if nll else np.zeros(0)
    report: dict[str, Any] = {
        "heldout_ticks": int(sum(len(p.ts_ms) - p.start for p in parts)),
        "heldout_nll_per_entry": float(np.mean(all_nll)) if all_nll.size else None,
        "imputation_mae_scaled": {},
    }
    rng = np.random.default_rng(seed)
    with_backfill = manifest.backfill_delay > 0
    for kind, make in _mask_kinds(outage_length).items():
        errors: dict[str, list[NDArray[np.float64]]] = {"vae_causal": [], "locf": []}
        if with_backfill:
            errors.update({"vae_backfill": [], "linear_interpolation": []})
        for part in parts:
            held = part.values[part.start :]
            hide = make(held.shape, rng) & ~np.isnan(held) & ~part.anomalous[part.start :, None]
            if not hide.any():
                continue
            masked = part.values.copy()
            masked[part.start :][hide] = np.nan
            truth = ((held - center) / scale)[hide]

            def err(
                filled: NDArray[np.float64],
                truth: NDArray[np.float64] = truth,
                hide: NDArray[np.bool_] = hide,
            ) -> NDArray[np.float64]:
                return np.asarray(np.abs(((filled - center) / scale)[hide] - truth))

            causal, off = _score(model, part, context, masked, "causal")
            errors["vae_causal"].append(err(causal.values[off:]))
            errors["locf"].append(err(locf(center[None, :], masked)[part.start :]))
            if with_backfill:
                back, off = _score(model, part, context, masked, "backfill")
                errors["vae_backfill"].append(err(back.values[off:]))
                errors["linear_interpolation"].append(
                    err(linear_interpolation(center[None, :], masked)[part.start :])
                )
        summary = {k: float(np.mean(np.concatenate(v))) if v else None for k, v in errors.items()}
        if summary.get("vae_causal") is not None and summary.get("locf"):
            summary["causal_vs_locf"] = summary["vae_causal"] / summary["locf"]  # type: ignore[operator]
        if summary.get("vae_backfill") is not None and summary.get("linear_interpolation"):
            summary["backfill_vs_linear"] = (
                summary["vae_backfill"] / summary["linear_interpolation"]  # type: ignore[operator]
            )
        report["imputation_mae_scaled"][kind] = summary
    return report
