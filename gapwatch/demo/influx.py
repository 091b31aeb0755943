"""What a run left in InfluxDB: the counts (InfluxQL) and each device's stored series.

The schema is the sink's (``docs/storage.md``, :mod:`pipeline.lineproto`): measurement
``readings``, tags ``site``/``device``, fields ``<ch>``, ``<ch>_imputed``, ``<ch>_sigma``,
``score``, ``smoothed``, ``threshold``, ``anomaly``. A back-fill revision overwrites its tick,
so what is stored is the latest revision of every tick.

The counts the demo prints are exactly the answers to :data:`COUNT_QUERIES` (and one imputed
count per channel), so anyone can check them with the ``influx`` shell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gapwatch.demo.publish import QueryPort
from gapwatch.demo.render import DeviceTrace

__all__ = [
    "COUNT_QUERIES",
    "StoredCounts",
    "fetch_trace",
    "imputed_query",
    "stored_counts",
]

READINGS = "readings"
COUNT_QUERIES = {
    "ticks": f'SELECT count("threshold") FROM "{READINGS}"',
    "scored_ticks": f'SELECT count("score") FROM "{READINGS}"',
    "anomaly_ticks": f'SELECT count("anomaly") FROM "{READINGS}" WHERE "anomaly" = true',
}


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def imputed_query(channel: str) -> str:
    """Imputed entries of one channel (a tick whose ``<ch>_imputed`` is true)."""
    col = _ident(f"{channel}_imputed")
    return f'SELECT count({col}) FROM "{READINGS}" WHERE {col} = true'


@dataclass(frozen=True)
class StoredCounts:
    ticks: int
    scored_ticks: int
    imputed_entries: int
    anomaly_ticks: int


def _count(port: QueryPort, influxql: str) -> int:
    rows = port.query(influxql)
    if not rows or not rows[0].values:
        return 0
    return int(rows[0].values[0][1] or 0)


def stored_counts(port: QueryPort, channels: Sequence[str]) -> StoredCounts:
    """The run's counts, each from one InfluxQL query (imputed: one per channel, summed)."""
    return StoredCounts(
        ticks=_count(port, COUNT_QUERIES["ticks"]),
        scored_ticks=_count(port, COUNT_QUERIES["scored_ticks"]),
        imputed_entries=sum(_count(port, imputed_query(c)) for c in channels),
        anomaly_ticks=_count(port, COUNT_QUERIES["anomaly_ticks"]),
    )


def _column(rows: list[list[Any]], idx: int | None, fill: float) -> np.ndarray:
    if idx is None:
        return np.full(len(rows), fill, dtype=np.float64)
    return np.array([fill if r[idx] is None else float(r[idx]) for r in rows], dtype=np.float64)


def _flags(rows: list[list[Any]], idx: int | None) -> np.ndarray:
    if idx is None:
        return np.zeros(len(rows), dtype=bool)
    return np.array([r[idx] is True for r in rows], dtype=bool)


def fetch_trace(port: QueryPort, device: str, channels: Sequence[str]) -> DeviceTrace | None:
    """One device's stored ticks as a :class:`DeviceTrace` (truth and labels not attached)."""
    result = port.query(
        f'SELECT * FROM "{READINGS}" WHERE "device" = {_literal(device)} ORDER BY time ASC'
    )
    if not result:
        return None
    columns = list(result[0].columns)
    rows = [r for s in result for r in s.values]
    pos = {c: i for i, c in enumerate(columns)}
    ts = np.array([int(r[0]) for r in rows], dtype=np.int64)
    values = np.stack([_column(rows, pos.get(c), np.nan) for c in channels], axis=1)
    imputed = np.stack([_flags(rows, pos.get(f"{c}_imputed")) for c in channels], axis=1)
    sigma = np.stack([_column(rows, pos.get(f"{c}_sigma"), np.nan) for c in channels], axis=1)
    sigma = np.where(imputed, sigma, np.nan)
    return DeviceTrace(
        device=device,
        ts_ms=ts,
        channels=tuple(channels),
        values=values,
        imputed=imputed,
        sigma=sigma,
        score=_column(rows, pos.get("score"), np.nan),
        threshold=_column(rows, pos.get("threshold"), np.nan),
        anomaly=_flags(rows, pos.get("anomaly")),
        smoothed=_column(rows, pos.get("smoothed"), np.nan),
        extra={"warmup": _flags(rows, pos.get("warmup"))},
    )
