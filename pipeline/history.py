"""Observed sensor history out of InfluxDB, in time chunks, for retraining and analysis.

What comes back is what the sensors *observed*: a channel value the agent imputed
(``<ch>_imputed = true``) comes back as missing, so a model is never trained on its own
guesses. Channels are the fields with an ``<ch>_imputed`` partner (every tick writes one per
channel), found once with ``SHOW FIELD KEYS`` so every chunk has the same columns.

Output frame (one row per stored tick, sorted by site, device, time)::

    timestamp  datetime64[ms, UTC]   (RFC 3339 text in CSV: 2024-01-01T00:00:00.000Z)
    site, device                     text
    <channels...>                    float64, NaN = not observed
    anomaly                          0/1, the alarm flag the model raised (optional)

This is the layout ``training.data`` loads (``--device-column device`` for several devices).
Reads go through :class:`~pipeline.influx.InfluxPort`; the core functions are pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, PipelineError
from pipeline.influx import InfluxPort, Series, quote_ident, quote_literal
from pipeline.lineproto import IMPUTED_SUFFIX, READINGS, RESERVED_FIELDS

__all__ = [
    "ExportStats",
    "HistoryQuery",
    "build_select",
    "channels_from_field_keys",
    "chunks",
    "export_history",
    "find_channels",
    "find_time_range",
    "format_rfc3339",
    "parse_duration",
    "parse_time",
    "read_history",
    "series_to_frame",
    "write_frames",
]

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


@dataclass(frozen=True)
class HistoryQuery:
    """Which history to read: ``[start_ms, end_ms)``, optionally one site and/or device."""

    start_ms: int
    end_ms: int
    site: str | None = None
    device: str | None = None
    chunk_ms: int = 86_400_000
    measurement: str = READINGS
    with_anomaly: bool = False

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ConfigError(
                f"--to {format_rfc3339(self.end_ms)} is not after --from "
                f"{format_rfc3339(self.start_ms)}; swap them or widen the range"
            )
        if self.chunk_ms <= 0:
            raise ConfigError(f"--chunk {self.chunk_ms} ms must be positive, e.g. 1d or 6h")


@dataclass(frozen=True)
class ExportStats:
    rows: int
    chunks: int
    channels: tuple[str, ...]
    observed: int  # channel values present in the output
    masked: int  # values dropped because they were imputed


def parse_duration(text: str) -> int:
    """``1d``, ``6h``, ``30m``, ``90s``, ``500ms``, ``2w`` → milliseconds."""
    m = _DURATION_RE.match(text.strip())
    if m is None:
        raise ConfigError(f"duration {text!r} not understood; write e.g. 1d, 6h, 30m, 90s")
    return round(float(m.group(1)) * _UNIT_MS[m.group(2)])


def parse_time(text: str) -> int:
    """RFC 3339 / ISO 8601 (UTC when no zone is given) or epoch milliseconds → epoch ms."""
    raw = text.strip()
    if re.fullmatch(r"-?\d{10,}", raw):
        return int(raw)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"time {text!r} not understood; write RFC 3339 (2024-05-01T00:00:00Z), "
            "a date (2024-05-01, taken as UTC) or epoch milliseconds"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def format_rfc3339(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def chunks(start_ms: int, end_ms: int, chunk_ms: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[a, b)`` windows covering ``[start_ms, end_ms)``."""
    a = start_ms
    while a < end_ms:
        b = min(a + chunk_ms, end_ms)
        yield a, b
        a = b


def channels_from_field_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """Channel names: fields with an ``<ch>_imputed`` partner, in sorted order."""
    found = {k[: -len(IMPUTED_SUFFIX)] for k in keys if k.endswith(IMPUTED_SUFFIX)}
    return tuple(sorted(c for c in found if c and c not in RESERVED_FIELDS))


def _where(site: str | None, device: str | None, start_ms: int | None, end_ms: int | None) -> str:
    conds = []
    if start_ms is not None and end_ms is not None:
        conds += [f"time >= {start_ms}ms", f"time < {end_ms}ms"]
    if site is not None:
        conds.append(f'"site" = {quote_literal(site)}')
    if device is not None:
        conds.append(f'"device" = {quote_literal(device)}')
    return f"WHERE {' AND '.join(conds)}" if conds else ""


def build_select(q: HistoryQuery, channels: Sequence[str], start_ms: int, end_ms: int) -> str:
    """The InfluxQL for one chunk: values, their imputed flags (and anomaly), per device."""
    cols = [quote_ident(x) for c in channels for x in (c, c + IMPUTED_SUFFIX)]
    if q.with_anomaly:
        cols.append(quote_ident("anomaly"))
    return (
        f"SELECT {', '.join(cols)} FROM {quote_ident(q.measurement)} "
        f'{_where(q.site, q.device, start_ms, end_ms)} GROUP BY "site", "device"'
    )


def series_to_frame(
    series: Sequence[Series], channels: Sequence[str], with_anomaly: bool
) -> tuple[pd.DataFrame, int]:
    """Query result → output frame with imputed entries masked; also the number masked."""
    frames, masked = [], 0
    for s in series:
        if not s.values:
            continue
        col = {name: i for i, name in enumerate(s.columns)}
        rows = s.values
        ts = np.array([r[col["time"]] for r in rows], dtype=np.int64)
        out: dict[str, object] = {
            "timestamp": pd.to_datetime(ts, unit="ms", utc=True).astype("datetime64[ms, UTC]"),
            "site": s.tags.get("site", ""),
            "device": s.tags.get("device", ""),
        }
        for c in channels:
            i, j = col.get(c), col.get(c + IMPUTED_SUFFIX)
            values = np.array(
                [np.nan if i is None or r[i] is None else r[i] for r in rows], dtype=np.float64
            )
            if j is not None:
                imputed = np.array([r[j] is True for r in rows], dtype=bool)
                masked += int(np.count_nonzero(imputed & ~np.isnan(values)))
                values[imputed] = np.nan
            out[c] = values
        if with_anomaly:
            k = col.get("anomaly")
            out["anomaly"] = np.array([int(k is not None and r[k] is True) for r in rows])
        frames.append(pd.DataFrame(out))
    columns = ["timestamp", "site", "device", *channels] + (["anomaly"] if with_anomaly else [])
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        empty["timestamp"] = pd.Series(dtype="datetime64[ms, UTC]")
        empty["site"] = pd.Series(dtype=str)
        empty["device"] = pd.Series(dtype=str)
        if with_anomaly:
            empty["anomaly"] = pd.Series(dtype="int64")
        return empty[columns], 0
    frame = pd.concat(frames, ignore_index=True)[columns]
    return frame.sort_values(["site", "device", "timestamp"], kind="stable").reset_index(
        drop=True
    ), masked


def find_channels(influx: InfluxPort, measurement: str = READINGS) -> tuple[str, ...]:
    keys = [
        str(row[0]) for s in influx.query(f"SHOW FIELD KEYS FROM {quote_ident(measurement)}")
        for row in s.values
    ]  # fmt: skip
    channels = channels_from_field_keys(keys)
    if not channels:
        raise PipelineError(
            f"measurement {measurement!r} has no channels (no <channel>_imputed fields); "
            "is this the database the sink writes?"
        )
    return channels


def find_time_range(
    influx: InfluxPort, site: str | None = None, device: str | None = None
) -> tuple[int, int] | None:
    """``(first, last + 1 ms)`` of stored readings (for one site/device), or None if empty."""
    where = _where(site, device, None, None)
    bounds = []
    for fn in ("FIRST", "LAST"):
        statement = f'SELECT {fn}("revision") FROM {quote_ident(READINGS)} {where}'.rstrip()
        result = influx.query(statement)
        if not result or not result[0].values:
            return None
        bounds.append(int(result[0].values[0][0]))
    return bounds[0], bounds[1] + 1


def resolve_time_range(
    influx: InfluxPort,
    start: str | None,
    end: str | None,
    site: str | None = None,
    device: str | None = None,
) -> tuple[int, int] | None:
    """``(start_ms, end_ms)`` from the given bounds, a missing one taken from the stored data.

    None when a bound is missing and nothing is stored (for that site/device).
    """
    found = None if (start and end) else find_time_range(influx, site, device)
    if found is None and not (start and end):
        return None
    lo = parse_time(start) if start else found[0]  # type: ignore[index]
    hi = parse_time(end) if end else found[1]  # type: ignore[index]
    return lo, hi


def read_history(
    influx: InfluxPort,
    q: HistoryQuery,
    channels: Sequence[str] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Frames (and masked counts) of consecutive chunks; nothing is held beyond one chunk."""
    chans = tuple(channels) if channels is not None else find_channels(influx, q.measurement)
    for a, b in chunks(q.start_ms, q.end_ms, q.chunk_ms):
        frame, masked = series_to_frame(
            influx.query(build_select(q, chans, a, b)), chans, q.with_anomaly
        )
        if on_chunk is not None:
            on_chunk(a, b)
        yield frame, masked


def _rfc3339_column(column: pd.Series) -> np.ndarray:
    naive = column.dt.tz_convert(None).to_numpy(dtype="datetime64[ms]")
    return np.char.add(np.datetime_as_string(naive, unit="ms"), "Z")


def _arrow_schema(columns: Sequence[str]) -> Any:
    import pyarrow as pa

    fields = []
    for c in columns:
        if c == "timestamp":
            fields.append(pa.field(c, pa.timestamp("ms", tz="UTC")))
        elif c in {"site", "device"}:
            fields.append(pa.field(c, pa.string()))
        elif c == "anomaly":
            fields.append(pa.field(c, pa.int64()))
        else:
            fields.append(pa.field(c, pa.float64()))
    return pa.schema(fields)


def write_frames(frames: Iterator[tuple[pd.DataFrame, int]], out: Path) -> ExportStats:
    """Append chunk frames to ``out`` (``.csv`` or ``.parquet``), written to a temp file first."""
    suffix = out.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise ConfigError(f"--out {out} must end in .csv or .parquet")
    tmp = out.with_name(f".{out.name}.tmp")
    rows = n_chunks = observed = masked_total = 0
    channels: tuple[str, ...] = ()
    writer = None
    try:
        for frame, masked in frames:
            n_chunks += 1
            channels = tuple(c for c in frame.columns if c not in {"timestamp", "site", "device"})
            channels = tuple(c for c in channels if c != "anomaly")
            rows += len(frame)
            observed += int(frame[list(channels)].notna().to_numpy().sum()) if channels else 0
            masked_total += masked
            if suffix == ".csv":
                text = frame.copy()
                text["timestamp"] = _rfc3339_column(frame["timestamp"])
                first = n_chunks == 1
                text.to_csv(tmp, mode="w" if first else "a", header=first, index=False)
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                schema = _arrow_schema(list(frame.columns))
                table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(table)
        if writer is not None:
            writer.close()
            writer = None
        if n_chunks == 0 or not tmp.exists():
            raise PipelineError("nothing to export: the time range holds no chunk")
        tmp.replace(out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return ExportStats(rows, n_chunks, channels, observed, masked_total)


def export_history(
    influx: InfluxPort,
    q: HistoryQuery,
    out: Path,
    channels: Sequence[str] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ExportStats:
    """Read ``q`` chunk by chunk and write it to ``out``."""
    return write_frames(read_history(influx, q, channels, on_chunk), out)
