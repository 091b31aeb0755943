"""Reading sensor tables on the edge, without pandas: CSV (stdlib ``csv``) or Parquet (pyarrow).

Same rules as ``training.data``: separators ``,`` ``;`` tab ``|`` are sniffed; the time column
is ``time_column`` or the first named ``timestamp``, ``datetime``, ``time`` or ``ts``
(case-insensitive); text timestamps are ISO 8601 and taken as UTC when they carry no zone;
numbers are epoch seconds (epoch ms above 1e11). Cells are floats, empty = missing (NaN).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import InputError

__all__ = ["TIME_COLUMNS", "Table", "find_time_column", "parse_timestamp", "read_table"]

TIME_COLUMNS = ("timestamp", "datetime", "time", "ts")


@dataclass(frozen=True)
class Table:
    """Rows of a file in file order: times and every column that holds numbers."""

    source: str
    time_column: str
    ts_ms: NDArray[np.int64]  # [N] epoch ms, UTC
    columns: dict[str, NDArray[np.float64]]  # numeric columns, NaN where empty
    header: tuple[str, ...]  # every column in file order

    def matrix(self, names: tuple[str, ...]) -> NDArray[np.float64]:
        """[N, len(names)] of the named columns; InputError names missing ones and extras."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            present = [h for h in self.header if h != self.time_column]
            extra = [h for h in present if h not in names]
            raise InputError(
                f"{self.source}: channels {missing} are missing or not numeric "
                f"(the bundle needs {list(names)}; the file has {present}, of which "
                f"{extra} are not bundle channels); rename the columns to the bundle's names"
            )
        return np.stack([self.columns[n] for n in names], axis=1)


def parse_timestamp(text: str) -> int:
    """Epoch ms (UTC) of an ISO 8601 text (no zone = UTC) or an epoch number (s, or ms > 1e11)."""
    raw = text.strip()
    try:
        number = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"timestamp {text!r} is not finite")
        return round(number if abs(number) > 1e11 else number * 1000.0)
    stamp = datetime.fromisoformat(raw)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000.0)


def find_time_column(header: list[str], wanted: str | None, source: str) -> str:
    """The time column of ``header``: ``wanted``, else the first of :data:`TIME_COLUMNS`."""
    if wanted is not None:
        if wanted not in header:
            raise InputError(f"{source}: time column {wanted!r} not found in {header}")
        return wanted
    lower = {h.lower(): h for h in header}
    for name in TIME_COLUMNS:
        if name in lower:
            return lower[name]
    raise InputError(
        f"{source}: no time column (looked for {list(TIME_COLUMNS)} in {header}); "
        "name it with --time-column"
    )


def _to_float(cell: str) -> float | None:
    """Float of a cell, NaN when empty, None when it is not a number."""
    text = cell.strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path, time_column: str | None) -> Table:
    source = str(path)
    with path.open("r", encoding="utf-8", newline="") as fh:
        sample = fh.read(16384)
        fh.seek(0)
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            first = sample.splitlines()[0] if sample else ""
            delimiter = max(",;\t|", key=first.count)
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise InputError(f"{source}: empty file")
        rows = [r for r in reader if r]
    header = [h.strip() for h in header]
    tcol = find_time_column(header, time_column, source)
    t_idx = header.index(tcol)
    ts = np.empty(len(rows), dtype=np.int64)
    cols: dict[str, list[float | None]] = {h: [] for i, h in enumerate(header) if i != t_idx}
    names = [(i, h) for i, h in enumerate(header) if i != t_idx]
    for r, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise InputError(f"{source}: line {r} has {len(row)} cells, the header {len(header)}")
        try:
            ts[r - 2] = parse_timestamp(row[t_idx])
        except ValueError as exc:
            raise InputError(
                f"{source}: cannot parse timestamp {row[t_idx]!r} on line {r} ({exc}); "
                "use ISO 8601 (2020-02-08 13:30:47, 2020-02-08T13:30:47Z) or epoch seconds"
            ) from exc
        for i, h in names:
            cols[h].append(_to_float(row[i]))
    numeric = {
        h: np.array(v, dtype=np.float64)
        for h, v in cols.items()
        if all(x is not None for x in v) and v
    }
    return Table(source, tcol, ts, numeric, tuple(header))


def _read_parquet(path: Path, time_column: str | None) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert to CSV"
        ) from exc
    try:
        data: dict[str, list[Any]] = pq.read_table(path).to_pydict()
    except Exception as exc:  # pyarrow raises its own error types
        raise InputError(f"{path}: cannot read Parquet: {exc}") from exc
    header = list(data)
    tcol = find_time_column(header, time_column, str(path))
    stamps = []
    for value in data[tcol]:
        if isinstance(value, datetime):
            v = value if value.tzinfo else value.replace(tzinfo=UTC)
            stamps.append(round(v.timestamp() * 1000.0))
        elif value is None:
            raise InputError(f"{path}: empty timestamp in column {tcol!r}")
        else:
            stamps.append(parse_timestamp(str(value)))
    numeric = {}
    for h in header:
        col = data[h]
        if h == tcol or not all(v is None or isinstance(v, int | float) for v in col):
            continue
        if any(isinstance(v, bool) for v in col):
            continue
        numeric[h] = np.array([math.nan if v is None else float(v) for v in col], np.float64)
    return Table(str(path), tcol, np.array(stamps, dtype=np.int64), numeric, tuple(header))


def read_table(path: str | Path, *, time_column: str | None = None) -> Table:
    """Read a CSV or Parquet file (``.parquet``/``.pq``); InputError says what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    if p.suffix.lower() in {".parquet", ".pq"}:
        return _read_parquet(p, time_column)
    try:
        return _read_csv(p, time_column)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: cannot read CSV: {exc}") from exc
