"""Offline evaluation of a bundle against baselines: gap filling and anomaly detection.

Pure-ish core: series and a model (anything with ``manifest`` and ``run``, see
:class:`edge.scorer.ModelLike`) in, a report of plain values out. No clocks (timings come
from an injected ``clock``), no environment reads; files are read by :mod:`training.data`.

Imputation (:func:`evaluate_imputation`), per data file:

1. chronological split: the train part fits the baselines and the z scaling (its mean and
   standard deviation, or the bundle's center/scale), the test part is evaluated;
2. for each mask type and seed, entries to hide are drawn (MCAR with
   :func:`training.masks.random_points`; outages as separate stretches of exactly ``length``
   ticks on one channel or on all) and kept only where the test part was actually observed;
3. every method fills the hidden test entries: the baselines of :mod:`training.baselines`
   (in z units) and the VAE through :func:`edge.series.score_series` in causal and back-fill
   mode (original units, converted to z);
4. MAE and RMSE in z units over the hidden entries, pooled over files, averaged over seeds.

Anomaly detection lives in :mod:`training.evaluate_anomaly`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.bundle import Manifest
from edge.scorer import ModelLike
from edge.series import score_series
from training.baselines import (
    BaselineSettings,
    Filler,
    ImputationBaseline,
    imputation_baselines,
)
from training.data import Series
from training.errors import DataError
from training.masks import random_points
from training.metrics import ErrorStats, masked_errors

__all__ = [
    "MASK_TYPES",
    "VAE_METHODS",
    "ImputationReport",
    "ImputationSetup",
    "MaskType",
    "MethodInfo",
    "Progress",
    "SplitPart",
    "evaluate_imputation",
    "split_series",
]

log = logging.getLogger(__name__)

VAE_METHODS = ("vae_causal", "vae_backfill")


class Progress(Protocol):
    """Where long loops report a finished step (a tqdm bar in the CLI, nothing in tests)."""

    def step(self, label: str) -> None: ...


class _Silent:
    def step(self, label: str) -> None:
        return None


@dataclass(frozen=True)
class MaskType:
    """A way to hide observed entries of a test series ``[T, C]``."""

    name: str
    label: str  # short column title; ``{L}`` stands for the outage length
    draw: Callable[[tuple[int, int], np.random.Generator, int, float], NDArray[np.bool_]]


def _outages(*, one_channel: bool) -> Callable[..., NDArray[np.bool_]]:
    """Outages of exactly ``length`` ticks that never touch each other.

    One per randomly chosen slot of ``2 * length`` ticks, at a random offset inside it, so
    two outages cannot merge into a longer one (``training.masks`` stretches may overlap,
    which suits training but would blur "silent for L ticks" here).
    """

    def draw(
        shape: tuple[int, int], rng: np.random.Generator, length: int, coverage: float
    ) -> NDArray[np.bool_]:
        t_len, n_ch = shape
        slots = max(1, t_len // (2 * length))
        count = min(slots, max(1, round(coverage * t_len / length)))
        hide = np.zeros(shape, dtype=bool)
        for slot in rng.choice(slots, size=count, replace=False):
            start = int(slot) * 2 * length + int(rng.integers(0, length))
            cols = slice(None) if not one_channel else int(rng.integers(0, n_ch))
            hide[start : start + length, cols] = True
        return hide

    return draw


MASK_TYPES: dict[str, MaskType] = {
    "mcar20": MaskType("mcar20", "MCAR 20 %", lambda s, r, n, c: random_points(s, 0.2, r)),
    "mcar50": MaskType("mcar50", "MCAR 50 %", lambda s, r, n, c: random_points(s, 0.5, r)),
    "channel": MaskType("channel", "1 channel silent {L}", _outages(one_channel=True)),
    "device": MaskType("device", "device silent {L}", _outages(one_channel=False)),
}


@dataclass(frozen=True)
class SplitPart:
    """One data file cut in time: the train part (for fitting) and the test part."""

    name: str
    train: NDArray[np.float64]  # [N, C] raw, NaN = missing
    test: NDArray[np.float64]  # [T, C] raw
    test_ts_ms: NDArray[np.int64]  # [T]
    test_from_ms: int


def split_series(
    series: Series, *, fraction: float = 0.8, test_from_ms: int | None = None
) -> SplitPart:
    """Chronological split: ticks before ``test_from_ms`` (or the first ``fraction``) train."""
    n = len(series)
    if test_from_ms is not None:
        cut = int(np.searchsorted(series.ts_ms, test_from_ms))
    elif 0.0 < fraction < 1.0:
        cut = round(n * fraction)
    else:
        raise DataError(f"--split {fraction} must be between 0 and 1 (e.g. 0.8: first 80 % train)")
    if cut < 2 or n - cut < 2:
        raise DataError(
            f"{series.name}: split at tick {cut} of {n} leaves no train or no test part; "
            "move --test-from inside the data range or change --split"
        )
    return SplitPart(
        name=series.name,
        train=series.values[:cut],
        test=series.values[cut:],
        test_ts_ms=series.ts_ms[cut:],
        test_from_ms=int(series.ts_ms[cut]),
    )


@dataclass(frozen=True)
class ImputationSetup:
    """What to run; every field is a ``gapwatch evaluate imputation`` flag."""

    mask_types: tuple[str, ...] = ("mcar20", "mcar50", "channel", "device")
    seeds: int = 3
    length: int = 24  # outage length in ticks for the channel and device masks
    coverage: float = 0.1  # share of test ticks inside an injected outage
    scaling: Literal["train", "bundle"] = "train"
    baselines: tuple[str, ...] | None = None  # None: all of training.baselines
    settings: BaselineSettings = field(default_factory=BaselineSettings)
    batch: int = 64

    def __post_init__(self) -> None:
        unknown = [m for m in self.mask_types if m not in MASK_TYPES]
        if unknown or not self.mask_types:
            raise DataError(
                f"unknown mask type(s) {unknown}; choose from {sorted(MASK_TYPES)}"
                if unknown
                else "no mask type given"
            )
        if self.seeds < 1 or self.length < 1 or not 0 < self.coverage <= 0.5:
            raise DataError(
                f"seeds {self.seeds} and length {self.length} must be >= 1, "
                f"coverage {self.coverage} in (0, 0.5]"
            )


@dataclass(frozen=True)
class MethodInfo:
    name: str
    causal: bool
    summary: str


@dataclass(frozen=True)
class ImputationReport:
    """MAE/RMSE (z units) per method and mask type, averaged over seeds."""

    methods: tuple[MethodInfo, ...]
    mask_types: tuple[str, ...]
    mask_labels: dict[str, str]
    mae: dict[str, dict[str, float]]  # method -> mask type -> mean over seeds
    rmse: dict[str, dict[str, float]]
    mae_per_seed: dict[str, dict[str, list[float]]]
    entries: dict[str, int]  # mask type -> hidden entries per seed (mean)
    seconds: dict[str, float]  # method -> time spent filling (fit included)
    notes: tuple[str, ...]
    setup: dict[str, Any]

    def ratio(self, method: str, mask: str, reference: str) -> float:
        ref = self.mae.get(reference, {}).get(mask, math.nan)
        return self.mae[method][mask] / ref if ref and math.isfinite(ref) else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "imputation",
            "units": "z (per channel, see setup.scaling)",
            "setup": self.setup,
            "methods": [vars(m) for m in self.methods],
            "mask_types": {m: self.mask_labels[m] for m in self.mask_types},
            "mae": self.mae,
            "rmse": self.rmse,
            "mae_per_seed": self.mae_per_seed,
            "ratio_vs_locf": _ratios(self, "locf"),
            "ratio_vs_linear": _ratios(self, "linear"),
            "hidden_entries_per_seed": self.entries,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


def _ratios(report: ImputationReport, reference: str) -> dict[str, dict[str, float]]:
    if reference not in report.mae:
        return {}
    return {
        m.name: {k: report.ratio(m.name, k, reference) for k in report.mask_types}
        for m in report.methods
    }


class _EvalModel:
    """The bundle without its offline rule: every hidden entry is imputed, none dropped.

    ``max_gap_ticks`` is a deployment policy (a device silent that long is reported offline,
    not imputed); the evaluation measures imputation, so it is lifted to ``max_gap``.
    """

    def __init__(self, model: ModelLike, max_gap: int) -> None:
        self._model = model
        self._manifest = replace(model.manifest, max_gap_ticks=max_gap)

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def run(self, x: NDArray[np.float32], mask: NDArray[np.float32]) -> tuple[Any, Any]:
        return self._model.run(x, mask)


def _z_scaling(
    part: SplitPart, model: ModelLike | None, how: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if how == "bundle":
        if model is None:
            raise DataError("scaling 'bundle' needs a bundle; use --scale train")
        return model.manifest.center, model.manifest.scale
    center = np.nanmean(part.train, axis=0)
    scale = np.nanstd(part.train, axis=0)
    if not np.all(np.isfinite(center)):
        bad = np.flatnonzero(~np.isfinite(center)).tolist()
        raise DataError(f"{part.name}: channels at {bad} have no observation in the train part")
    return center, np.where(scale > 0, scale, 1.0)


def _chosen_baselines(setup: ImputationSetup) -> list[ImputationBaseline]:
    """The baselines ``setup`` names (all when it names none); unknown names are an error."""
    chosen = [
        b
        for b in imputation_baselines(setup.settings)
        if setup.baselines is None or b.name in setup.baselines
    ]
    if setup.baselines is not None:
        unknown = sorted(set(setup.baselines) - {b.name for b in chosen})
        if unknown:
            known = [b.name for b in imputation_baselines()]
            raise DataError(f"unknown baseline(s) {unknown}; choose from {known}")
    return chosen


def _methods_and_notes(
    chosen: Sequence[ImputationBaseline], model: ModelLike | None, setup: ImputationSetup
) -> tuple[list[MethodInfo], list[str]]:
    """Every method in report order (baselines, then the two VAE modes) and the report's notes."""
    methods = [MethodInfo(b.name, b.causal, b.summary) for b in chosen]
    notes: list[str] = []
    if model is not None:
        d = model.manifest.backfill_delay
        methods += [
            MethodInfo("vae_causal", True, f"VAE {model.manifest.name}, window ends at the tick"),
            MethodInfo("vae_backfill", False, f"VAE back-fill revision, {d} ticks later"),
        ]
        notes.append(
            f"the bundle's offline rule (max_gap_ticks={model.manifest.max_gap_ticks}) is lifted:"
            " the VAE imputes every hidden entry, however long the device was silent"
        )
    if {"knn", "iterative", "missforest"} & {b.name for b in chosen}:
        notes.append(
            f"per-tick sklearn imputers fit on at most {setup.settings.max_fit_rows} sampled "
            f"train rows; ExtraTrees with {setup.settings.forest_trees} trees"
        )
    return methods, notes


@dataclass(frozen=True)
class _ZPart:
    """One split part with its z scaling: the truth in z units and where it was observed."""

    part: SplitPart
    center: NDArray[np.float64]
    scale: NDArray[np.float64]
    truth_z: NDArray[np.float64]
    observed: NDArray[np.bool_]


class _Trials:
    """Runs every (file, mask type, seed) trial and adds up errors, seconds and entries."""

    def __init__(
        self,
        setup: ImputationSetup,
        chosen: Sequence[ImputationBaseline],
        vae: _EvalModel | None,
        *,
        bar: Progress,
        tick: Callable[[], float],
    ) -> None:
        self.setup, self.chosen, self.vae, self.bar, self.tick = setup, chosen, vae, bar, tick
        names = [b.name for b in chosen] + (list(VAE_METHODS) if vae is not None else [])
        self.stats = {
            m: {k: [ErrorStats(0, 0, 0)] * setup.seeds for k in setup.mask_types} for m in names
        }
        self.seconds = dict.fromkeys(names, 0.0)
        self.entries = dict.fromkeys(setup.mask_types, 0)
        self.unimputed = 0

    def run_part(self, part: SplitPart, model: ModelLike | None) -> None:
        center, scale = _z_scaling(part, model, self.setup.scaling)
        train_z = (part.train - center) / scale
        z = _ZPart(part, center, scale, (part.test - center) / scale, ~np.isnan(part.test))
        fillers = {}
        for b in self.chosen:
            t0 = self.tick()
            fillers[b.name] = b.fit(train_z)
            self.seconds[b.name] += self.tick() - t0
        for kind in self.setup.mask_types:
            for seed in range(self.setup.seeds):
                self._trial(z, fillers, kind, seed)

    def _trial(self, z: _ZPart, fillers: dict[str, Filler], kind: str, seed: int) -> None:
        part, setup = z.part, self.setup
        rng = np.random.default_rng([seed, _stable(part.name), _stable(kind)])
        hide = MASK_TYPES[kind].draw(part.test.shape, rng, setup.length, setup.coverage)
        hide &= z.observed
        self.entries[kind] += int(hide.sum())
        hidden_z = np.where(hide, np.nan, z.truth_z)
        for b in self.chosen:
            t0 = self.tick()
            filled = fillers[b.name](hidden_z)
            self.seconds[b.name] += self.tick() - t0
            self.stats[b.name][kind][seed] += masked_errors(z.truth_z, filled, hide)
            self.bar.step(f"{part.name} {kind} seed {seed} {b.name}")
        if self.vae is not None:
            self._vae_trial(self.vae, z, hide, kind, seed)
        log.info(
            "evaluate.imputation_trial",
            extra={"file": part.name, "mask": kind, "seed": seed, "hidden": int(hide.sum())},
        )

    def _vae_trial(
        self, vae: _EvalModel, z: _ZPart, hide: NDArray[np.bool_], kind: str, seed: int
    ) -> None:
        part = z.part
        hidden_raw = np.where(hide, np.nan, part.test)
        for name in VAE_METHODS:
            t0 = self.tick()
            res = score_series(
                vae,
                hidden_raw,
                part.test_ts_ms,
                mode="backfill" if name == "vae_backfill" else "causal",
                batch=self.setup.batch,
            )
            self.seconds[name] += self.tick() - t0
            pred_z = (res.values - z.center) / z.scale
            missing = hide & np.isnan(pred_z)
            self.unimputed += int(missing.sum())
            pred_z = np.where(missing, 0.0, pred_z)  # scored as the scaling center
            self.stats[name][kind][seed] += masked_errors(z.truth_z, pred_z, hide)
            self.bar.step(f"{part.name} {kind} seed {seed} {name}")


def _setup_dict(
    parts: Sequence[SplitPart], model: ModelLike | None, setup: ImputationSetup
) -> dict[str, Any]:
    return {
        "files": [p.name for p in parts],
        "test_from_ms": {p.name: p.test_from_ms for p in parts},
        "train_ticks": sum(p.train.shape[0] for p in parts),
        "test_ticks": sum(p.test.shape[0] for p in parts),
        "mask_types": list(setup.mask_types),
        "seeds": setup.seeds,
        "length": setup.length,
        "coverage": setup.coverage,
        "scaling": setup.scaling,
        "baseline_settings": vars(setup.settings),
        "bundle": None if model is None else f"{model.manifest.name}/{model.manifest.version}",
    }


def evaluate_imputation(
    parts: Sequence[SplitPart],
    model: ModelLike | None,
    setup: ImputationSetup,
    *,
    progress: Progress | None = None,
    clock: Callable[[], float] | None = None,
) -> ImputationReport:
    """Run every method on every (file, mask type, seed); see the module docstring."""
    if not parts:
        raise DataError("no data to evaluate")
    chosen = _chosen_baselines(setup)
    methods, notes = _methods_and_notes(chosen, model, setup)
    vae = None if model is None else _EvalModel(model, max(p.test.shape[0] for p in parts))
    trials = _Trials(setup, chosen, vae, bar=progress or _Silent(), tick=clock or (lambda: 0.0))
    for part in parts:
        trials.run_part(part, model)
    if trials.unimputed:
        notes.append(f"{trials.unimputed} hidden entries the VAE left empty were scored as z = 0")
    stats = trials.stats
    mae = {
        m: {k: float(np.mean([s.mae for s in v])) for k, v in d.items()} for m, d in stats.items()
    }
    rmse = {
        m: {k: float(np.mean([s.rmse for s in v])) for k, v in d.items()} for m, d in stats.items()
    }
    return ImputationReport(
        methods=tuple(methods),
        mask_types=setup.mask_types,
        mask_labels={k: MASK_TYPES[k].label.format(L=setup.length) for k in setup.mask_types},
        mae=mae,
        rmse=rmse,
        mae_per_seed={m: {k: [s.mae for s in v] for k, v in d.items()} for m, d in stats.items()},
        entries={k: v // setup.seeds for k, v in trials.entries.items()},
        seconds=trials.seconds,
        notes=tuple(notes),
        setup=_setup_dict(parts, model, setup),
    )


def _stable(text: str) -> int:
    """A stable small integer for seeding from a name (``hash()`` is salted per process)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(text)) % (2**31)
