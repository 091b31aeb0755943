"""Pure InfluxQL builders for the dashboard: plain values in, query text out.

They read the schema the sink writes (:mod:`pipeline.lineproto`, ``docs/storage.md``)::

    readings,site=<site>,device=<device>
        <ch> (float), <ch>_imputed (bool), <ch>_sigma (float, imputed entries only),
        imputed_frac (float), score, smoothed (float, absent when nothing was observed),
        threshold (float), anomaly (bool), warmup (bool), revision (int), model, model_version
    anomalies,site=<site>,device=<device>      one point per flagged tick (and per revision)
        active (bool), score, smoothed, threshold (float), top_channels (string, "a,b,c"), ...

Every name that comes from data (site, device, channel) goes through :func:`quote_string` or
:func:`quote_ident`, so a device called ``x' OR 'a'='a`` stays one literal. Aggregated columns
are aliased by position (``v0``, ``n0``…) so channel names never collide with the aliases.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.lineproto import ANOMALIES, IMPUTED_SUFFIX, READINGS, RESERVED_FIELDS, SIGMA_SUFFIX

TICK_FIELD = "revision"  # written with every stored tick, so count(revision) counts ticks
IMPUTED_FRAC = "imputed_frac"
NUMERIC_TYPES = frozenset({"float", "integer"})

# "Nice" bucket widths for GROUP BY time(), smallest first.
NICE_INTERVALS_MS = (
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
    2_592_000_000,
)

__all__ = [
    "ANOMALIES",
    "IMPUTED_FRAC",
    "READINGS",
    "TICK_FIELD",
    "Window",
    "anomalies_query",
    "choose_interval_ms",
    "extent_queries",
    "field_keys_query",
    "fleet_queries",
    "parse_top_channels",
    "quote_ident",
    "quote_string",
    "series_query",
    "split_channels",
]


@dataclass(frozen=True)
class Window:
    """A time window in epoch milliseconds; ``None`` leaves that side open ("all data")."""

    start_ms: int | None = None
    end_ms: int | None = None

    def __post_init__(self) -> None:
        if self.start_ms is not None and self.end_ms is not None and self.start_ms > self.end_ms:
            raise ValueError(f"window start {self.start_ms} is after its end {self.end_ms}")

    @property
    def bounded(self) -> bool:
        return self.start_ms is not None and self.end_ms is not None


def _escape(text: str, quote: str) -> str:
    out = text.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted InfluxQL identifier."""
    return f'"{_escape(name, chr(34))}"'


def quote_string(value: str) -> str:
    """``value`` as a single-quoted InfluxQL string literal."""
    return f"'{_escape(value, chr(39))}'"


def time_conditions(window: Window) -> list[str]:
    conds = []
    if window.start_ms is not None:
        conds.append(f"time >= {int(window.start_ms)}ms")
    if window.end_ms is not None:
        conds.append(f"time <= {int(window.end_ms)}ms")
    return conds


def device_conditions(site: str | None, device: str | None) -> list[str]:
    conds = []
    if site is not None:
        conds.append(f'"site" = {quote_string(site)}')
    if device is not None:
        conds.append(f'"device" = {quote_string(device)}')
    return conds


def _where(conds: Iterable[str]) -> str:
    parts = list(conds)
    return f" WHERE {' AND '.join(parts)}" if parts else ""


def field_keys_query() -> str:
    return f"SHOW FIELD KEYS FROM {quote_ident(READINGS)}"


def split_channels(field_keys: Iterable[tuple[str, str]]) -> list[str]:
    """Channel names among ``(fieldKey, fieldType)`` rows.

    A channel is a numeric field that is not reserved and not the ``_sigma`` of another field.
    """
    rows = list(field_keys)
    keys = {key for key, _ in rows}
    channels = set()
    for key, kind in rows:
        if kind not in NUMERIC_TYPES or key in RESERVED_FIELDS:
            continue
        if key.endswith(SIGMA_SUFFIX) and key[: -len(SIGMA_SUFFIX)] in keys:
            continue
        channels.add(key)
    return sorted(channels)


def fleet_queries(window: Window) -> list[str]:
    """Six statements, each grouped by site and device, in this order:

    0. ``last(revision)``: the newest tick ever (its time is "last seen");
    1. ``last(model_version)``: the model that scored it;
    2. in the window: ``ticks`` and ``imputed``, the mean share of imputed channels per tick;
    3. in the window: the first tick (its time);
    4. in the window: the last tick (its time);
    5. in the window: ``flagged`` ticks (``anomaly = true``).
    """
    readings, tick = quote_ident(READINGS), quote_ident(TICK_FIELD)
    by = ' GROUP BY "site", "device"'
    in_window = _where(time_conditions(window))
    flagged = _where(['"anomaly" = true', *time_conditions(window)])
    frac = quote_ident(IMPUTED_FRAC)
    return [
        f"SELECT last({tick}) FROM {readings}{by}",
        f'SELECT last("model_version") FROM {readings}{by}',
        f"SELECT count({tick}) AS ticks, mean({frac}) AS imputed FROM {readings}{in_window}{by}",
        f"SELECT first({tick}) FROM {readings}{in_window}{by}",
        f"SELECT last({tick}) FROM {readings}{in_window}{by}",
        f"SELECT count({tick}) AS flagged FROM {readings}{flagged}{by}",
    ]


def extent_queries(site: str, device: str, window: Window) -> list[str]:
    """Three statements: the first tick, the last tick and the tick count of one device."""
    tick = quote_ident(TICK_FIELD)
    where = _where([*device_conditions(site, device), *time_conditions(window)])
    src = f"FROM {quote_ident(READINGS)}{where}"
    return [
        f"SELECT first({tick}) {src}",
        f"SELECT last({tick}) {src}",
        f"SELECT count({tick}) {src}",
    ]


def series_query(
    site: str, device: str, window: Window, channels: Sequence[str], interval_ms: int
) -> str:
    """One device's ticks in a bounded window.

    ``interval_ms == 0`` selects raw ticks: columns ``score, smoothed, threshold, anomaly`` then
    per channel i ``v<i>`` (value), ``m<i>`` (imputed flag), ``s<i>`` (σ). Otherwise ticks are
    averaged in ``GROUP BY time(interval)`` buckets: ``score``/``smoothed`` are the bucket max
    (a spike stays visible), ``threshold`` the mean, ``anomaly`` true if any tick was flagged,
    and per channel ``v<i>`` mean, ``n<i>`` values, ``i<i>`` imputed entries, ``s<i>`` mean σ.
    """
    if not window.bounded:
        raise ValueError("series_query needs a bounded window; resolve 'all' with extent_queries")
    if interval_ms < 0:
        raise ValueError(f"interval_ms must be >= 0, got {interval_ms}")
    where = _where([*device_conditions(site, device), *time_conditions(window)])
    if interval_ms == 0:
        cols = ['"score"', '"smoothed"', '"threshold"', '"anomaly"']
        for i, ch in enumerate(channels):
            cols.append(f"{quote_ident(ch)} AS v{i}")
            cols.append(f"{quote_ident(ch + IMPUTED_SUFFIX)} AS m{i}")
            cols.append(f"{quote_ident(ch + SIGMA_SUFFIX)} AS s{i}")
        return f"SELECT {', '.join(cols)} FROM {quote_ident(READINGS)}{where} ORDER BY time ASC"
    cols = [
        'max("score") AS score',
        'max("smoothed") AS smoothed',
        'mean("threshold") AS threshold',
        'max("anomaly") AS anomaly',
    ]
    for i, ch in enumerate(channels):
        value, sigma = quote_ident(ch), quote_ident(ch + SIGMA_SUFFIX)
        cols += [
            f"mean({value}) AS v{i}",
            f"count({value}) AS n{i}",
            f"count({sigma}) AS i{i}",
            f"mean({sigma}) AS s{i}",
        ]
    return (
        f"SELECT {', '.join(cols)} FROM {quote_ident(READINGS)}{where}"
        f" GROUP BY time({int(interval_ms)}ms) fill(none)"
    )


def anomalies_query(window: Window, site: str | None, device: str | None, limit: int) -> str:
    """The newest ``limit`` active anomaly points (flagged ticks), newest first, with tags."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    conds = ['"active" = true', *device_conditions(site, device), *time_conditions(window)]
    return (
        f'SELECT "score", "top_channels", "site", "device" FROM {quote_ident(ANOMALIES)}'
        f"{_where(conds)} ORDER BY time DESC LIMIT {int(limit)}"
    )


def choose_interval_ms(span_ms: int, max_points: int) -> int:
    """The smallest nice bucket width that keeps ``span_ms`` within ``max_points`` buckets."""
    if max_points <= 0:
        raise ValueError(f"max_points must be positive, got {max_points}")
    needed = -(-max(span_ms, 1) // max_points)  # ceiling division
    for width in NICE_INTERVALS_MS:
        if width >= needed:
            return width
    return -(-needed // NICE_INTERVALS_MS[-1]) * NICE_INTERVALS_MS[-1]


def parse_top_channels(text: Any) -> tuple[str, ...]:
    """``top_channels`` as stored: a JSON list or a comma-separated string."""
    if text is None:
        return ()
    raw = str(text).strip()
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError:
            items = raw.strip("[]").split(",")
        return tuple(str(i).strip() for i in items if str(i).strip())
    return tuple(part.strip() for part in raw.split(",") if part.strip())
