"""Imputation and anomaly scoring semantics at inference: the only implementation (numpy only).

Per device, :class:`DeviceScorer` keeps the last ``window`` ticks. For each new tick:

- ``prepare`` returns the model input for the window ending at that tick: values scaled with
  ``(value - center) / scale``, missing entries zero-filled, plus the mask (1 = observed);
- the caller runs the model (any batch of windows, e.g. ``Bundle.run``), then ``finish`` turns
  the decoded mean/log-variance [window, channels] into :class:`TickOutput` records:

  * causal imputation: missing entries of the newest tick take the decoded mean,
    ``sigma = exp(logvar / 2) * scale`` (original units);
  * back-fill: the tick ``backfill_delay`` ticks back is re-imputed from this window (where it
    sits at position ``window - 1 - backfill_delay``) and emitted again with ``revision=1``
    when it had imputed entries; its score and alarm stay those of the causal result;
  * score: Gaussian negative log-likelihood (scaled units) of the newest tick's *observed*
    entries, averaged per observed entry, so a gap alone never raises it (``None`` when
    nothing was observed); ``contributions`` are the per-channel NLLs; ``top_channels`` are
    the observed channels with ``|z| >= top_z`` ordered by contribution (at most ``top_k``);
  * alarm: EWMA-smoothed score with hysteresis (``edge.threshold``);
  * offline: once a device has been fully silent for more than ``max_gap_ticks`` ticks, its
    ticks are not imputed any more (values NaN, nothing marked imputed);
  * warm-up: during the first ``warmup_ticks`` ticks no alarm is raised (``warmup=True``);
    after them the threshold is recalibrated on the warm-up's own smoothed scores (same target
    rate, plus ``warmup_margin``), counting only ticks whose window was full (a cold start
    with no history scores far above normal and must not set the threshold), and with
    ``rescale`` the per-channel center/scale are first re-estimated from the warm-up
    observations and the warm-up ticks re-scored through the ``runner`` given to ``finish``.
    ``rescale_scale_weight`` w in [0, 1] sets how far the scale moves:
    ``bundle_scale ** (1 - w) * warmup_scale ** w`` (1: the warm-up's own spread, 0: the
    bundle's; a short warm-up under-estimates a device's normal spread).

``prepare``/``finish`` may be pipelined (several ``prepare`` calls, then the ``finish`` calls
in the same order), except across the end of a rescaling warm-up. :func:`finish_batch` is
``finish`` for many prepared ticks at once (of one device or many, sharing the window and
channel count): the per-entry arithmetic runs vectorised over the batch, the per-device state
advances tick by tick, and the outputs are those of ``finish`` called tick by tick (the agent's
micro-batch uses it; ``finish`` itself is a batch of one). :func:`edge.series.score_series`
is the batch twin: it drives a ``DeviceScorer`` over a whole series with batched model calls.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.bundle import Manifest, ThresholdSpec
from edge.errors import InputError
from edge.nll import entry_nll, row_scores
from edge.threshold import calibrate, ewma, ewma_step, hysteresis_step
from edge.window import SlidingWindow

__all__ = [
    "DeviceScorer",
    "ModelLike",
    "Runner",
    "ScoringOptions",
    "TickOutput",
    "finish_batch",
    "fit_scaling",
    "model_inputs",
]

log = logging.getLogger(__name__)
_RESCORE_BATCH = 256

Runner = Callable[[NDArray[np.float32], NDArray[np.float32]], tuple[NDArray[Any], NDArray[Any]]]


class ModelLike(Protocol):
    """What :func:`score_series` needs of a bundle: its manifest and a batched ``run``."""

    @property
    def manifest(self) -> Manifest: ...

    def run(
        self, x: NDArray[np.float32], mask: NDArray[np.float32]
    ) -> tuple[NDArray[Any], NDArray[Any]]: ...


@dataclass(frozen=True)
class ScoringOptions:
    """Scoring knobs a bundle may carry in ``manifest.extra["scoring"]``."""

    top_k: int = 3
    top_z: float = 2.0
    warmup_margin: float = 0.0
    rescale_scale_weight: float = 1.0

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ScoringOptions:
        raw = manifest.extra.get("scoring", {})
        if not isinstance(raw, dict):
            return cls()
        return cls(
            top_k=int(raw.get("top_k", cls.top_k)),
            top_z=float(raw.get("top_z", cls.top_z)),
            warmup_margin=float(raw.get("warmup_margin", cls.warmup_margin)),
            rescale_scale_weight=float(raw.get("rescale_scale_weight", cls.rescale_scale_weight)),
        )


@dataclass(frozen=True)
class TickOutput:
    """One device tick after imputation and scoring."""

    ts_ms: int
    values: NDArray[np.float64]  # [C] original units, observed or imputed (NaN when offline)
    imputed: NDArray[np.bool_]  # [C]
    sigma: NDArray[np.float64]  # [C] σ in original units where imputed, NaN where observed
    score: float | None  # NLL per observed entry of this tick, None if nothing observed
    contributions: NDArray[np.float64]  # [C] per-channel NLL, NaN where unobserved
    smoothed: float | None
    threshold: float
    anomaly: bool
    top_channels: tuple[str, ...]
    revision: int  # 0 causal, 1 back-fill
    warmup: bool


@dataclass
class _Pending:
    ts_ms: int
    raw: NDArray[np.float64]  # [C]
    center: NDArray[np.float64]
    scale: NDArray[np.float64]
    silent_run: int  # consecutive fully silent ticks up to and including this one
    full_window: bool = True  # ``window`` rows had been pushed (history and gaps count)


def fit_scaling(
    values: NDArray[np.float64],
    fallback_center: NDArray[np.float64] | None = None,
    fallback_scale: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Robust per-channel ``(center, scale)`` of observations [N, C] (NaN = missing).

    center = median, scale = IQR / 1.349 (the σ of a normal); a channel with zero IQR uses its
    standard deviation, and one without spread or observations uses the fallback (else 0, 1).
    """
    vals = np.asarray(values, dtype=np.float64)
    n_ch = vals.shape[1]
    fc = np.zeros(n_ch) if fallback_center is None else np.asarray(fallback_center, np.float64)
    fs = np.ones(n_ch) if fallback_scale is None else np.asarray(fallback_scale, np.float64)
    center, scale = fc.copy(), fs.copy()
    for c in range(n_ch):
        col = vals[:, c][~np.isnan(vals[:, c])]
        if col.size == 0:
            continue
        center[c] = float(np.median(col))
        q75, q25 = np.quantile(col, [0.75, 0.25])
        spread = float(q75 - q25) / 1.349
        tiny = 1e-9 * max(1.0, abs(center[c]))
        if spread <= tiny:
            spread = float(np.std(col))
        if spread > tiny:
            scale[c] = spread
    return center, scale


def model_inputs(
    window_values: NDArray[np.float64], center: NDArray[np.float64], scale: NDArray[np.float64]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Scaled, zero-filled values and the observed mask (both float32, same shape)."""
    observed = ~np.isnan(window_values)
    x = np.where(observed, (window_values - center) / scale, 0.0)
    return x.astype(np.float32), observed.astype(np.float32)


class DeviceScorer:
    """Streaming imputation and scoring for one device (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        warmup_ticks: int = 0,
        rescale: bool = False,
        history: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None,
        target_false_alarm_rate: float | None = None,
        warmup_margin: float | None = None,
        rescale_scale_weight: float | None = None,
        name: str = "",
    ) -> None:
        if warmup_ticks < 0:
            raise InputError(f"warmup_ticks must be >= 0, got {warmup_ticks}")
        self.manifest = manifest
        self.name = name
        self.channels = manifest.channel_names
        self.warmup_ticks = warmup_ticks
        self.rescale = rescale
        self.center = manifest.center
        self.scale = manifest.scale
        self.threshold: ThresholdSpec = manifest.threshold
        options = ScoringOptions.from_manifest(manifest)
        self.options = ScoringOptions(
            top_k=options.top_k,
            top_z=options.top_z,
            warmup_margin=options.warmup_margin if warmup_margin is None else warmup_margin,
            rescale_scale_weight=(
                options.rescale_scale_weight
                if rescale_scale_weight is None
                else rescale_scale_weight
            ),
        )
        if not 0.0 <= self.options.rescale_scale_weight <= 1.0:
            raise InputError(
                f"rescale_scale_weight must be in [0, 1], got {self.options.rescale_scale_weight}"
            )
        self.target_rate = (
            manifest.threshold.target_false_alarm_rate
            if target_false_alarm_rate is None
            else target_false_alarm_rate
        )
        self._w = manifest.window
        self._c = len(self.channels)
        self._tick_ms = max(1, round(manifest.tick_seconds * 1000))
        self._window = SlidingWindow(self._w, self._c)
        self._pending: deque[_Pending] = deque()
        self._history: deque[TickOutput] = deque(maxlen=manifest.backfill_delay + 1)
        self._smoothed: float | None = None
        self._active = False
        self._prepared = 0
        self._finished = 0
        self._silent_run = 0
        self._last_ts: int | None = None
        # warm-up store: raw rows on the grid (context rows marked not real)
        self._warm_rows: list[NDArray[np.float64]] = []
        self._warm_real: list[bool] = []
        self._warm_smoothed: list[float] = []
        self._warm_scores: list[float] = []  # raw scores of warm-up ticks with a full window
        self._rows_pushed = 0
        if history is not None:
            hist_ts, hist_values = history
            for ts, row in zip(
                np.asarray(hist_ts), np.asarray(hist_values, np.float64), strict=True
            ):
                self._push(int(ts), self._check_row(row), real=False)

    # -- streaming API -------------------------------------------------------------------

    @property
    def in_warmup(self) -> bool:
        return self._finished < self.warmup_ticks

    @property
    def must_finish_first(self) -> bool:
        """True when ``prepare`` would refuse: the pending ticks end a rescaling warm-up."""
        return self.rescale and self._finished < self.warmup_ticks <= self._prepared

    def prepare(
        self, ts_ms: int, values: NDArray[np.float64]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Push the newest aligned tick ([C] raw, NaN = missing); return (x, mask) [W, C] f32."""
        window, center, scale = self.prepare_raw(ts_ms, values)
        return model_inputs(window, center, scale)

    def prepare_raw(
        self, ts_ms: int, values: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """:meth:`prepare` without the scaling: a copy of the raw window [W, C], center, scale.

        ``model_inputs(window, center, scale)`` gives what :meth:`prepare` returns; a caller
        that batches many ticks can scale them all at once (``model_inputs`` broadcasts).
        """
        if self.must_finish_first:
            raise InputError(
                "finish() the last warm-up tick before prepare() the next one: "
                "rescaling at the end of warm-up changes the model inputs"
            )
        row = self._check_row(values)
        self._push(int(ts_ms), row, real=True)
        self._prepared += 1
        full = self._rows_pushed >= self._w
        self._pending.append(
            _Pending(int(ts_ms), row, self.center, self.scale, self._silent_run, full)
        )
        return self._window.values.copy(), self.center, self.scale

    def finish(self, mean: NDArray[Any], logvar: NDArray[Any], runner: Runner) -> list[TickOutput]:
        """Model output [W, C] for the oldest prepared window: causal result, then any back-fill."""
        if not self._pending:
            raise InputError("finish() called without a matching prepare()")
        mean = np.asarray(mean)
        logvar = np.asarray(logvar)
        if mean.shape != (self._w, self._c) or logvar.shape != (self._w, self._c):
            raise InputError(
                f"model output must be [{self._w}, {self._c}], got {mean.shape} and {logvar.shape}"
            )
        return finish_batch([self], mean[None], logvar[None], [runner])[0]

    def recent(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The last ``window`` raw ticks ``(ts_ms [n], values [n, C])`` to seed a new scorer."""
        return self._window.recent()

    # -- internals -----------------------------------------------------------------------

    def _check_row(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        row = np.asarray(values, dtype=np.float64)
        if row.shape != (self._c,):
            raise InputError(
                f"a tick needs {self._c} values in channel order {list(self.channels)}, "
                f"got shape {row.shape}"
            )
        return row.copy()

    def _push(self, ts_ms: int, row: NDArray[np.float64], *, real: bool) -> None:
        recording = self._prepared < self.warmup_ticks  # rows the warm-up may re-score
        if self._last_ts is not None:
            step = ts_ms - self._last_ts
            if step <= 0 or step % self._tick_ms:
                raise InputError(
                    f"tick {ts_ms} does not follow {self._last_ts} on the {self._tick_ms} ms grid; "
                    "align readings to ticks first and push them in order"
                )
            skipped = step // self._tick_ms - 1
            gap = np.full(self._c, np.nan)
            for k in range(max(0, skipped - self._w), skipped):
                self._window.push(self._last_ts + (k + 1) * self._tick_ms, gap)
                self._rows_pushed += 1
                if recording:
                    self._warm_rows.append(gap)
                    self._warm_real.append(False)
            self._silent_run += skipped
        self._window.push(ts_ms, row)
        self._rows_pushed += 1
        self._last_ts = ts_ms
        self._silent_run = self._silent_run + 1 if np.isnan(row).all() else 0
        if recording:
            self._warm_rows.append(row)
            self._warm_real.append(real)

    def _finish_row(self, rows: _Rows, i: int, runner: Runner) -> list[TickOutput]:
        """The sequential part of ``finish`` for row ``i`` of a vectorised batch."""
        p = self._pending.popleft()
        score = rows.score[i]
        self._smoothed = ewma_step(self._smoothed, score, self.threshold.ewma_alpha)
        warm = self.in_warmup
        if warm:
            if score is not None and self._smoothed is not None:
                self._warm_smoothed.append(self._smoothed)
                if p.full_window:
                    self._warm_scores.append(score)
        else:
            self._active = hysteresis_step(
                self._active, self._smoothed, self.threshold.on, self.threshold.off
            )
        out = TickOutput(
            ts_ms=p.ts_ms,
            values=rows.values[i],
            imputed=rows.imputed[i],
            sigma=rows.sigma[i],
            score=score,
            contributions=rows.nll[i],
            smoothed=self._smoothed,
            threshold=self.threshold.on,
            anomaly=bool(self._active) and not warm,
            top_channels=rows.top[i],
            revision=0,
            warmup=warm,
        )
        outputs = [out]
        d = self.manifest.backfill_delay
        if d > 0:
            target_ts = p.ts_ms - d * self._tick_ms
            for prev in self._history:
                if prev.ts_ms == target_ts and prev.imputed.any():
                    outputs.append(self._backfill(prev, rows.bf_values[i], rows.bf_sigma[i]))
        self._history.append(out)
        self._finished += 1
        if self.warmup_ticks and self._finished == self.warmup_ticks:
            self._end_warmup(runner)
        return outputs

    def _backfill(
        self, prev: TickOutput, bf_values: NDArray[np.float64], bf_sigma: NDArray[np.float64]
    ) -> TickOutput:
        values = np.where(prev.imputed, bf_values, prev.values)
        sigma = np.where(prev.imputed, bf_sigma, np.nan)
        return TickOutput(
            ts_ms=prev.ts_ms,
            values=values,
            imputed=prev.imputed,
            sigma=sigma,
            score=prev.score,
            contributions=prev.contributions,
            smoothed=prev.smoothed,
            threshold=prev.threshold,
            anomaly=prev.anomaly,
            top_channels=prev.top_channels,
            revision=1,
            warmup=prev.warmup,
        )

    def _end_warmup(self, runner: Runner) -> None:
        rows = np.array(self._warm_rows, dtype=np.float64).reshape(-1, self._c)
        real = np.array(self._warm_real, dtype=bool)
        # Calibrate on ticks whose window was full: a cold start (no history, the window
        # padded with missing rows) scores far above the device's normal and would set the
        # threshold there. Their EWMA is recomputed from the first full-window tick on.
        smoothed = np.array(self._warm_smoothed, dtype=np.float64)
        if self._warm_scores:
            smoothed = ewma(np.array(self._warm_scores, np.float64), self.threshold.ewma_alpha)
        if self.rescale and real.any():
            self.center, scale = fit_scaling(rows[real], self.center, self.scale)
            weight = self.options.rescale_scale_weight
            self.scale = scale if weight == 1.0 else self.scale ** (1.0 - weight) * scale**weight
            idx = np.flatnonzero(real)
            scores = self._rescore(rows, idx, runner)
            full = idx >= self._w - 1  # rows[] starts with the history context, if any
            smoothed = ewma(scores, self.threshold.ewma_alpha)
            finite = smoothed[np.isfinite(smoothed)]
            self._smoothed = float(finite[-1]) if finite.size else None
            if full.any():
                smoothed = ewma(scores[full], self.threshold.ewma_alpha)
        try:
            self.threshold = calibrate(
                smoothed,
                self.target_rate,
                alpha=self.threshold.ewma_alpha,
                margin=self.options.warmup_margin,
            )
        except ValueError as exc:
            log.warning(
                "scorer.warmup_uncalibrated", extra={"device": self.name, "reason": str(exc)}
            )
        else:
            log.info(
                "scorer.warmup_calibrated",
                extra={"device": self.name, "on": self.threshold.on, "off": self.threshold.off},
            )
        self._active = False
        self._warm_rows, self._warm_real, self._warm_smoothed = [], [], []
        self._warm_scores = []

    def _rescore(
        self, rows: NDArray[np.float64], idx: NDArray[np.intp], runner: Runner
    ) -> NDArray[np.float64]:
        """Scores [len(idx)] of the ticks ``rows[idx]`` with the current scaling."""
        padded = np.vstack([np.full((self._w - 1, self._c), np.nan), rows])
        scores = np.full(idx.size, np.nan)
        for start in range(0, idx.size, _RESCORE_BATCH):
            chunk = idx[start : start + _RESCORE_BATCH]
            windows = np.stack([padded[i : i + self._w] for i in chunk])
            x, mask = model_inputs(windows, self.center, self.scale)
            mean, logvar = runner(x, mask)
            for k, i in enumerate(chunk):
                raw = rows[i]
                observed, nll, _ = entry_nll(
                    raw,
                    self.center,
                    self.scale,
                    np.asarray(mean[k, -1], np.float64),
                    np.asarray(logvar[k, -1], np.float64),
                )
                if observed.any():
                    scores[start + k] = float(np.mean(nll[observed]))
        return scores


@dataclass(frozen=True)
class _Rows:
    """The vectorised part of ``finish`` for B ticks, one row each (see :func:`finish_batch`)."""

    values: NDArray[np.float64]  # [B, C] causal values (NaN when offline)
    imputed: NDArray[np.bool_]  # [B, C]
    sigma: NDArray[np.float64]  # [B, C]
    nll: NDArray[np.float64]  # [B, C] contributions, NaN where unobserved
    score: list[float | None]  # [B]
    top: list[tuple[str, ...]]  # [B]
    bf_values: NDArray[np.float64]  # [B, C] re-imputed values of the back-fill position
    bf_sigma: NDArray[np.float64]  # [B, C] their sigma


def _top_channels(
    scorers: Sequence[DeviceScorer],
    observed: NDArray[np.bool_],
    resid2: NDArray[np.float64],
    nll: NDArray[np.float64],
) -> list[tuple[str, ...]]:
    """Per row: observed channels with ``|z| >= top_z``, by contribution, at most ``top_k``."""
    top_z2 = np.array([[s.options.top_z**2] for s in scorers], dtype=np.float64)
    cand = observed & (resid2 >= top_z2)
    out: list[tuple[str, ...]] = [()] * len(scorers)
    hits = np.flatnonzero(cand.any(axis=1))
    if not hits.size:
        return out
    # non-candidates sort last; a stable sort keeps channel order among equal contributions
    key = np.where(cand[hits], -nll[hits], np.inf)
    order = np.argsort(key, axis=1, kind="stable").tolist()
    flags = cand[hits].tolist()
    for r, ranked, ok in zip(hits.tolist(), order, flags, strict=True):
        s = scorers[r]
        chosen = [i for i in ranked if ok[i]][: s.options.top_k]
        out[r] = tuple(s.channels[i] for i in chosen)
    return out


def finish_batch(
    scorers: Sequence[DeviceScorer],
    mean: NDArray[Any],
    logvar: NDArray[Any],
    runners: Sequence[Runner],
) -> list[list[TickOutput]]:
    """``finish`` for B prepared ticks at once: ``mean``/``logvar`` [B, W, C], one row per tick.

    Row ``i`` belongs to ``scorers[i]`` (a scorer may appear several times, its rows in the
    order of its ``prepare`` calls) and ``runners[i]`` serves its warm-up re-scoring. The
    per-entry arithmetic (NLL, imputation, sigma, top channels) runs vectorised over the
    batch; the per-device state (EWMA, hysteresis, warm-up, back-fill) then advances tick by
    tick in row order. The outputs equal those of ``finish`` called row by row.
    """
    n = len(scorers)
    if not n:
        return []
    first = scorers[0]
    w, c, d = first._w, first._c, first.manifest.backfill_delay
    if any(s._w != w or s._c != c or s.manifest.backfill_delay != d for s in scorers):
        return [
            finish_batch([s], mean[i : i + 1], logvar[i : i + 1], [runners[i]])[0]
            for i, s in enumerate(scorers)
        ]
    if mean.shape != (n, w, c) or logvar.shape != (n, w, c):
        raise InputError(
            f"model output must be [{n}, {w}, {c}], got {mean.shape} and {logvar.shape}"
        )
    taken: dict[int, int] = {}
    pend: list[_Pending] = []
    for s in scorers:
        j = taken.get(id(s), 0)
        if j >= len(s._pending):
            raise InputError("finish() called without a matching prepare()")
        taken[id(s)] = j + 1
        pend.append(s._pending[j])
    raw = np.array([p.raw for p in pend])
    center = np.array([p.center for p in pend])
    scale = np.array([p.scale for p in pend])
    m_last = np.asarray(mean[:, -1], dtype=np.float64)
    lv_last = np.asarray(logvar[:, -1], dtype=np.float64)
    observed, nll, resid2 = entry_nll(raw, center, scale, m_last, lv_last)
    values = np.where(observed, raw, m_last * scale + center)
    imputed = ~observed
    sigma = np.where(observed, np.nan, np.exp(lv_last / 2.0) * scale)
    offline = np.array(
        [p.silent_run > s.manifest.max_gap_ticks for p, s in zip(pend, scorers, strict=True)]
    )
    if offline.any():
        values[offline] = np.nan
        imputed[offline] = False
        sigma[offline] = np.nan
    if d > 0:
        pos = w - 1 - d
        bf_values = np.asarray(mean[:, pos], dtype=np.float64) * scale + center
        bf_sigma = np.exp(np.asarray(logvar[:, pos], dtype=np.float64) / 2.0) * scale
    else:
        bf_values = bf_sigma = values
    rows = _Rows(
        values=values,
        imputed=imputed,
        sigma=sigma,
        nll=nll,
        score=row_scores(nll, observed),
        top=_top_channels(scorers, observed, resid2, nll),
        bf_values=bf_values,
        bf_sigma=bf_sigma,
    )
    return [s._finish_row(rows, i, runners[i]) for i, s in enumerate(scorers)]
