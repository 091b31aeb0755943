"""Evaluation reports as text: aligned tables for the terminal, markdown for files.

Pure string rendering of :class:`training.evaluate.ImputationReport` and
:class:`training.evaluate_anomaly.AnomalyReport`; shared by ``gapwatch evaluate`` and
``gapwatch bench``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.evaluate import ImputationReport
from training.evaluate_anomaly import LEADERBOARD, AnomalyReport

__all__ = ["render_anomaly", "render_imputation", "table", "write_reports"]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Rows of cells as an aligned text table, or a markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *rows])


def _num(v: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def render_imputation(report: ImputationReport, markdown: bool = False) -> str:
    """MAE (÷LOCF, ÷linear) per method × mask type, then RMSE."""
    masks = report.mask_types
    head = ["method", "causal", *(report.mask_labels[m] for m in masks)]
    mae_rows, rmse_rows = [], []
    for m in report.methods:
        cells = []
        for k in masks:
            ratios = [report.ratio(m.name, k, ref) for ref in ("locf", "linear")]
            extra = " ".join(f"×{_num(r, 2)}" for r in ratios if math.isfinite(r))
            cells.append(
                f"{_num(report.mae[m.name][k])} ({extra})" if extra else _num(report.mae[m.name][k])
            )
        causal = "yes" if m.causal else "no"
        mae_rows.append([m.name, causal, *cells])
        rmse_rows.append([m.name, causal, *(_num(report.rmse[m.name][k]) for k in masks)])
    s = report.setup
    title = (
        f"Imputation MAE in z units ({s['scaling']} scaling), mean over {s['seeds']} seed(s); "
        "in brackets the ratio to LOCF, then to linear interpolation"
    )
    parts = [
        title,
        table(head, mae_rows, markdown),
        "",
        "RMSE in z units",
        table(head, rmse_rows, markdown),
    ]
    parts += ["", *(f"note: {n}" for n in report.notes)]
    return "\n".join(parts)


def render_anomaly(report: AnomalyReport, markdown: bool = False) -> str:
    """One row per method with F1/FAR/MAR, AUCs, NAB, delay and false alarms per hour."""
    head = [
        "method",
        "F1",
        "FAR %",
        "MAR %",
        "ROC-AUC",
        "PR-AUC",
        "NAB std/lowFP/lowFN",
        "delay s (mean/median)",
        "detected",
        "false alarms/h",
    ]
    rows = []
    for m in report.methods:
        r = report.results[m.name]
        nab = "/".join(_num(v, 1) for v in r.nab.values())
        rows.append(
            [
                m.name,
                _num(r.f1, 3),
                _num(100 * r.far, 1),
                _num(100 * r.mar, 1),
                _num(r.roc_auc),
                _num(r.pr_auc),
                nab,
                f"{_num(r.mean_delay_s, 1)}/{_num(r.median_delay_s, 1)}",
                f"{r.detected}/{r.segments}",
                _num(r.false_alarms_per_hour, 2),
            ]
        )
    for name, f1, far, mar, note in LEADERBOARD:
        label = f"[SKAB] {name}" + (f" ({note})" if note else "")
        rows.append([label, f"{f1:.2f}", f"{far:.1f}", f"{mar:.1f}", "", "", "", "", "", ""])
    s = report.setup
    title = (
        f"Anomaly detection on {s['scored_rows']} rows of {len(s['files'])} files "
        f"(warm-up {s['warmup_rows']} rows per file); [SKAB] rows are published, not measured"
    )
    return "\n".join(
        [title, table(head, rows, markdown), "", *(f"note: {n}" for n in report.notes)]
    )


def write_reports(
    data: dict[str, Any], text_md: str, json_path: Path | None, md_path: Path | None
) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(text_md + "\n", encoding="utf-8")
