"""What the agent benchmark reads off a process (``/proc``) and how it summarises samples.

The parsers (:func:`proc_memory`, :func:`torch_loaded`, :func:`cpu_seconds`) and the summaries
(:func:`percentiles`, :func:`ratio`) are pure; :func:`cpu`, :func:`runqueue_wait` and
:func:`read_proc` are their thin readers of ``/proc/<pid>``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "cpu",
    "cpu_seconds",
    "percentiles",
    "proc_memory",
    "ratio",
    "read_proc",
    "runqueue_wait",
    "torch_loaded",
]


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not len(values_ms):
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "n": 0}
    a = np.asarray(values_ms, dtype=float)
    p50, p99 = np.percentile(a, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(a.max()), "n": len(a)}


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def proc_memory(status_text: str) -> dict[str, float]:
    """VmRSS and VmHWM in MB (10^6 bytes) from the text of ``/proc/<pid>/status``."""
    out: dict[str, float] = {}
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key.lower() + "_mb"] = int(rest.split()[0]) * 1024 / 1e6
    return out


def torch_loaded(maps_text: str) -> bool:
    return any("libtorch" in line or "/torch/lib/" in line for line in maps_text.splitlines())


def cpu_seconds(stat_text: str) -> float:
    """utime + stime of ``/proc/<pid>/stat``, in seconds."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def runqueue_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just ended
    return total / 1e9


def read_proc(pid: int) -> tuple[dict[str, float], bool]:
    """``(VmRSS/VmHWM in MB, whether libtorch is mapped)`` of a running process."""
    status = Path(f"/proc/{pid}/status").read_text()
    maps = Path(f"/proc/{pid}/maps").read_text()
    return proc_memory(status), torch_loaded(maps)
