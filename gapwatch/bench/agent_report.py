"""The agent benchmark's report: each figure beside the bare subscriber's, and the targets.

:func:`report` is pure: it takes the result (as written to ``--json``) and returns the table that
``gapwatch bench agent`` prints and which targets were met.
"""

from __future__ import annotations

import math
from typing import Any

from gapwatch.bench.cli import fmt
from gapwatch.bench.measure import ratio

__all__ = ["report"]


def _table(rows: list[list[str]]) -> str:
    head = ["figure", "agent", "bare subscriber", "ratio", "target", "status"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _targets(a: dict[str, Any], ratio_to_bare: float) -> dict[str, bool]:
    hwm = a["memory"].get("vmhwm_mb", math.nan)
    return {
        "throughput_20k": a["readings_per_s"] >= 20_000,
        "throughput_vs_bare_0_7": ratio_to_bare >= 0.7,
        "latency_p99_100ms": a["latency"]["p99_ms"] <= 100,
        "rss_150mb": hwm <= 150 and not a["torch_loaded"],
    }


def _latency_rows(a: dict[str, Any], b: dict[str, Any], met: dict[str, bool]) -> list[list[str]]:
    al, bl = a["latency"], b["latency"]
    p99 = al["p99_ms"]
    return [
        [
            "latency p50 ms",
            fmt(al["p50_ms"], 1),
            fmt(bl["p50_ms"], 1),
            fmt(ratio(al["p50_ms"], bl["p50_ms"]), 1),
            "",
            "",
        ],
        [
            "latency p99 ms",
            fmt(p99, 1),
            fmt(bl["p99_ms"], 1),
            fmt(ratio(p99, bl["p99_ms"]), 1),
            "<=100",
            "met" if met["latency_p99_100ms"] else "MISSED",
        ],
        [
            "  p99 from closing reading",
            fmt(a["latency_from_closing_reading"]["p99_ms"], 1),
            "",
            "",
            "",
            "",
        ],
    ]


def _memory_rows(a: dict[str, Any], b: dict[str, Any], met: dict[str, bool]) -> list[list[str]]:
    hwm = a["memory"].get("vmhwm_mb", math.nan)
    return [
        [
            "VmHWM MB (torch: " + ("yes" if a["torch_loaded"] else "no") + ")",
            fmt(hwm, 1),
            fmt(b["memory"].get("vmhwm_mb", math.nan), 1),
            fmt(ratio(hwm, b["memory"].get("vmhwm_mb", math.nan)), 1),
            "<=150, no torch",
            "met" if met["rss_150mb"] else "MISSED",
        ],
        [
            "VmRSS MB idle / end",
            f"{fmt(a['memory_idle'].get('vmrss_mb', math.nan), 1)} / "
            f"{fmt(a['memory'].get('vmrss_mb', math.nan), 1)}",
            fmt(b["memory"].get("vmrss_mb", math.nan), 1),
            "",
            "",
            "",
        ],
    ]


def report(result: dict[str, Any]) -> tuple[str, dict[str, bool]]:
    """``(the table, {target: met})`` of one result."""
    a, b = result["agent"], result["bare"]
    rate = a["readings_per_s"]
    to_bare = ratio(rate, b["readings_per_s"])
    met = _targets(a, to_bare)
    throughput = [
        f"readings/s ({result['setup']['channels']}-ch msgs)",
        fmt(rate, 0),
        fmt(b["readings_per_s"], 0),
        fmt(to_bare, 2),
        ">=20000, >=0.7x",
        "met" if met["throughput_20k"] and met["throughput_vs_bare_0_7"] else "MISSED",
    ]
    rows = [throughput, *_latency_rows(a, b, met), *_memory_rows(a, b, met)]
    return _table(rows), met
