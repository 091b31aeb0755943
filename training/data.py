"""Loading sensor history (CSV or Parquet files, or data frames) onto a regular tick grid.

Rules:

- CSV separators are sniffed (``,`` ``;`` tab ``|``; SKAB uses ``;``); ``.parquet``/``.pq``
  files are read with pyarrow.
- The time column is the one named by ``time_column``, else the first column called
  ``timestamp``, ``datetime``, ``time`` or ``ts`` (case-insensitive). Text timestamps without a
  zone are taken as UTC (Beijing's local times included: only spacing matters to the model);
  numbers are epoch seconds, or epoch milliseconds when above 1e11.
- Label columns (``anomaly``, ``changepoint`` and ``label_column``) are not channels; the
  primary label (``label_column``, else ``anomaly``) marks rows excluded from training.
- Channels are the remaining numeric columns (or exactly ``channels`` when given).
- Rows are put onto the epoch-aligned grid of ``tick_seconds`` (default: the median spacing of
  the first stream) by :func:`edge.window.to_grid`, the same rule ``gapwatch score`` applies;
  ticks without a row are missing (NaN). One file is one device unless ``device_column``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from edge.errors import InputError
from edge.table import TIME_COLUMNS, find_time_column
from edge.window import median_tick_ms, to_grid
from training.errors import DataError

__all__ = [
    "LABEL_COLUMNS",
    "TIME_COLUMNS",
    "LoadOptions",
    "Series",
    "check_channels",
    "frame_to_series",
    "load_series",
    "parse_times",
    "read_table",
]

LABEL_COLUMNS = ("anomaly", "changepoint")


@dataclass(frozen=True)
class Series:
    """One device's history on a regular tick grid."""

    name: str
    ts_ms: NDArray[np.int64]  # [T] epoch ms, UTC, regular steps of tick_seconds
    values: NDArray[np.float64]  # [T, C] NaN = missing
    channels: tuple[str, ...]
    tick_seconds: float
    labels: NDArray[np.float64] | None = None  # [T] primary label: 1 anomalous, 0 normal, NaN
    label_columns: Mapping[str, NDArray[np.float64]] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])

    @property
    def anomalous(self) -> NDArray[np.bool_]:
        """[T] True where the primary label marks the tick anomalous."""
        if self.labels is None:
            return np.zeros(len(self), dtype=bool)
        return np.nan_to_num(self.labels, nan=0.0) > 0.5

    def slice(self, start: int, stop: int) -> Series:
        """Ticks ``start:stop`` (labels included)."""
        return replace(
            self,
            ts_ms=self.ts_ms[start:stop],
            values=self.values[start:stop],
            labels=None if self.labels is None else self.labels[start:stop],
            label_columns={k: v[start:stop] for k, v in self.label_columns.items()},
        )

    def select(self, channels: Sequence[str]) -> Series:
        """The same series with exactly ``channels`` in that order (DataError if any lacks)."""
        check_channels(self.channels, tuple(channels), where=self.name)
        idx = [self.channels.index(c) for c in channels]
        return replace(self, values=self.values[:, idx], channels=tuple(channels))


@dataclass(frozen=True)
class LoadOptions:
    """How to read files; every field maps to a ``gapwatch train`` flag."""

    time_column: str | None = None
    label_column: str | None = None
    channels: tuple[str, ...] | None = None
    tick_seconds: float | None = None
    device_column: str | None = None


def check_channels(found: Sequence[str], expected: Sequence[str], where: str = "data") -> None:
    """Raise DataError naming the missing channels (extra ones are listed as a hint)."""
    missing = [c for c in expected if c not in found]
    if missing:
        extra = [c for c in found if c not in expected]
        raise DataError(
            f"{where}: channels {missing} are missing (expected {list(expected)}; "
            f"extra columns present: {extra}); rename the columns or pick channels with --channels"
        )


def _sniff_separator(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        sample = fh.read(16384)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        return max(",;\t|", key=header.count)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (separator sniffed) or Parquet file into a data frame."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        if p.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(p)
        return pd.read_csv(p, sep=_sniff_separator(p))
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as exc:
        raise DataError(f"{p}: cannot read table: {exc}") from exc


def _time_column(frame: pd.DataFrame, wanted: str | None, where: str) -> str:
    try:
        return find_time_column([str(c) for c in frame.columns], wanted, where)
    except InputError as exc:
        raise DataError(str(exc)) from exc


def parse_times(column: pd.Series, where: str) -> NDArray[np.int64]:
    """Epoch ms (UTC) of a time column; naive text is UTC, numbers are epoch s or ms."""
    name = str(column.name)
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise DataError(f"{where}: time column {name!r} is empty in row {row}")
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        num = column.to_numpy(dtype=np.float64)
        ms = num if np.nanmax(np.abs(num)) > 1e11 else num * 1000.0
        return np.rint(ms).astype(np.int64)
    parsed = pd.to_datetime(column, utc=True, errors="coerce", format="ISO8601")
    if parsed.isna().any():
        parsed = pd.to_datetime(column, utc=True, errors="coerce", format="mixed")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(
            f"{where}: cannot parse timestamp {column.iloc[row]!r} in column {name!r} (row {row}); "
            "use ISO 8601 (e.g. 2020-02-08 13:30:47 or 2020-02-08T13:30:47Z) or epoch seconds"
        )
    ms_index = parsed.astype("datetime64[ms, UTC]").astype("int64")
    return np.asarray(ms_index.to_numpy(), dtype=np.int64)


def _channel_columns(
    frame: pd.DataFrame, skip: set[str], wanted: tuple[str, ...] | None, where: str
) -> list[str]:
    if wanted is not None:
        check_channels([str(c) for c in frame.columns], wanted, where)
        bad = [c for c in wanted if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            raise DataError(f"{where}: channels {bad} are not numeric columns")
        return list(wanted)
    numeric = [
        str(c)
        for c in frame.columns
        if str(c) not in skip
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]
    if not numeric:
        raise DataError(
            f"{where}: no numeric channel among columns {list(frame.columns)} "
            f"(time and label columns {sorted(skip)} are not channels)"
        )
    return numeric


def frame_to_series(
    frame: pd.DataFrame, *, name: str, options: LoadOptions | None = None, source: str = ""
) -> list[Series]:
    """Data frame → one :class:`Series` per device (one in all without ``device_column``)."""
    opts = options or LoadOptions()
    where = source or name
    if frame.empty:
        raise DataError(f"{where}: no rows")
    time_col = _time_column(frame, opts.time_column, where)
    lower = {str(c).lower(): str(c) for c in frame.columns}
    labels = [lower[n] for n in LABEL_COLUMNS if n in lower]
    if opts.label_column is not None:
        if opts.label_column not in frame.columns:
            raise DataError(f"{where}: label column {opts.label_column!r} not found")
        labels = [opts.label_column, *(c for c in labels if c != opts.label_column)]
    primary = opts.label_column or lower.get("anomaly")
    skip = {time_col, *labels}
    if opts.device_column is not None:
        if opts.device_column not in frame.columns:
            raise DataError(f"{where}: device column {opts.device_column!r} not found")
        skip.add(opts.device_column)
    channels = _channel_columns(frame, skip, opts.channels, where)
    ts_all = parse_times(frame[time_col], where)
    groups: list[tuple[str, NDArray[np.bool_]]] = [(name, np.ones(len(frame), dtype=bool))]
    if opts.device_column is not None:
        devices = frame[opts.device_column].astype(str).to_numpy()
        groups = [(f"{name}/{d}", devices == d) for d in sorted(set(devices))]
    tick_ms = None if opts.tick_seconds is None else round(opts.tick_seconds * 1000)
    out: list[Series] = []
    for series_name, rows in groups:
        ts = ts_all[rows]
        if tick_ms is None:
            try:
                tick_ms = median_tick_ms(ts)
            except ValueError as exc:
                raise DataError(f"{where}: {exc}; give the tick with --tick") from exc
        if tick_ms < 1:
            raise DataError(f"{where}: tick {opts.tick_seconds} s is below 1 ms")
        values = frame.loc[rows, channels].to_numpy(dtype=np.float64)
        grid_ts, grid = to_grid(ts, values, tick_ms)
        label_grid: dict[str, NDArray[np.float64]] = {}
        for col in labels:
            lab = pd.to_numeric(frame.loc[rows, col], errors="coerce").to_numpy(np.float64)
            label_grid[col] = to_grid(ts, lab[:, None], tick_ms)[1][:, 0]
        out.append(
            Series(
                name=series_name,
                ts_ms=grid_ts,
                values=grid,
                channels=tuple(channels),
                tick_seconds=tick_ms / 1000.0,
                labels=label_grid.get(primary) if primary else None,
                label_columns=label_grid,
                source=source,
            )
        )
    return out


def load_series(paths: Sequence[str | Path], options: LoadOptions | None = None) -> list[Series]:
    """Load files into series on one tick grid (inferred from the first stream if not given).

    Every series gets the channels of the first one, in its order (DataError otherwise).
    """
    if not paths:
        raise DataError("no data files given")
    opts = options or LoadOptions()
    out: list[Series] = []
    for path in paths:
        p = Path(path)
        frame = read_table(p)
        found = frame_to_series(frame, name=p.stem, options=opts, source=str(p))
        if opts.tick_seconds is None:
            opts = replace(opts, tick_seconds=found[0].tick_seconds)
        channels = found[0].channels if opts.channels is None else opts.channels
        opts = replace(opts, channels=channels)
        out.extend(s if s.channels == channels else s.select(channels) for s in found)
    return out
