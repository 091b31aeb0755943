"""The retraining loop: history → challenger → judged against the champion → promoted or not.

1. Observed history ``[start, holdout_from)`` and ``[holdout_from, end)`` is exported from
   InfluxDB (:mod:`pipeline.history`, imputed entries missing) into two Parquet files.
2. A challenger is trained on the first part with ``training.train_bundle`` (imported lazily,
   here only; the champion's channels, tick and window are kept so the two are comparable).
3. Both are scored the way the agent would (:func:`edge.series.score_series`) on the same
   held-out part, with the *same* injected masks, in the same units:

   - ``imputation_mae``: mean |imputed − true| over hidden observed entries (random 20 % of
     entries, and one channel silent for stretches of ``outage`` ticks), causal imputation,
     in z units of the held-out data (its per-channel standard deviation), so the models'
     own scalings do not matter;
   - ``false_alarm_rate``: alarms / scored ticks on ticks not labelled anomalous (every tick
     when no labels are given: the held-out period is taken to be normal operation);
   - with labels: point-wise ``f1``, ``missed_alarm_rate``.

4. :func:`decide`: the challenger is promoted unless it is worse than the champion beyond the
   tolerance on any metric (no champion: promoted). The winner is published into the registry
   and made current; a loser is kept under ``<name>/.rejected/``.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.bundle import Bundle, current_version_dir, load_bundle
from edge.errors import EdgeError
from edge.scorer import ModelLike
from edge.series import score_series
from pipeline.errors import PipelineError
from pipeline.history import HistoryQuery, export_history, find_channels, format_rfc3339
from pipeline.influx import InfluxPort
from pipeline.registry import Announcer, Registry

log = logging.getLogger(__name__)

__all__ = [
    "Decision",
    "Evaluation",
    "Holdout",
    "RetrainOutcome",
    "RetrainSettings",
    "Tolerance",
    "decide",
    "evaluate",
    "make_masks",
    "retrain",
]


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the champion a challenger may be and still be promoted."""

    mae_rel: float = 0.05  # imputation MAE at most 5 % higher
    far_abs: float = 0.005  # false-alarm rate at most 0.5 percentage points higher
    f1_abs: float = 0.02  # F1 at most 0.02 lower (only where labels exist)


@dataclass(frozen=True)
class Holdout:
    """Held-out ticks of several devices on one grid; ``labels`` 1 = anomalous (optional)."""

    channels: tuple[str, ...]
    values: list[NDArray[np.float64]]  # per device [T, C], NaN = missing
    ts_ms: list[NDArray[np.int64]]  # per device [T]
    labels: list[NDArray[np.bool_] | None]

    def scale(self) -> NDArray[np.float64]:
        """Per-channel standard deviation of the observed values (1 where undefined)."""
        stacked = np.concatenate(self.values)
        with np.errstate(all="ignore"):
            std = np.nanstd(stacked, axis=0)
        return np.where(np.isfinite(std) & (std > 0), std, 1.0)


@dataclass(frozen=True)
class Evaluation:
    version: str
    imputation_mae: float
    imputation_mae_by_mask: dict[str, float]
    false_alarm_rate: float
    scored_ticks: int
    f1: float | None = None
    missed_alarm_rate: float | None = None


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]


def make_masks(
    holdout: Holdout, seed: int = 0, outage: int = 12
) -> dict[str, list[NDArray[np.bool_]]]:
    """Entries to hide per mask kind and device: only entries that were observed."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[NDArray[np.bool_]]] = {"random_20pct": [], f"channel_silent_{outage}": []}
    for values in holdout.values:
        observed = ~np.isnan(values)
        out["random_20pct"].append((rng.random(values.shape) < 0.2) & observed)
        silent = np.zeros(values.shape, dtype=bool)
        t_len, n_ch = values.shape
        for _ in range(max(1, t_len // (4 * outage))):
            if t_len <= outage:
                break
            start = int(rng.integers(0, t_len - outage))
            silent[start : start + outage, int(rng.integers(0, n_ch))] = True
        out[f"channel_silent_{outage}"].append(silent & observed)
    return out


def _columns(holdout: Holdout, model: ModelLike) -> list[int]:
    wanted = model.manifest.channel_names
    missing = [c for c in wanted if c not in holdout.channels]
    if missing:
        raise PipelineError(
            f"model {model.manifest.name}/{model.manifest.version} needs channels {missing} "
            f"that the history lacks (it has {list(holdout.channels)})"
        )
    return [holdout.channels.index(c) for c in wanted]


def evaluate(
    model: ModelLike, holdout: Holdout, masks: dict[str, list[NDArray[np.bool_]]]
) -> Evaluation:
    """Score ``model`` on ``holdout`` as the agent would; see the module docstring."""
    cols = _columns(holdout, model)
    scale = holdout.scale()[cols]
    by_mask: dict[str, float] = {}
    for kind, per_device in masks.items():
        errors = []
        for values, ts, device_mask in zip(holdout.values, holdout.ts_ms, per_device, strict=True):
            hide = device_mask[:, cols]
            if not hide.any():
                continue
            observed = values[:, cols]
            masked = observed.copy()
            masked[hide] = np.nan
            filled = score_series(model, masked, ts, mode="causal", batch=256).values
            per_entry = np.broadcast_to(scale, hide.shape)[hide]
            errors.append(np.abs(filled[hide] - observed[hide]) / per_entry)
        joined = np.concatenate(errors) if errors else np.zeros(0)
        by_mask[kind] = float(np.nanmean(joined)) if joined.size else math.nan
    alarms = normal = tp = fn = fp = 0
    labelled = False
    for values, ts, labels in zip(holdout.values, holdout.ts_ms, holdout.labels, strict=True):
        result = score_series(model, values[:, cols], ts, mode="causal", batch=256)
        scored = np.isfinite(result.score) & ~result.warmup
        truth: NDArray[np.bool_] = np.zeros(len(ts), dtype=bool) if labels is None else labels
        labelled = labelled or labels is not None
        flags = result.anomaly & scored
        normal += int(np.count_nonzero(scored & ~truth))
        alarms += int(np.count_nonzero(flags & ~truth))
        tp += int(np.count_nonzero(flags & truth))
        fn += int(np.count_nonzero(scored & truth & ~result.anomaly))
        fp += int(np.count_nonzero(flags & ~truth))
    f1 = mar = None
    if labelled and tp + fn > 0:
        f1 = 2 * tp / (2 * tp + fp + fn)
        mar = fn / (tp + fn)
    finite = [v for v in by_mask.values() if math.isfinite(v)]
    return Evaluation(
        version=model.manifest.version,
        imputation_mae=float(np.mean(finite)) if finite else math.nan,
        imputation_mae_by_mask=by_mask,
        false_alarm_rate=alarms / normal if normal else math.nan,
        scored_ticks=normal,
        f1=f1,
        missed_alarm_rate=mar,
    )


def decide(challenger: Evaluation, champion: Evaluation | None, tol: Tolerance) -> Decision:
    """Promote unless the challenger is worse than the champion beyond ``tol`` (pure)."""
    if not math.isfinite(challenger.imputation_mae) or not math.isfinite(
        challenger.false_alarm_rate
    ):
        return Decision(False, ("the challenger could not be evaluated on the held-out data",))
    if champion is None:
        return Decision(True, ("no champion yet",))
    reasons, worse = [], False
    mae_limit = champion.imputation_mae * (1 + tol.mae_rel)
    ok = challenger.imputation_mae <= mae_limit
    worse |= not ok
    reasons.append(
        f"imputation MAE {challenger.imputation_mae:.4f} vs champion "
        f"{champion.imputation_mae:.4f} (limit {mae_limit:.4f}): {'ok' if ok else 'worse'}"
    )
    far_limit = champion.false_alarm_rate + tol.far_abs
    ok = challenger.false_alarm_rate <= far_limit
    worse |= not ok
    reasons.append(
        f"false-alarm rate {challenger.false_alarm_rate:.4f} vs champion "
        f"{champion.false_alarm_rate:.4f} (limit {far_limit:.4f}): {'ok' if ok else 'worse'}"
    )
    if challenger.f1 is not None and champion.f1 is not None:
        f1_limit = champion.f1 - tol.f1_abs
        ok = challenger.f1 >= f1_limit
        worse |= not ok
        reasons.append(
            f"F1 {challenger.f1:.3f} vs champion {champion.f1:.3f} (limit {f1_limit:.3f}): "
            f"{'ok' if ok else 'worse'}"
        )
    return Decision(not worse, tuple(reasons))


@dataclass(frozen=True)
class RetrainSettings:
    name: str
    start_ms: int
    end_ms: int
    holdout_from_ms: int
    site: str | None = None
    device: str | None = None
    chunk_ms: int = 86_400_000
    epochs: int = 30
    window: int | None = None  # default: the champion's, else training's default
    seed: int = 0
    tolerance: Tolerance = field(default_factory=Tolerance)
    exclude_flagged: bool = True  # keep ticks the champion flagged out of the training set
    labels: Path | None = None  # CSV/Parquet: timestamp, [device,] anomaly (1 = anomalous)
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.start_ms < self.holdout_from_ms < self.end_ms:
            raise PipelineError(
                f"need --from < --holdout-from < --to; got {format_rfc3339(self.start_ms)}, "
                f"{format_rfc3339(self.holdout_from_ms)}, {format_rfc3339(self.end_ms)}"
            )


@dataclass(frozen=True)
class RetrainOutcome:
    version: str
    decision: Decision
    challenger: Evaluation
    champion: Evaluation | None
    path: Path  # the published version, or where the rejected challenger was kept

    def report(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "promoted": self.decision.promote,
            "reasons": list(self.decision.reasons),
            "challenger": asdict(self.challenger),
            "champion": None if self.champion is None else asdict(self.champion),
            "path": str(self.path),
        }


def _load_holdout(
    path: Path, channels: Sequence[str], tick_seconds: float, labels: Path | None
) -> Holdout:
    from training.data import LoadOptions, load_series, parse_times, read_table

    options = LoadOptions(
        device_column="device", channels=tuple(channels), tick_seconds=tick_seconds
    )
    series = load_series([path], options)
    per_device: list[NDArray[np.bool_] | None] = [None for _ in series]
    if labels is not None:
        table = read_table(labels)
        if "anomaly" not in table.columns or "timestamp" not in table.columns:
            raise PipelineError(f"labels file {labels} needs columns timestamp and anomaly")
        ts = parse_times(table["timestamp"], str(labels))
        marked = table["anomaly"].fillna(0).to_numpy(dtype=np.float64) > 0.5
        devices = table["device"].astype(str).to_numpy() if "device" in table.columns else None
        tick_ms = round(tick_seconds * 1000)
        for i, s in enumerate(series):
            device = s.name.split("/", 1)[-1]
            rows = marked if devices is None else marked & (devices == device)
            flagged = (ts[rows] // tick_ms) * tick_ms
            per_device[i] = np.isin(s.ts_ms, flagged)
    return Holdout(
        channels=tuple(channels),
        values=[s.values for s in series],
        ts_ms=[s.ts_ms for s in series],
        labels=per_device,
    )


def _unused_version(registry: Registry, base: str) -> str:
    """``base``, or ``base.2``, ``base.3`` … when a run in the same second took it already."""
    version, n = base, 1
    while (registry.dir / version).exists() or (registry.dir / ".rejected" / version).exists():
        n += 1
        version = f"{base}.{n}"
    return version


def retrain(
    influx: InfluxPort,
    registry: Registry,
    settings: RetrainSettings,
    *,
    clock: Callable[[], datetime],
    announcer: Announcer | None = None,
) -> RetrainOutcome:
    """Train, judge, publish; see the module docstring. Raise PipelineError on failure."""
    from training.errors import TrainingError

    try:
        return _retrain(influx, registry, settings, clock, announcer)
    except TrainingError as exc:
        raise PipelineError(f"training the challenger failed: {exc}") from exc
    except EdgeError as exc:
        raise PipelineError(f"a bundle could not be loaded or scored: {exc}") from exc


def _retrain(
    influx: InfluxPort,
    registry: Registry,
    settings: RetrainSettings,
    clock: Callable[[], datetime],
    announcer: Announcer | None,
) -> RetrainOutcome:
    from training.data import LoadOptions
    from training.train import TrainConfig
    from training.train_bundle import BundleConfig, default_version, train_bundle

    registry.check_signing(f"retrain and promote {registry.name}")  # before hours of training
    current = current_version_dir(registry.dir)
    champion: Bundle | None = load_bundle(current) if current is not None else None
    channels = champion.manifest.channel_names if champion else find_channels(influx)
    tick = champion.manifest.tick_seconds if champion else None
    window = settings.window or (champion.manifest.window if champion else TrainConfig().window)
    registry.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".retrain-", dir=registry.root))
    try:
        train_file, hold_file = work / "train.parquet", work / "holdout.parquet"
        for path, a, b, flagged in (
            (train_file, settings.start_ms, settings.holdout_from_ms, settings.exclude_flagged),
            (hold_file, settings.holdout_from_ms, settings.end_ms, False),
        ):
            query = HistoryQuery(
                a, b, settings.site, settings.device, settings.chunk_ms, with_anomaly=flagged
            )
            if export_history(influx, query, path, channels).rows == 0:
                raise PipelineError(
                    f"no readings between {format_rfc3339(a)} and {format_rfc3339(b)}; "
                    "widen --from/--to or move --holdout-from"
                )
        version = _unused_version(registry, default_version(clock()))
        config = BundleConfig(
            train=TrainConfig(window=window, epochs=settings.epochs, seed=settings.seed),
            load=LoadOptions(device_column="device", channels=tuple(channels), tick_seconds=tick),
            name=registry.name,
            version=version,
            progress=settings.progress,
            units={c.name: c.unit for c in champion.manifest.channels} if champion else {},
        )
        log.info("retrain.training", extra={"version": version, "channels": list(channels)})
        built = train_bundle([train_file], work / "bundles", config, clock=clock)
        challenger = load_bundle(built)
        holdout = _load_holdout(
            hold_file, channels, challenger.manifest.tick_seconds, settings.labels
        )
        masks = make_masks(holdout, seed=settings.seed, outage=max(2, min(24, window // 2)))
        chal_eval = evaluate(challenger, holdout, masks)
        champ_eval = evaluate(champion, holdout, masks) if champion else None
        decision = decide(chal_eval, champ_eval, settings.tolerance)
        log.info(
            "retrain.decision", extra={"promote": decision.promote, "reasons": decision.reasons}
        )
        if decision.promote:
            path = registry.publish(built)
            evaluation = {
                "challenger": asdict(chal_eval),
                "champion": None if champ_eval is None else asdict(champ_eval),
            }
            registry.promote(version, "retrain: " + "; ".join(decision.reasons), evaluation)
            if announcer is not None:
                announcer.announce(registry.announcement(version))
        else:
            path = registry.reject(built)
        return RetrainOutcome(version, decision, chal_eval, champ_eval, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
