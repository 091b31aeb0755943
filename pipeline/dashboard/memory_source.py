"""In-memory :class:`~pipeline.dashboard.source.ReadingsSource`: the dashboard's test double.

It takes the very line protocol the sink writes (:meth:`MemorySource.write_lines`, parsed with
:func:`pipeline.lineproto.parse_line`) and stores points the way InfluxDB does: one point per
measurement, tags and time, a second write of the same point merging its fields (so a revision
overwrites). It answers with the semantics of
:class:`~pipeline.dashboard.influx_source.InfluxSource`: buckets aligned to the epoch,
``fill(none)``, bucket max for scores, mean for values and thresholds. Set
:attr:`MemorySource.failure` to make every call raise it (an outage).
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import fmean

from pipeline.dashboard import queries as q
from pipeline.dashboard.source import (
    AnomalyPoint,
    ChannelSeries,
    DeviceSeries,
    DeviceSummary,
    Extent,
    Window,
)
from pipeline.errors import StorageError
from pipeline.lineproto import IMPUTED_SUFFIX, SIGMA_SUFFIX, parse_line

__all__ = ["MemorySource"]

FieldValue = float | int | bool | str
Point = dict[str, FieldValue]
Store = dict[tuple[str, str], dict[int, Point]]


def _inside(ts: int, window: Window) -> bool:
    return (window.start_ms is None or ts >= window.start_ms) and (
        window.end_ms is None or ts <= window.end_ms
    )


def _num(value: FieldValue | None) -> float | None:
    if value is None or isinstance(value, bool | str):
        return None
    return float(value)


def _kind(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "integer" if isinstance(value, int) else "float"


class MemorySource:
    """Readings and anomaly points held in dictionaries."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.failure: StorageError | None = None
        self._stores: dict[str, Store] = {q.READINGS: {}, q.ANOMALIES: {}}

    def write(
        self, measurement: str, site: str, device: str, ts_ms: int, fields: Mapping[str, FieldValue]
    ) -> None:
        store = self._stores.setdefault(measurement, {})
        store.setdefault((site, device), {}).setdefault(ts_ms, {}).update(fields)

    def write_lines(self, lines: bytes | str) -> None:
        """Store line protocol with millisecond timestamps, as the sink writes it."""
        text = lines.decode() if isinstance(lines, bytes) else lines
        for line in text.splitlines():
            if line.strip():
                p = parse_line(line)
                self.write(p.measurement, p.tags["site"], p.tags["device"], p.time, p.fields)

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    @property
    def _readings(self) -> Store:
        return self._stores[q.READINGS]

    def _channels(self) -> list[str]:
        kinds: dict[str, str] = {}
        for points in self._readings.values():
            for point in points.values():
                for key, value in point.items():
                    kinds.setdefault(key, _kind(value))
        return q.split_channels(kinds.items())

    # -- ReadingsSource --------------------------------------------------------------------

    def describe(self) -> str:
        return f"in-memory store {self.name!r}"

    def ping(self) -> None:
        self._check()

    def summaries(self, window: Window) -> list[DeviceSummary]:
        self._check()
        out = []
        for (site, device), points in sorted(self._readings.items()):
            ticks = {ts: p for ts, p in points.items() if q.TICK_FIELD in p}
            newest = max(ticks, default=None)
            inside = sorted((ts, p) for ts, p in ticks.items() if _inside(ts, window))
            fracs = [f for _, p in inside if (f := _num(p.get(q.IMPUTED_FRAC))) is not None]
            version = ticks[newest].get("model_version") if newest is not None else None
            out.append(
                DeviceSummary(
                    site=site,
                    device=device,
                    last_seen_ms=newest,
                    model_version=None if version is None else str(version),
                    ticks=len(inside),
                    imputation_rate=fmean(fracs) if fracs else None,
                    flagged=sum(1 for _, p in inside if p.get("anomaly") is True),
                    extent=Extent(inside[0][0], inside[-1][0], len(inside)) if inside else None,
                )
            )
        return out

    def extent(self, site: str, device: str, window: Window) -> Extent | None:
        self._check()
        points = self._readings.get((site, device), {})
        times = sorted(ts for ts, p in points.items() if q.TICK_FIELD in p and _inside(ts, window))
        return Extent(times[0], times[-1], len(times)) if times else None

    def series(self, site: str, device: str, window: Window, interval_ms: int) -> DeviceSeries:
        self._check()
        if not window.bounded:
            raise ValueError("series needs a bounded window")
        points = self._readings.get((site, device), {})
        ordered = sorted((ts, p) for ts, p in points.items() if _inside(ts, window))
        if interval_ms == 0:
            groups = [(ts, [p]) for ts, p in ordered]
        else:
            buckets: dict[int, list[Point]] = {}
            for ts, p in ordered:
                buckets.setdefault(ts - ts % interval_ms, []).append(p)
            groups = sorted(buckets.items())
        channels = []
        for ch in self._channels():
            values, imputed, sigma = [], [], []
            for _, group in groups:
                vals = [v for p in group if (v := _num(p.get(ch))) is not None]
                sigmas = [s for p in group if (s := _num(p.get(ch + SIGMA_SUFFIX))) is not None]
                flags = [p.get(ch + IMPUTED_SUFFIX) is True for p in group if ch in p]
                values.append(fmean(vals) if vals else None)
                if interval_ms == 0:
                    share = 1.0 if (any(flags) or sigmas) else 0.0
                else:
                    share = len(sigmas) / len(vals) if vals else 0.0
                imputed.append(share)
                sigma.append(fmean(sigmas) if sigmas and share > 0 else None)
            if any(v is not None for v in values):
                channels.append(ChannelSeries(ch, tuple(values), tuple(imputed), tuple(sigma)))

        def agg(group: list[Point], name: str, mean: bool) -> float | None:
            found = [v for p in group if (v := _num(p.get(name))) is not None]
            if not found:
                return None
            return fmean(found) if mean and interval_ms else max(found)

        return DeviceSeries(
            site=site,
            device=device,
            interval_ms=interval_ms,
            times=tuple(ts for ts, _ in groups),
            score=tuple(agg(g, "score", False) for _, g in groups),
            smoothed=tuple(agg(g, "smoothed", False) for _, g in groups),
            threshold=tuple(agg(g, "threshold", True) for _, g in groups),
            flagged=tuple(any(p.get("anomaly") is True for p in g) for _, g in groups),
            channels=tuple(channels),
        )

    def anomalies(
        self, window: Window, site: str | None, device: str | None, limit: int
    ) -> list[AnomalyPoint]:
        self._check()
        found = [
            AnomalyPoint(
                site=key[0],
                device=key[1],
                ts_ms=ts,
                score=_num(p.get("score")),
                top_channels=q.parse_top_channels(p.get("top_channels")),
            )
            for key, points in self._stores[q.ANOMALIES].items()
            if (site is None or key[0] == site) and (device is None or key[1] == device)
            for ts, p in points.items()
            if p.get("active") is True and _inside(ts, window)
        ]
        found.sort(key=lambda e: e.ts_ms, reverse=True)
        return found[:limit]
