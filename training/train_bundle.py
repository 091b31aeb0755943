"""``train_bundle``: history in, verified model bundle out. The one entry point other code calls.

Steps: load the series (files or :class:`~training.data.Series`), keep the chronologically
last ``holdout`` fraction of each for calibration, fit per-channel scaling on the rest
(labelled-anomalous ticks excluded), train the VAE, export it to ONNX and check parity with
onnxruntime, calibrate the alarm threshold by running that ONNX graph through
:mod:`edge.scorer` on the held-out part, measure held-out NLL and imputation error, and write
``<out_root>/<name>/<version>/`` through :func:`edge.bundle.write_bundle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.bundle import (
    FORMAT_VERSION,
    INPUT_NAMES,
    OUTPUT_NAMES,
    Bundle,
    Channel,
    Manifest,
    ThresholdSpec,
    write_bundle,
)
from edge.scorer import fit_scaling
from training.calibrate import Holdout, calibrate_threshold, holdout_report
from training.data import LoadOptions, Series, load_series
from training.errors import DataError, TrainingError
from training.export import DEFAULT_OPSET, ExportResult, export_checked
from training.train import TrainConfig, TrainResult, train_vae
from training.windows import WindowSet, make_windows

__all__ = ["BundleConfig", "default_version", "train_bundle"]

log = logging.getLogger(__name__)

SCORE_MEANING = (
    "Gaussian negative log-likelihood (scaled units, natural log) of the tick's observed "
    "entries under the VAE's decoded mean/variance for the window ending at that tick, "
    "averaged per observed entry; higher = more anomalous; none when nothing was observed"
)


@dataclass(frozen=True)
class BundleConfig:
    """Everything ``gapwatch train`` can set; defaults are the documented ones."""

    train: TrainConfig = field(default_factory=TrainConfig)
    load: LoadOptions = field(default_factory=LoadOptions)
    holdout: float = 0.2  # last fraction of each series, for calibration and checks
    false_alarm_rate: float = 0.01
    ewma_alpha: float = 0.1
    backfill_delay: int | None = None  # default: window // 4
    max_gap_ticks: int | None = None  # default: window
    warmup_margin: float = 0.0  # widens per-device warm-up thresholds (edge.threshold.calibrate)
    name: str | None = None  # default: stem of the first file / name of the first series
    version: str | None = None  # default: UTC time, e.g. 20261125T143000Z
    opset: int = DEFAULT_OPSET
    units: Mapping[str, str] = field(default_factory=dict)
    progress: bool = True


def default_version(now: datetime) -> str:
    """A version that sorts by time: ``YYYYMMDDTHHMMSSZ`` (UTC)."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _load(sources: Sequence[str | Path | Series], options: LoadOptions) -> list[Series]:
    series: list[Series] = []
    paths = [s for s in sources if not isinstance(s, Series)]
    given = [s for s in sources if isinstance(s, Series)]
    if paths:
        series.extend(load_series(paths, options))
    for s in given:
        series.append(s.select(options.channels) if options.channels else s)
    if not series:
        raise DataError("no training data given")
    first = series[0]
    for s in series[1:]:
        if s.channels != first.channels:
            raise DataError(
                f"{s.name}: channels {list(s.channels)} differ from {first.name}'s "
                f"{list(first.channels)}; pick common ones with --channels"
            )
        if abs(s.tick_seconds - first.tick_seconds) > 1e-9:
            raise DataError(
                f"{s.name}: tick {s.tick_seconds} s differs from {first.name}'s "
                f"{first.tick_seconds} s; set one with --tick"
            )
    return series


def _producer() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from edge.cli.dispatch import installed_version

    return {
        "gapwatch": installed_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def _policy(cfg: BundleConfig) -> tuple[int, int]:
    """``(backfill delay, max gap ticks)`` of the bundle, defaults filled in and checked."""
    w = cfg.train.window
    if not 0.0 < cfg.holdout < 1.0:
        raise TrainingError(f"holdout must be in (0, 1), got {cfg.holdout}")
    backfill = w // 4 if cfg.backfill_delay is None else cfg.backfill_delay
    max_gap = w if cfg.max_gap_ticks is None else cfg.max_gap_ticks
    if not 0 <= backfill < w:
        raise TrainingError(f"backfill delay {backfill} must be in [0, window {w})")
    return backfill, max_gap


@dataclass(frozen=True)
class _Split:
    """Each series cut in time: its first ``splits[i]`` ticks train, the rest is held out."""

    series: list[Series]
    splits: list[int]
    train_parts: list[Series]

    @classmethod
    def of(cls, series: list[Series], holdout: float, window: int) -> _Split:
        splits = [max(window, len(s) - round(holdout * len(s))) for s in series]
        parts = [s.slice(0, k) for s, k in zip(series, splits, strict=True)]
        return cls(series, splits, parts)

    def holdouts(self, window: int) -> list[Holdout]:
        held = [
            Holdout(s.values, s.ts_ms, k, s.anomalous)
            for s, k in zip(self.series, self.splits, strict=True)
            if k < len(s)
        ]
        if not held:
            raise TrainingError(
                f"no held-out ticks: every series is at most one window ({window} ticks) long"
            )
        return held


def _train_windows(
    parts: Sequence[Series], tc: TrainConfig
) -> tuple[NDArray[np.float64], NDArray[np.float64], WindowSet]:
    """``(center, scale, windows)``: scaling fitted on the normal train rows, then windowed."""
    normal_rows = [p.values[~p.anomalous] for p in parts]
    center, scale = fit_scaling(np.concatenate(normal_rows))
    windows = make_windows(
        [p.values for p in parts],
        center,
        scale,
        tc.window,
        exclude=[p.anomalous for p in parts],
        min_observed=tc.min_observed,
    )
    return center, scale, windows


def _draft(
    cfg: BundleConfig,
    *,
    name: str,
    version: str,
    created_at: datetime,
    channels: tuple[Channel, ...],
    tick_seconds: float,
    policy: tuple[int, int],
    opset: int,
) -> Manifest:
    """The manifest before calibration: threshold infinite, no training or evaluation record."""
    backfill, max_gap = policy
    return Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        version=version,
        created_at=created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        channels=channels,
        tick_seconds=tick_seconds,
        window=cfg.train.window,
        max_gap_ticks=max_gap,
        backfill_delay=backfill,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=opset,
        score=SCORE_MEANING,
        threshold=ThresholdSpec(float("inf"), float("inf"), cfg.ewma_alpha, cfg.false_alarm_rate),
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer=_producer(),
        extra={"scoring": {"top_k": 3, "top_z": 2.0, "warmup_margin": cfg.warmup_margin}},
    )


def _session_bundle(onnx_bytes: bytes, manifest: Manifest, out_root: str | Path) -> Bundle:
    """The exported graph in onnxruntime (one thread) behind the draft manifest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return Bundle(path=Path(out_root), manifest=manifest, session=session)


def _training_record(
    split: _Split,
    windows: int,
    tc: TrainConfig,
    *,
    result: TrainResult,
    exported: ExportResult,
    seconds: float,
) -> dict[str, Any]:
    """The manifest's ``training`` section: data, split, hyperparameters, losses, export."""
    series = split.series
    return {
        "sources": [s.source or s.name for s in series],
        "series": [s.name for s in series],
        "time_range": [
            _rfc3339(int(min(s.ts_ms[0] for s in series))),
            _rfc3339(int(max(s.ts_ms[-1] for s in series))),
        ],
        "ticks": int(sum(len(s) for s in series)),
        "train_ticks": int(sum(len(p) for p in split.train_parts)),
        "heldout_ticks": int(sum(len(s) - k for s, k in zip(series, split.splits, strict=True))),
        "train_windows": windows,
        "excluded_anomalous_ticks": int(sum(int(s.anomalous.sum()) for s in series)),
        "scaling": "median / (IQR / 1.349) of training observations",
        "seed": tc.seed,
        "hyperparameters": asdict(tc),
        "epoch_losses": [round(v, 5) for v in result.epoch_losses],
        "exporter": exported.exporter,
        "onnx_parity_max_abs_diff": exported.max_abs_diff,
        "seconds": round(seconds, 2),
    }


def train_bundle(
    sources: Sequence[str | Path | Series],
    out_root: str | Path,
    config: BundleConfig | None = None,
    *,
    clock: Callable[[], datetime] = _utc_now,
) -> Path:
    """Train, export, verify, calibrate and write a bundle; return its directory."""
    cfg = config or BundleConfig()
    w = cfg.train.window
    backfill, max_gap = policy = _policy(cfg)
    series = _load(sources, cfg.load)
    started = time.perf_counter()
    name = cfg.name or series[0].name.replace("/", "-").replace(" ", "_")
    version = cfg.version or default_version(clock())

    split = _Split.of(series, cfg.holdout, w)
    center, scale, windows = _train_windows(split.train_parts, cfg.train)
    log.info("train.start", extra={"bundle": f"{name}/{version}", "windows": len(windows)})
    # The edge reads the newest tick and the back-fill tick of each window: the entry head is
    # trained and exported for those two positions (training.model.Decoder.restrict_entry_head).
    tc = replace(cfg.train, entry_rows=(w - 1 - backfill, w - 1))
    result = train_vae(windows, len(series[0].channels), tc, progress=cfg.progress)

    pick = np.linspace(0, len(windows) - 1, num=min(256, len(windows))).astype(np.int64)
    x_check, obs_check = windows.gather(pick)
    exported = export_checked(result.model, x_check, obs_check.astype(np.float32), opset=cfg.opset)

    channels = tuple(
        Channel(c, cfg.units.get(c, ""), float(m), float(s))
        for c, m, s in zip(series[0].channels, center, scale, strict=True)
    )
    holdouts = split.holdouts(w)
    draft = _draft(
        cfg,
        name=name,
        version=version,
        created_at=clock(),
        channels=channels,
        tick_seconds=series[0].tick_seconds,
        policy=policy,
        opset=exported.opset,
    )
    model = _session_bundle(exported.onnx_bytes, draft, out_root)
    context = 4 * w
    threshold, _ = calibrate_threshold(
        model, holdouts, cfg.false_alarm_rate, alpha=cfg.ewma_alpha, context=context
    )
    evaluation = holdout_report(
        model,
        holdouts,
        context=context,
        outage_length=max(1, min(24, w // 2, max_gap)),
        seed=tc.seed,
    )
    seconds = time.perf_counter() - started
    training = _training_record(
        split, len(windows), tc, result=result, exported=exported, seconds=seconds
    )
    manifest = replace(draft, threshold=threshold, training=training, evaluation=evaluation)
    path = write_bundle(out_root, manifest, exported.onnx_bytes)
    log.info("train.bundle_written", extra={"path": str(path), "seconds": round(seconds, 2)})
    return path
