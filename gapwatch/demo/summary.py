"""The demo's numbers (pure: arrays in, values out) and the text a person reads in ten seconds.

Imputation is scored on the entries the replay withheld and the pipeline imputed, in z units
(the bundle's per-channel scale, so channels of different units average fairly), against two
baselines computed from the same observed values the pipeline saw:

- LOCF, last observation carried forward (causal, like the agent's first answer);
- linear interpolation between the neighbouring observations (non-causal, like the back-fill).

Detection is point-wise, never point-adjusted (``training.metrics``): precision, recall, F1,
false-alarm rate FP / negatives, and the delay from each labelled segment's start to the first
alarm inside it. Ticks without a label (no row in the file) and warm-up ticks (a trace's
``extra["warmup"]``: no alarms there, like SKAB's first 400 rows) are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from gapwatch.demo.inputs import KIND_NAMES
from gapwatch.demo.render import DeviceTrace
from training.metrics import Confusion, confusion, detection_delays

__all__ = [
    "DemoSummary",
    "Detection",
    "ImputationRow",
    "Latency",
    "Outcome",
    "detection",
    "imputation_rows",
    "latency",
    "linear_fill",
    "locf",
    "render_text",
    "summary_pairs",
]


@dataclass(frozen=True)
class Outcome:
    """One device after the replay: its scored trace and the kind of every withheld entry."""

    trace: DeviceTrace  # truth: withheld values (NaN elsewhere); labels: per tick, NaN = none
    kinds: NDArray[np.int8]  # [T, C] KIND_* where the replay withheld the entry, else 0
    scale: NDArray[np.float64]  # [C] the bundle's channel scale (z units)


@dataclass(frozen=True)
class ImputationRow:
    kind: str  # "all" or one of KIND_NAMES
    entries: int  # imputed entries whose true value was withheld
    vae: float  # MAE, z units
    locf: float
    linear: float


@dataclass(frozen=True)
class Detection:
    labelled_ticks: int
    counts: Confusion
    segments: int
    detected: int
    mean_delay_s: float  # over detected segments; NaN when none


@dataclass(frozen=True)
class Latency:
    samples: int
    p50_s: float
    p99_s: float
    resolution_s: float  # how often visibility was polled


@dataclass(frozen=True)
class DemoSummary:
    mode: str  # "online" or "offline"
    model: str  # name/version
    devices: int
    messages: int  # published (online) or replayed (offline) messages
    readings: int  # channel values in those messages
    ticks: int  # ticks stored / scored
    scored_ticks: int  # ticks with a score (something observed)
    imputed_entries: int
    anomaly_ticks: int
    imputation: tuple[ImputationRow, ...]
    detection: Detection | None
    latency: Latency | None
    throughput_ticks_s: float
    seconds: float  # wall time of the replay
    counts_from: str  # where ticks/imputed/anomalies were counted, e.g. "InfluxQL on db x"
    notes: tuple[str, ...] = field(default_factory=tuple)
    received: int | None = None  # messages the agent took (its Prometheus counter), online


def locf(values: NDArray[np.float64], observed: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Last observation carried forward, per column [T, C]; NaN before the first one."""
    t_len = values.shape[0]
    idx = np.where(observed, np.arange(t_len)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    cols = np.arange(values.shape[1])[None, :]
    out = values[np.maximum(idx, 0), cols]
    return np.where(idx >= 0, out, np.nan)


def linear_fill(
    ts_ms: NDArray[np.int64], values: NDArray[np.float64], observed: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Linear interpolation in time between observations, per column; LOCF/NOCB at the ends."""
    out = np.full(values.shape, np.nan)
    t = ts_ms.astype(np.float64)
    for c in range(values.shape[1]):
        ok = observed[:, c]
        if ok.any():
            out[:, c] = np.interp(t, t[ok], values[ok, c])
    return out


def imputation_rows(outcomes: Sequence[Outcome]) -> tuple[ImputationRow, ...]:
    """MAE (z units) of the pipeline, LOCF and linear on withheld-and-imputed entries."""
    errs: dict[int, list[NDArray[np.float64]]] = {k: [] for k in KIND_NAMES}
    for o in outcomes:
        tr = o.trace
        if tr.truth is None:
            continue
        observed = ~tr.imputed & np.isfinite(tr.values)
        base_locf = locf(tr.values, observed)
        base_lin = linear_fill(tr.ts_ms, tr.values, observed)
        scored = tr.imputed & np.isfinite(tr.truth) & np.isfinite(base_locf)
        for kind in KIND_NAMES:
            mask = scored & (o.kinds == kind)
            if not mask.any():
                continue
            scale = np.broadcast_to(o.scale, tr.values.shape)[mask]
            truth = tr.truth[mask]
            errs[kind].append(
                np.stack(
                    [
                        np.abs(tr.values[mask] - truth) / scale,
                        np.abs(base_locf[mask] - truth) / scale,
                        np.abs(base_lin[mask] - truth) / scale,
                    ]
                )
            )
    rows = []
    every = [e for parts in errs.values() for e in parts]
    for name, parts in [("all", every), *[(KIND_NAMES[k], errs[k]) for k in KIND_NAMES]]:
        if not parts:
            rows.append(ImputationRow(name, 0, math.nan, math.nan, math.nan))
            continue
        e = np.concatenate(parts, axis=1)
        rows.append(ImputationRow(name, int(e.shape[1]), *(float(v) for v in e.mean(axis=1))))
    return tuple(rows)


def detection(traces: Sequence[DeviceTrace]) -> Detection | None:
    """Point-wise detection over every labelled tick of every device; None without labels."""
    labels, flags = [], []
    delays: list[float | None] = []
    for tr in traces:
        if tr.labels is None:
            continue
        ok = np.isfinite(tr.labels)
        warm = tr.extra.get("warmup")
        if warm is not None:  # like SKAB's protocol: the calibration ticks are not scored
            ok &= ~np.asarray(warm, dtype=bool)
        if not ok.any():
            continue
        y = tr.labels[ok] > 0.5
        p = tr.anomaly[ok]
        labels.append(y)
        flags.append(p)
        delays += detection_delays(y, p, tr.ts_ms[ok] / 1000.0)
    if not labels:
        return None
    counts = confusion(np.concatenate(labels), np.concatenate(flags))
    found = [d for d in delays if d is not None]
    return Detection(
        labelled_ticks=int(sum(len(y) for y in labels)),
        counts=counts,
        segments=len(delays),
        detected=len(found),
        mean_delay_s=float(np.mean(found)) if found else math.nan,
    )


def latency(samples_s: NDArray[np.float64], resolution_s: float) -> Latency | None:
    """p50/p99 of per-tick latencies in seconds; None without samples."""
    s = np.asarray(samples_s, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    p50, p99 = np.quantile(s, [0.5, 0.99])
    return Latency(int(s.size), float(p50), float(p99), resolution_s)


def _n(v: int) -> str:
    return f"{v:,}"


def _f(v: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{100 * v:.1f} %"


def summary_pairs(s: DemoSummary) -> list[tuple[str, str]]:
    """(label, value) lines: the printed summary and the report's first table."""
    pairs = [
        ("model", f"{s.model} on {s.devices} devices ({s.mode})"),
        (
            "readings in",
            f"{_n(s.readings)} values in {_n(s.messages)} messages"
            + ("" if s.received is None else f"; the agent received {_n(s.received)}"),
        ),
        (
            "ticks scored",
            f"{_n(s.ticks)} stored, {_n(s.scored_ticks)} with a score ({s.counts_from})",
        ),
    ]
    rows = {r.kind: r for r in s.imputation}
    every = rows.get("all")
    imputed = f"{_n(s.imputed_entries)} entries"
    if every is not None and every.entries:
        imputed += (
            f"; on {_n(every.entries)} withheld: MAE {_f(every.vae)} z "
            f"vs LOCF {_f(every.locf)}, linear {_f(every.linear)}"
        )
    pairs.append(("gaps imputed", imputed))
    for r in s.imputation:
        if r.kind != "all" and r.entries:
            pairs.append(
                (
                    f"  {r.kind}",
                    f"{_n(r.entries)}: VAE {_f(r.vae)}, LOCF {_f(r.locf)}, linear {_f(r.linear)}",
                )
            )
    flagged = f"{_n(s.anomaly_ticks)} ticks"
    if s.detection is not None:
        d, c = s.detection, s.detection.counts
        flagged += (
            f"; vs labels: precision {_f(c.precision, 2)}, recall {_f(c.recall, 2)}, "
            f"F1 {_f(c.f1, 2)}, false alarms {_pct(c.far)}"
        )
        pairs.append(("anomalies flagged", flagged))
        pairs.append(
            (
                "  detection delay",
                f"mean {_f(d.mean_delay_s, 1)} s over {d.detected}/{d.segments} labelled "
                "segments detected",
            )
        )
    else:
        pairs.append(("anomalies flagged", flagged + " (no labels to score against)"))
    if s.latency is not None:
        lat = s.latency
        pairs.append(
            (
                "latency",
                f"p50 {_f(lat.p50_s, 2)} s, p99 {_f(lat.p99_s, 2)} s MQTT publish -> queryable "
                f"in InfluxDB ({_n(lat.samples)} ticks, polled every {lat.resolution_s:g} s)",
            )
        )
    how = (
        "stored, paced by the replay (capacity: gapwatch bench e2e)"
        if s.mode == "online"
        else "through alignment, imputation and scoring in one process"
    )
    pairs.append(
        ("throughput", f"{_n(round(s.throughput_ticks_s))} ticks/s over {s.seconds:.1f} s, {how}")
    )
    return pairs


def render_text(s: DemoSummary, extra: Sequence[tuple[str, str]] = ()) -> str:
    """The summary as aligned ``label  value`` lines."""
    pairs = summary_pairs(s) + list(extra)
    width = max(len(k) for k, _ in pairs)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in pairs]
    lines += [f"  note: {n}" for n in s.notes]
    return "\n".join(lines)
