"""A self-contained HTML report of a scored replay: summary tables and plots.

Pure rendering: takes per-device arrays and a summary, returns one HTML string with the
plots embedded as PNG data URIs (matplotlib, Agg backend), so the file opens anywhere with
no server and no internet.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DeviceTrace", "render_report", "series_png"]


@dataclass(frozen=True)
class DeviceTrace:
    """What the report needs of one device's scored stream (T ticks, C channels)."""

    device: str
    ts_ms: np.ndarray  # [T] int64
    channels: tuple[str, ...]
    values: np.ndarray  # [T, C] observed or imputed, original units
    imputed: np.ndarray  # [T, C] bool
    sigma: np.ndarray  # [T, C] σ where imputed, NaN elsewhere
    score: np.ndarray  # [T] NaN where nothing observed
    threshold: np.ndarray  # [T]
    anomaly: np.ndarray  # [T] bool
    truth: np.ndarray | None = None  # [T, C] withheld true values, NaN where not withheld
    labels: np.ndarray | None = None  # [T] 1 inside labelled anomalies
    smoothed: np.ndarray | None = None  # [T]
    extra: Mapping[str, Any] = field(default_factory=dict)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where mask is true."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _label_mask(labels: np.ndarray) -> np.ndarray:
    """Labelled ticks for display; a tick without a label (NaN) takes the previous one."""
    lab = np.asarray(labels, dtype=np.float64)
    idx = np.where(np.isfinite(lab), np.arange(lab.size), -1)
    np.maximum.accumulate(idx, out=idx)
    filled = np.where(idx >= 0, lab[np.maximum(idx, 0)], 0.0)
    return np.asarray(filled > 0.5, dtype=bool)


def _score_limits(trace: DeviceTrace, score: np.ndarray) -> tuple[float, float] | None:
    """A y range that shows the bulk of the score and the threshold, not the outliers."""
    finite = score[np.isfinite(score)]
    thr = trace.threshold[np.isfinite(trace.threshold)]
    if finite.size == 0:
        return None
    lo = float(np.quantile(finite, 0.005))
    hi = float(np.quantile(finite, 0.99))
    if thr.size:
        hi = max(hi, float(np.median(thr)))
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _figure_series(trace: DeviceTrace, max_channels: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = (trace.ts_ms - trace.ts_ms[0]) / 1000.0 / 60.0  # minutes since start
    # Show the channels with the most imputed entries first: that is where the story is.
    order = np.argsort(-trace.imputed.sum(axis=0), kind="stable")[:max_channels]
    rows = len(order) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 1.9 * rows), sharex=True)
    for ax, c in zip(axes[:-1], order, strict=False):
        v = trace.values[:, c]
        imp = trace.imputed[:, c]
        sig = np.nan_to_num(trace.sigma[:, c], nan=0.0)
        observed = np.where(imp, np.nan, v)
        ax.plot(t, observed, lw=0.8, color="#1f4e79", label="observed")
        lo, hi = v - 2 * sig, v + 2 * sig
        ax.fill_between(t, lo, hi, where=imp, color="#f28e2b", alpha=0.3, lw=0, label="±2σ")
        ax.scatter(t[imp], v[imp], s=4, color="#d9480f", label="imputed", zorder=3)
        if trace.truth is not None:
            tr = trace.truth[:, c]
            ok = np.isfinite(tr)
            ax.scatter(t[ok], tr[ok], s=3, color="#2b8a3e", label="withheld truth", zorder=2)
        if trace.labels is not None:
            for a, b in _segments(_label_mask(trace.labels)):
                ax.axvspan(t[a], t[min(b, len(t) - 1)], color="#e03131", alpha=0.07, lw=0)
        ax.set_ylabel(trace.channels[c], fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    ax = axes[-1]
    score = trace.smoothed if trace.smoothed is not None else trace.score
    ax.plot(t, score, lw=0.8, color="#5f3dc4", label="score (smoothed)")
    ax.plot(t, trace.threshold, lw=0.8, color="#e03131", ls="--", label="threshold")
    for a, b in _segments(trace.anomaly):
        ax.axvspan(t[a], t[min(b, len(t) - 1)], color="#e03131", alpha=0.25, lw=0)
    if trace.labels is not None:
        for a, b in _segments(_label_mask(trace.labels)):
            ax.axvspan(t[a], t[min(b, len(t) - 1)], ymax=0.08, color="#000000", alpha=0.5, lw=0)
    limits = _score_limits(trace, score)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_ylabel("score", fontsize=8)
    ax.set_xlabel("minutes since start (red: flagged; black bar: labelled anomaly)", fontsize=8)
    ax.legend(loc="upper right", fontsize=7)
    ax.tick_params(labelsize=7)
    fig.suptitle(trace.device, fontsize=10)
    return fig


def _series_figure(trace: DeviceTrace, max_channels: int) -> str:
    import matplotlib.pyplot as plt

    fig = _figure_series(trace, max_channels)
    uri = _png(fig)
    plt.close(fig)
    return uri


def series_png(trace: DeviceTrace, max_channels: int = 3, dpi: int = 70) -> bytes:
    """One device's series figure as PNG bytes (for docs; the report embeds the same plot)."""
    import matplotlib.pyplot as plt

    fig = _figure_series(trace, max_channels)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _score_hist(traces: Sequence[DeviceTrace]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normal, anomalous = [], []
    for tr in traces:
        if tr.labels is None:
            normal.append(tr.score)
            continue
        normal.append(tr.score[tr.labels == 0])
        anomalous.append(tr.score[tr.labels > 0])
    norm = np.concatenate(normal) if normal else np.array([])
    anom = np.concatenate(anomalous) if anomalous else np.array([])
    norm, anom = norm[np.isfinite(norm)], anom[np.isfinite(anom)]
    if norm.size == 0 and anom.size == 0:
        return None
    both = np.concatenate([norm, anom])
    hi = float(np.quantile(both, 0.99))
    lo = float(np.min(both))
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 60)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.hist(
        np.clip(norm, lo, hi), bins=bins.tolist(), alpha=0.6, density=True, label="normal (labels)"
    )
    if anom.size:
        ax.hist(
            np.clip(anom, lo, hi),
            bins=bins.tolist(),
            alpha=0.6,
            density=True,
            label="labelled anomaly",
        )
    thr = np.concatenate([tr.threshold for tr in traces])
    ax.axvline(float(np.nanmedian(thr)), color="#e03131", ls="--", label="median threshold")
    ax.set_xlabel(f"per-tick score (NLL per observed entry; values above {hi:.3g} in the last bin)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    uri = _png(fig)
    plt.close(fig)
    return uri


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#212529}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #dee2e6;padding:.25rem .6rem;
font-size:.9rem;text-align:left} th{background:#f1f3f5} img{max-width:100%} .note{color:#495057}
"""


def render_report(
    title: str,
    summary: Sequence[tuple[str, str]],
    traces: Sequence[DeviceTrace],
    *,
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] | None = None,
    notes: Sequence[str] = (),
    max_devices: int = 4,
    max_channels: int = 4,
) -> str:
    """Render the report. ``summary`` is (label, value) pairs; ``tables`` titled extra tables."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _table(summary, ("figure", "value")),
    ]
    for note in notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for name, (header, rows) in (tables or {}).items():
        parts += [f"<h2>{html.escape(name)}</h2>", _table(rows, header)]
    hist = _score_hist(traces)
    if hist is not None:
        parts += ["<h2>Score distributions</h2>", f"<img alt='score histogram' src='{hist}'>"]
    # Devices with labelled anomalies and imputed entries first.
    ranked = sorted(
        traces,
        key=lambda tr: (
            -(tr.labels is not None and bool(np.any(tr.labels > 0))),
            -tr.imputed.sum(),
        ),
    )
    for trace in ranked[:max_devices]:
        parts += [
            f"<h2>{html.escape(trace.device)}</h2>",
            f"<img alt='series of {html.escape(trace.device)}' "
            f"src='{_series_figure(trace, max_channels)}'>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
