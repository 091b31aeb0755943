"""Offline evaluation of anomaly detection on labelled files (SKAB protocol), VAE vs baselines.

Per file (:class:`LabelledFile`: the original rows with their labels, and the same rows on the
bundle's tick grid):

1. the first ``warmup`` rows are the file's own training/calibration data and are not scored;
2. the VAE scores the tick grid causally with :func:`edge.series.score_series`, with a warm-up
   covering those rows (threshold recalibrated on them, optionally ``rescale``; ``warmup_margin``
   and ``rescale_scale_weight`` override the bundle's, see :mod:`edge.scorer`); each row takes
   the output of the tick it falls on;
3. each baseline of :mod:`training.anomaly_baselines` is fitted and calibrated on the same
   warm-up rows and scores the rows causally;
4. a trivial ``flag_all`` detector shows what the label balance alone gives.

Metrics are computed on the scored rows of all files concatenated, as SKAB does: point-wise
F1 with false-alarm rate (FP / negatives) and missed-alarm rate (FN / positives), never
point-adjusted; ROC-AUC and PR-AUC of the raw score; SKAB's NAB changepoint score (alarm onsets
against labelled changepoints); per anomaly segment, the delay to the first alarm inside it;
false alarms per hour (alarm onsets on normal rows per hour of normal rows).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.scorer import ModelLike
from edge.series import score_series
from training.anomaly_baselines import ANOMALY_BASELINES, CalibrationSettings, run_detector
from training.data import (
    TIME_COLUMNS,
    LoadOptions,
    Series,
    frame_to_series,
    parse_times,
    read_table,
)
from training.errors import DataError
from training.evaluate import MethodInfo, Progress
from training.metrics import (
    NAB_PROFILES,
    confusion,
    detection_delays,
    false_alarm_events,
    nab_counts,
    nab_normalise,
    pr_auc,
    roc_auc,
)

__all__ = [
    "LEADERBOARD",
    "AnomalyReport",
    "AnomalySetup",
    "Detection",
    "LabelledFile",
    "evaluate_anomaly",
    "load_labelled",
]

log = logging.getLogger(__name__)

# SKAB's published leaderboard (point-wise F1, FAR %, MAR %), for orientation only.
LEADERBOARD: tuple[tuple[str, float, float, float, str], ...] = (
    ("Conv-AE", 0.78, 13.6, 28.0, "non-causal"),
    ("MSET", 0.78, 39.7, 14.1, "non-causal"),
    ("T²+Q (PCA)", 0.76, 26.6, 24.9, ""),
    ("LSTM-AE", 0.74, 30.0, 25.9, ""),
    ("LSTM-VAE", 0.56, 9.1, 55.0, ""),
    ("Isolation forest", 0.29, 2.6, 82.9, ""),
)


@dataclass(frozen=True)
class LabelledFile:
    """A labelled file: its rows, and the same data on the model's tick grid."""

    name: str
    series: Series  # on the tick grid, channels in the bundle's order
    row_tick: NDArray[np.intp]  # [N] grid index of each row
    row_ts_s: NDArray[np.float64]  # [N] epoch seconds
    row_values: NDArray[np.float64]  # [N, C] raw
    labels: NDArray[np.bool_]  # [N] inside a labelled anomaly
    changepoints: NDArray[np.bool_]  # [N] labelled changepoints (segment starts if absent)


def load_labelled(
    path: str | Path, channels: Sequence[str], tick_seconds: float, options: LoadOptions
) -> LabelledFile:
    """Read one labelled file (``anomaly`` column, or ``options.label_column``)."""
    p = Path(path)
    frame = read_table(p)
    label_col = options.label_column or next(
        (str(c) for c in frame.columns if str(c).lower() == "anomaly"), None
    )
    if label_col is None or label_col not in frame.columns:
        raise DataError(
            f"{p}: no label column ('anomaly', or the one named by --label-column) in "
            f"{list(frame.columns)}; anomaly evaluation needs labelled files"
        )
    opts = LoadOptions(
        time_column=options.time_column,
        label_column=label_col,
        channels=tuple(channels),
        tick_seconds=tick_seconds,
    )
    series = frame_to_series(frame, name=p.stem, options=opts, source=str(p))[0]
    lower = {str(c).lower(): str(c) for c in frame.columns}
    time_col = options.time_column or next(lower[n] for n in TIME_COLUMNS if n in lower)
    ts_ms = parse_times(frame[time_col], str(p))
    order = np.argsort(ts_ms, kind="stable")
    frame = frame.iloc[order]
    ts_ms = ts_ms[order]
    tick_ms = round(tick_seconds * 1000)
    row_tick = np.searchsorted(series.ts_ms, (ts_ms + tick_ms // 2) // tick_ms * tick_ms)
    labels = np.nan_to_num(frame[label_col].to_numpy(np.float64)) > 0.5
    if "changepoint" in lower:
        cps = np.nan_to_num(frame[lower["changepoint"]].to_numpy(np.float64)) > 0.5
    else:
        cps = labels & ~np.r_[False, labels[:-1]]
    return LabelledFile(
        name=p.stem if p.parent.name == "" else f"{p.parent.name}/{p.stem}",
        series=series,
        row_tick=row_tick.astype(np.intp),
        row_ts_s=ts_ms.astype(np.float64) / 1000.0,
        row_values=frame[list(channels)].to_numpy(np.float64),
        labels=labels,
        changepoints=cps,
    )


@dataclass(frozen=True)
class AnomalySetup:
    """What to run; every field is a ``gapwatch evaluate anomaly`` flag."""

    warmup: int = 400  # rows per file used for fitting/calibration and not scored
    rescale: tuple[bool, ...] = (False,)  # VAE variants: as trained, and/or rescaled per file
    warmup_margin: float | None = None  # None: the bundle's (manifest extra.scoring)
    rescale_scale_weight: float | None = None  # None: the bundle's (manifest extra.scoring)
    baselines: tuple[str, ...] = tuple(ANOMALY_BASELINES)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    nab_window_s: float = 60.0
    batch: int = 64


@dataclass(frozen=True)
class Detection:
    """Aggregate detection metrics of one method over all scored rows."""

    f1: float
    far: float
    mar: float
    precision: float
    roc_auc: float
    pr_auc: float
    nab: dict[str, float]
    mean_delay_s: float
    median_delay_s: float
    detected: int
    segments: int
    false_alarms_per_hour: float
    rows: int
    positives: int


@dataclass(frozen=True)
class AnomalyReport:
    methods: tuple[MethodInfo, ...]
    results: dict[str, Detection]
    per_file: dict[str, dict[str, dict[str, float]]]  # method -> file -> f1/far/mar
    seconds: dict[str, float]
    setup: dict[str, Any]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "anomaly",
            "setup": self.setup,
            "methods": [vars(m) for m in self.methods],
            "results": {k: vars(v) for k, v in self.results.items()},
            "per_file": self.per_file,
            "leaderboard": [
                {"method": m, "f1": f, "far_pct": a, "mar_pct": r, "note": n}
                for m, f, a, r, n in LEADERBOARD
            ],
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


@dataclass
class _Pool:
    labels: list[NDArray[np.bool_]] = field(default_factory=list)
    scores: list[NDArray[np.float64]] = field(default_factory=list)
    flags: list[NDArray[np.bool_]] = field(default_factory=list)
    delays: list[float | None] = field(default_factory=list)
    false_events: int = 0
    normal_hours: float = 0.0
    nab: NDArray[np.float64] = field(default_factory=lambda: np.zeros((3, len(NAB_PROFILES))))

    def add(
        self,
        f: LabelledFile,
        start: int,
        score: NDArray[np.float64],
        flags: NDArray[np.bool_],
        nab_window_s: float,
    ) -> dict[str, float]:
        y, s, p, t = f.labels[start:], score[start:], flags[start:], f.row_ts_s[start:]
        self.labels.append(y)
        self.scores.append(s)
        self.flags.append(p)
        self.delays.extend(detection_delays(y, p, t))
        self.false_events += false_alarm_events(y, p)
        step = np.diff(t, append=t[-1] + (np.median(np.diff(t)) if t.size > 1 else 1.0))
        self.normal_hours += float(step[~y].sum()) / 3600.0
        self.nab += nab_counts(t, f.changepoints[start:], p, nab_window_s)
        c = confusion(y, p)
        return {"f1": c.f1, "far": c.far, "mar": c.mar}

    def summary(self) -> Detection:
        y = np.concatenate(self.labels)
        s = np.concatenate(self.scores)
        c = confusion(y, np.concatenate(self.flags))
        hits = [d for d in self.delays if d is not None]
        nab = nab_normalise(self.nab)
        return Detection(
            f1=c.f1,
            far=c.far,
            mar=c.mar,
            precision=c.precision,
            roc_auc=roc_auc(y, s),
            pr_auc=pr_auc(y, s),
            nab={p.name: float(v) for p, v in zip(NAB_PROFILES, nab, strict=True)},
            mean_delay_s=float(np.mean(hits)) if hits else math.nan,
            median_delay_s=float(np.median(hits)) if hits else math.nan,
            detected=len(hits),
            segments=len(self.delays),
            false_alarms_per_hour=(
                self.false_events / self.normal_hours if self.normal_hours else math.nan
            ),
            rows=int(y.size),
            positives=int(y.sum()),
        )


def _knobs(setup: AnomalySetup, rescale: bool) -> str:
    parts = []
    if setup.warmup_margin is not None:
        parts.append(f"threshold margin {setup.warmup_margin:g}")
    if rescale and setup.rescale_scale_weight is not None:
        parts.append(f"scale weight {setup.rescale_scale_weight:g}")
    return "".join(f", {p}" for p in parts)


def _calibration(setup: AnomalySetup) -> CalibrationSettings:
    """The baselines' calibration with the setup's warm-up."""
    return CalibrationSettings(
        warmup=setup.warmup,
        ewma_alpha=setup.calibration.ewma_alpha,
        target_rate=setup.calibration.target_rate,
        folds=setup.calibration.folds,
    )


def _methods(
    model: ModelLike | None, setup: AnomalySetup, variants: dict[str, bool]
) -> list[MethodInfo]:
    """Every method in report order: the VAE variants, the baselines, then ``flag_all``."""
    methods: list[MethodInfo] = []
    if model is not None:
        methods += [
            MethodInfo(
                name,
                True,
                f"VAE {model.manifest.name}/{model.manifest.version}, causal, warm-up "
                f"{setup.warmup} rows{', center/scale re-estimated on it' if r else ''}"
                + _knobs(setup, r),
            )
            for name, r in variants.items()
        ]
    methods += [
        MethodInfo(b, True, f"{b}, fit + threshold on the first {setup.warmup} rows")
        for b in setup.baselines
    ]
    methods.append(MethodInfo("flag_all", True, "every row flagged (label balance reference)"))
    return methods


class _Scoring:
    """Scores each file with every method and pools the rows; per-file metrics and seconds."""

    def __init__(
        self,
        model: ModelLike | None,
        setup: AnomalySetup,
        methods: Sequence[MethodInfo],
        variants: dict[str, bool],
        tick: Callable[[], float],
    ) -> None:
        self.model, self.setup, self.variants, self.tick = model, setup, variants, tick
        self.calib = _calibration(setup)
        self.pools = {m.name: _Pool() for m in methods}
        self.per_file: dict[str, dict[str, dict[str, float]]] = {m.name: {} for m in methods}
        self.seconds = dict.fromkeys((m.name for m in methods), 0.0)

    def _add(
        self, name: str, f: LabelledFile, score: NDArray[np.float64], flags: NDArray[np.bool_]
    ) -> None:
        pool = self.pools[name]
        self.per_file[name][f.name] = pool.add(
            f, self.setup.warmup, score, flags, self.setup.nab_window_s
        )

    def file(self, f: LabelledFile) -> None:
        setup, n = self.setup, f.labels.size
        if n <= setup.warmup:
            raise DataError(f"{f.name}: {n} rows, need more than the warm-up of {setup.warmup}")
        for name, rescale in self.variants.items():
            if self.model is None:
                break
            t0 = self.tick()
            res = score_series(
                self.model,
                f.series.values,
                f.series.ts_ms,
                mode="causal",
                warmup=int(f.row_tick[setup.warmup]),
                rescale=rescale,
                batch=setup.batch,
                warmup_margin=setup.warmup_margin,
                rescale_scale_weight=setup.rescale_scale_weight,
            )
            self.seconds[name] += self.tick() - t0
            self._add(name, f, res.score[f.row_tick], res.anomaly[f.row_tick])
        for b in setup.baselines:
            t0 = self.tick()
            run = run_detector(ANOMALY_BASELINES[b], f.row_values, self.calib)
            self.seconds[b] += self.tick() - t0
            self._add(b, f, run.score, run.anomaly)
        self._add("flag_all", f, np.zeros(n), np.ones(n, dtype=bool))
        log.info("evaluate.anomaly_file", extra={"file": f.name, "rows": n})


def _setup_dict(
    files: Sequence[LabelledFile],
    model: ModelLike | None,
    setup: AnomalySetup,
    calib: CalibrationSettings,
) -> dict[str, Any]:
    return {
        "files": [f.name for f in files],
        "scored_rows": sum(f.labels.size - setup.warmup for f in files),
        "warmup_rows": setup.warmup,
        "rescale": list(setup.rescale),
        "warmup_margin": setup.warmup_margin,
        "rescale_scale_weight": setup.rescale_scale_weight,
        "baseline_calibration": vars(calib),
        "nab_window_s": setup.nab_window_s,
        "bundle": None if model is None else f"{model.manifest.name}/{model.manifest.version}",
    }


def evaluate_anomaly(
    files: Sequence[LabelledFile],
    model: ModelLike | None,
    setup: AnomalySetup,
    *,
    progress: Progress | None = None,
    clock: Callable[[], float] | None = None,
) -> AnomalyReport:
    """Score every file with the VAE and the baselines; see the module docstring."""
    if not files:
        raise DataError("no labelled files to evaluate")
    unknown = sorted(set(setup.baselines) - set(ANOMALY_BASELINES))
    if unknown:
        raise DataError(f"unknown baseline(s) {unknown}; choose from {sorted(ANOMALY_BASELINES)}")
    variants = {("vae_rescaled" if r else "vae"): r for r in dict.fromkeys(setup.rescale)}
    methods = _methods(model, setup, variants)
    scoring = _Scoring(model, setup, methods, variants, clock or (lambda: 0.0))
    for f in files:
        scoring.file(f)
        if progress is not None:
            progress.step(f.name)
    results = {name: pool.summary() for name, pool in scoring.pools.items()}
    return AnomalyReport(
        methods=tuple(methods),
        results=results,
        per_file=scoring.per_file,
        seconds=scoring.seconds,
        setup=_setup_dict(files, model, setup, scoring.calib),
        notes=(
            "metrics on the original rows of all files concatenated (rows after each file's "
            f"warm-up of {setup.warmup}); F1 is point-wise, never point-adjusted",
            f"{results['flag_all'].f1:.2f} = F1 of flagging every row: compare F1 with FAR",
        ),
    )
