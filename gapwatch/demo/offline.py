"""``gapwatch demo --offline``: the demo's story with no services, in one process.

Each file is replayed the way the agent sees it over MQTT: the simulator's messages (same
injected gaps, :mod:`gapwatch.demo.inputs`) go through the agent's own tick alignment
(:class:`edge.align.DeviceAligner`, event time, ``lateness_ticks`` like ``align.lateness_ticks``)
and then its imputation and scoring core (:func:`edge.series.score_series`, the batch twin of
the agent's :class:`~edge.scorer.DeviceScorer`). When a file ends, the device falls silent: as
the live agent's clock does, its next ``max_gap_ticks`` ticks are imputed and then it is
declared offline. Stored values are the back-fill revision where
one exists, as InfluxDB keeps them after the sink overwrites a tick with its revision.

Needs only the ``edge`` extra (numpy, onnxruntime) and matplotlib for the report.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.align import ClosedTick, DeviceAligner
from edge.bundle import Bundle
from edge.errors import EdgeError
from edge.series import score_series
from edge.simulate import messages
from gapwatch.demo.errors import DataNotFound, DemoError
from gapwatch.demo.inputs import Replay
from gapwatch.demo.render import DeviceTrace
from gapwatch.demo.summary import (
    DemoSummary,
    Outcome,
    detection,
    imputation_rows,
)

__all__ = ["OfflineResult", "replay_device", "run_offline", "write_csv"]


@dataclass(frozen=True)
class OfflineResult:
    summary: DemoSummary
    outcomes: tuple[Outcome, ...]


def _closed_ticks(replay: Replay, bundle: Bundle, lateness_ticks: int) -> list[ClosedTick]:
    m = bundle.manifest
    tick_ms = max(1, round(m.tick_seconds * 1000))
    index = {c: i for i, c in enumerate(m.channel_names)}
    aligner = DeviceAligner(tick_ms, len(index), lateness_ticks, m.max_gap_ticks)
    closed: list[ClosedTick] = []
    newest: int | None = None
    for ts, payload in messages(replay.series, replay.gaps):
        values: dict[str, Any] = payload["values"]  # type: ignore[assignment]
        idx = [index[c] for c in values if c in index]
        vals = [math.nan if v is None else float(v) for c, v in values.items() if c in index]
        if idx:
            # Event time: the reading arrives at its own timestamp (a replay at any speed).
            closed.extend(aligner.add(ts, idx, vals, received_ms=ts).ticks)
            newest = ts if newest is None else max(newest, ts)
    if newest is not None:
        # The stream ends, the device falls silent: like the agent's wall clock, close the
        # silent ticks until the device is declared offline (max_gap_ticks), then nothing.
        quiet = (m.max_gap_ticks + lateness_ticks + 2) * tick_ms
        closed.extend(aligner.advance(newest + quiet).ticks)
    closed.extend(aligner.drain().ticks)
    return closed


def replay_device(
    replay: Replay,
    bundle: Bundle,
    *,
    lateness_ticks: int = 2,
    warmup: int = 0,
    rescale: bool = False,
) -> Outcome:
    """One file through alignment, imputation and scoring; with truth and labels attached."""
    m = bundle.manifest
    tick_ms = max(1, round(m.tick_seconds * 1000))
    missing = [c for c in m.channel_names if c not in replay.series.channels]
    if missing:
        raise DataNotFound(
            f"{replay.path}: lacks the model's channels {missing} (the file has "
            f"{list(replay.series.channels)}); pass --bundle trained on files like it"
        )
    ticks = _closed_ticks(replay, bundle, lateness_ticks)
    if not ticks:
        raise DataNotFound(f"{replay.path}: no tick to score")
    ts = np.array([t.ts_ms for t in ticks], dtype=np.int64)
    vals = np.stack([t.values for t in ticks])
    try:
        res = score_series(bundle, vals, ts, mode="backfill", warmup=warmup, rescale=rescale)
    except EdgeError as exc:
        raise DemoError(f"{replay.device}: scoring failed: {exc}") from exc
    truth, kinds, labels = replay.on_ticks(ts, tick_ms, m.channel_names)
    trace = DeviceTrace(
        device=replay.device,
        ts_ms=ts,
        channels=m.channel_names,
        values=res.values,
        imputed=res.imputed,
        sigma=res.sigma,
        score=res.score,
        threshold=res.threshold,
        anomaly=res.anomaly,
        truth=truth,
        labels=labels,
        smoothed=res.smoothed,
        extra={"warmup": res.warmup},
    )
    return Outcome(trace, kinds, m.scale)


def run_offline(
    replays: Sequence[Replay],
    bundle: Bundle,
    *,
    clock: Callable[[], float],
    lateness_ticks: int = 2,
    warmup: int = 0,
    rescale: bool = False,
    progress: Callable[[Iterable[Replay]], Iterable[Replay]] = lambda it: it,
) -> OfflineResult:
    """Replay every file; counts come from the replay's own arrays."""
    started = clock()
    outcomes = tuple(
        replay_device(r, bundle, lateness_ticks=lateness_ticks, warmup=warmup, rescale=rescale)
        for r in progress(replays)
    )
    seconds = max(clock() - started, 1e-9)
    traces = [o.trace for o in outcomes]
    ticks = sum(len(t.ts_ms) for t in traces)
    m = bundle.manifest
    notes = [
        f"when a file ends its device falls silent: its next {m.max_gap_ticks} ticks are "
        "imputed (no truth there), then it is declared offline, as the live agent does"
    ]
    if warmup:
        notes.append(f"first {warmup} ticks per device are warm-up (no alarms)")
    summary = DemoSummary(
        mode="offline",
        model=f"{m.name}/{m.version}",
        devices=len(replays),
        messages=sum(r.messages for r in replays),
        readings=sum(r.readings for r in replays),
        ticks=ticks,
        scored_ticks=int(sum(np.isfinite(t.score).sum() for t in traces)),
        imputed_entries=int(sum(t.imputed.sum() for t in traces)),
        anomaly_ticks=int(sum(t.anomaly.sum() for t in traces)),
        imputation=imputation_rows(outcomes),
        detection=detection(traces),
        latency=None,
        throughput_ticks_s=ticks / seconds,
        seconds=seconds,
        counts_from="counted in the replay",
        notes=tuple(notes),
    )
    return OfflineResult(summary, outcomes)


def _cell(v: float) -> str:
    return "" if not math.isfinite(v) else repr(float(v))


def write_csv(path: Path, outcomes: Sequence[Outcome]) -> int:
    """All devices in one table, one row per stored tick; returns the rows written.

    Columns: timestamp (epoch ms, UTC), device, per channel ``<ch>``, ``<ch>_imputed``,
    ``<ch>_sigma``, ``<ch>_truth`` (the withheld true value), then score, smoothed, threshold,
    anomaly, label.
    """
    if not outcomes:
        return 0
    ch = outcomes[0].trace.channels
    header = ["ts_ms", "device", *ch]
    header += [f"{c}_imputed" for c in ch] + [f"{c}_sigma" for c in ch]
    header += [f"{c}_truth" for c in ch]
    header += ["score", "smoothed", "threshold", "anomaly", "label"]
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for o in outcomes:
            tr = o.trace
            truth = tr.truth if tr.truth is not None else np.full(tr.values.shape, np.nan)
            labels = tr.labels if tr.labels is not None else np.full(len(tr.ts_ms), np.nan)
            smoothed = tr.smoothed if tr.smoothed is not None else np.full(len(tr.ts_ms), np.nan)
            for i in range(len(tr.ts_ms)):
                w.writerow(
                    [
                        int(tr.ts_ms[i]),
                        tr.device,
                        *(_cell(v) for v in tr.values[i]),
                        *(str(int(v)) for v in tr.imputed[i]),
                        *(_cell(v) for v in tr.sigma[i]),
                        *(_cell(v) for v in truth[i]),
                        _cell(tr.score[i]),
                        _cell(smoothed[i]),
                        _cell(tr.threshold[i]),
                        str(int(tr.anomaly[i])),
                        _cell(labels[i]),
                    ]
                )
                n += 1
    return n
