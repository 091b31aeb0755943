"""The demo's HTML report: its summary, tables by gap kind and by device, and the plots.

Beside ``report.html`` it writes ``series.png``: the first device's plot on its own (small), for
documentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gapwatch.demo.render import DeviceTrace, render_report, series_png
from gapwatch.demo.summary import DemoSummary, Outcome, summary_pairs

__all__ = ["device_rows", "headline_trace", "write_report"]


def _f(v: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def device_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    """Per device: ticks, imputed entries, withheld-and-imputed MAE, flagged and labelled ticks."""
    rows = []
    for o in outcomes:
        tr = o.trace
        scored = tr.imputed & np.isfinite(tr.truth) if tr.truth is not None else tr.imputed & False
        mae = math.nan
        if tr.truth is not None and scored.any():
            scale = np.broadcast_to(o.scale, tr.values.shape)[scored]
            mae = float(np.mean(np.abs(tr.values[scored] - tr.truth[scored]) / scale))
        labelled = int(np.nansum(tr.labels > 0.5)) if tr.labels is not None else 0
        rows.append(
            [
                tr.device,
                f"{len(tr.ts_ms):,}",
                f"{int(tr.imputed.sum()):,}",
                _f(mae),
                f"{int(tr.anomaly.sum()):,}",
                f"{labelled:,}",
            ]
        )
    return rows


def headline_trace(outcomes: Sequence[Outcome]) -> DeviceTrace | None:
    """The device the report shows first: labelled anomalies, then the most imputed entries."""
    ranked = sorted(
        (o.trace for o in outcomes),
        key=lambda tr: (
            -(tr.labels is not None and bool(np.nansum(tr.labels > 0.5))),
            -int(tr.imputed.sum()),
        ),
    )
    return ranked[0] if ranked else None


def write_report(
    path: Path,
    title: str,
    summary: DemoSummary,
    outcomes: Sequence[Outcome],
    extra: Sequence[tuple[str, str]] = (),
) -> Path:
    """Render and write the self-contained HTML report; return its path."""
    imputation = [
        [r.kind, f"{r.entries:,}", _f(r.vae), _f(r.locf), _f(r.linear)] for r in summary.imputation
    ]
    tables = {
        "Imputation error on withheld values (MAE, z units of the bundle's scaling)": (
            ("gap kind", "entries", "gapwatch (stored)", "LOCF (causal)", "linear (non-causal)"),
            imputation,
        ),
        "Devices": (
            ("device", "ticks", "imputed", "MAE z", "flagged ticks", "labelled ticks"),
            device_rows(outcomes),
        ),
    }
    notes = [
        *summary.notes,
        "Stored values are the latest revision of each tick: the delayed back-fill where one "
        "exists, else the causal imputation. LOCF and linear interpolation use the same "
        "observed values the pipeline saw.",
    ]
    html = render_report(
        title,
        summary_pairs(summary) + list(extra),
        [o.trace for o in outcomes],
        tables=tables,
        notes=notes,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    top = headline_trace(outcomes)
    if top is not None:  # the same plot as a PNG of its own, small enough for docs
        (path.parent / "series.png").write_bytes(series_png(top))
    return path
