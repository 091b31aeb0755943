"""The dashboard's JSON API: query parameters in, a status and a JSON-ready body out.

No sockets here (see :mod:`pipeline.dashboard.server`); the clock is injected. Endpoints::

    GET /api/config                          source, ranges, refresh period
    GET /api/health                          200 when the store answers, else 503
    GET /api/fleet?range=1h                  devices with counts in the range, recent alarms
    GET /api/device?site=S&device=D&range=…  one device's scores and channels (σ, imputed share)
    GET /api/alarms?range=…[&site=&device=&limit=]

An alarm is an episode of consecutive flagged ticks (:mod:`pipeline.dashboard.episodes`), built
from at most ``anomaly_points`` newest anomaly points; ``alarms_complete`` is false when that
cap cut the oldest ones off (the counts are then lower bounds).

``range`` is one of ``15m 1h 6h 24h 7d all custom``; ``custom`` takes ``start`` and ``end`` as
epoch milliseconds or RFC 3339 with a zone. Errors are JSON too: 400 names the bad parameter
and the fix, 503 says the store is unreachable and how to bring it back, 404 lists the endpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.dashboard.episodes import Episode, group_episodes
from pipeline.dashboard.queries import Window, choose_interval_ms
from pipeline.dashboard.source import DeviceSeries, DeviceSummary, ReadingsSource
from pipeline.errors import RequestError, StorageError

__all__ = ["RANGES", "ApiResponse", "DashboardApi", "RequestError", "parse_instant", "parse_range"]

MINUTE_MS = 60_000
RANGES: dict[str, tuple[str, int | None]] = {
    "15m": ("last 15 min", 15 * MINUTE_MS),
    "1h": ("last 1 h", 60 * MINUTE_MS),
    "6h": ("last 6 h", 6 * 60 * MINUTE_MS),
    "24h": ("last 24 h", 24 * 60 * MINUTE_MS),
    "7d": ("last 7 days", 7 * 24 * 60 * MINUTE_MS),
    "all": ("all data", None),
    "custom": ("custom range", None),
}
DEFAULT_RANGE = "1h"
MAX_POINTS_CAP = 5_000
STORE_HINT = (
    "Check that InfluxDB is running and reachable from the dashboard "
    "(locally: deploy/local/stack status), or fix --influx / GAPWATCH_DASHBOARD__INFLUX_URL."
)


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class RangeChoice:
    key: str
    label: str
    window: Window


def parse_instant(text: str, name: str) -> int:
    """Epoch milliseconds from digits or from RFC 3339 with a zone."""
    raw = text.strip()
    if raw.lstrip("-").isdigit():
        return int(raw)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise RequestError(
            f"{name}={text!r} is not a time; give epoch milliseconds or RFC 3339, "
            "e.g. 2024-05-01T12:00:00Z"
        ) from exc
    if parsed.tzinfo is None:
        raise RequestError(f"{name}={text!r} has no time zone; add Z for UTC or an offset")
    return int(parsed.timestamp() * 1000)


def parse_range(params: Mapping[str, str], now_ms: int) -> RangeChoice:
    key = params.get("range", DEFAULT_RANGE) or DEFAULT_RANGE
    if key not in RANGES:
        raise RequestError(f"range={key!r} is unknown; use one of {', '.join(RANGES)}")
    label, span = RANGES[key]
    if key == "all":
        return RangeChoice(key, label, Window())
    if key == "custom":
        missing = [p for p in ("start", "end") if not params.get(p)]
        if missing:
            raise RequestError(f"range=custom needs {' and '.join(missing)} (epoch ms or RFC 3339)")
        start, end = parse_instant(params["start"], "start"), parse_instant(params["end"], "end")
        if start >= end:
            raise RequestError(f"start ({start}) must be before end ({end})")
        return RangeChoice(key, label, Window(start, end))
    assert span is not None
    return RangeChoice(key, label, Window(now_ms - span, now_ms))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _range_json(choice: RangeChoice) -> dict[str, Any]:
    w = choice.window
    return {"key": choice.key, "label": choice.label, "start_ms": w.start_ms, "end_ms": w.end_ms}


def _summary_json(s: DeviceSummary, alarms: int) -> dict[str, Any]:
    return {
        "site": s.site,
        "device": s.device,
        "last_seen_ms": s.last_seen_ms,
        "model_version": s.model_version,
        "ticks": s.ticks,
        "imputation_rate": _finite(s.imputation_rate),
        "flagged": s.flagged,
        "alarms": alarms,
    }


def _episode_json(e: Episode) -> dict[str, Any]:
    return e.to_json() | {"peak_score": _finite(e.peak_score)}


def _series_json(s: DeviceSeries) -> dict[str, Any]:
    return {
        "interval_ms": s.interval_ms,
        "times": list(s.times),
        "score": [_finite(v) for v in s.score],
        "smoothed": [_finite(v) for v in s.smoothed],
        "threshold": [_finite(v) for v in s.threshold],
        "flagged": list(s.flagged),
        "channels": [
            {
                "name": c.name,
                "values": [_finite(v) for v in c.values],
                "imputed": list(c.imputed),
                "sigma": [_finite(v) for v in c.sigma],
            }
            for c in s.channels
        ],
    }


class DashboardApi:
    """Answers the dashboard's API requests from a :class:`ReadingsSource`."""

    def __init__(
        self,
        source: ReadingsSource,
        clock: Callable[[], datetime],
        *,
        max_points: int = 800,
        alarm_limit: int = 100,
        anomaly_points: int = 10_000,
        refresh_s: int = 30,
    ) -> None:
        if max_points < 10 or max_points > MAX_POINTS_CAP:
            raise ValueError(f"max_points must be within 10..{MAX_POINTS_CAP}, got {max_points}")
        self.source = source
        self.clock = clock
        self.max_points = max_points
        self.alarm_limit = alarm_limit
        self.anomaly_points = anomaly_points
        self.refresh_s = refresh_s
        self._routes: dict[str, Callable[[Mapping[str, str]], ApiResponse]] = {
            "/api/config": self.config,
            "/api/health": self.health,
            "/api/fleet": self.fleet,
            "/api/device": self.device,
            "/api/alarms": self.alarms,
        }

    def _now_ms(self) -> int:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the dashboard clock must return timezone-aware datetimes")
        return int(now.astimezone(UTC).timestamp() * 1000)

    def handle(self, path: str, params: Mapping[str, str]) -> ApiResponse:
        route = self._routes.get(path.rstrip("/") or "/")
        if route is None:
            return ApiResponse(
                404, {"error": f"no endpoint {path}", "hint": f"try one of {sorted(self._routes)}"}
            )
        try:
            return route(params)
        except RequestError as exc:
            return ApiResponse(400, {"error": str(exc)})
        except StorageError as exc:
            return ApiResponse(503, {"error": str(exc), "hint": STORE_HINT})

    # -- endpoints -------------------------------------------------------------------------

    def config(self, params: Mapping[str, str]) -> ApiResponse:
        ranges = [{"key": k, "label": v[0]} for k, v in RANGES.items()]
        return ApiResponse(
            200,
            {
                "source": self.source.describe(),
                "ranges": ranges,
                "default_range": DEFAULT_RANGE,
                "refresh_s": self.refresh_s,
                "max_points": self.max_points,
            },
        )

    def health(self, params: Mapping[str, str]) -> ApiResponse:
        self.source.ping()
        return ApiResponse(200, {"ok": True, "source": self.source.describe()})

    def _episodes(
        self, window: Window, site: str | None, device: str | None, periods: dict[Any, Any]
    ) -> tuple[list[Episode], bool]:
        points = self.source.anomalies(window, site, device, self.anomaly_points)
        return group_episodes(points, periods), len(points) < self.anomaly_points

    def fleet(self, params: Mapping[str, str]) -> ApiResponse:
        now_ms = self._now_ms()
        choice = parse_range(params, now_ms)
        devices = self.source.summaries(choice.window)
        periods = {(d.site, d.device): d.extent.period_ms if d.extent else None for d in devices}
        episodes, complete = self._episodes(choice.window, None, None, periods)
        per_device: dict[tuple[str, str], int] = {}
        for e in episodes:
            per_device[(e.site, e.device)] = per_device.get((e.site, e.device), 0) + 1
        newest = max((d.last_seen_ms for d in devices if d.last_seen_ms is not None), default=None)
        ticks = sum(d.ticks for d in devices)
        imputed = sum((d.imputation_rate or 0.0) * d.ticks for d in devices)
        body: dict[str, Any] = {
            "source": self.source.describe(),
            "now_ms": now_ms,
            "range": _range_json(choice),
            "newest_ms": newest,
            "totals": {
                "devices": len(devices),
                "active": sum(1 for d in devices if d.ticks),
                "ticks": ticks,
                "flagged": sum(d.flagged for d in devices),
                "alarms": len(episodes),
                "imputation_rate": imputed / ticks if ticks else None,
            },
            "devices": [_summary_json(d, per_device.get((d.site, d.device), 0)) for d in devices],
            "alarms": [_episode_json(e) for e in episodes[: self.alarm_limit]],
            "alarms_complete": complete,
        }
        if not devices:
            body |= {
                "state": "empty",
                "message": "No data yet.",
                "hint": f"Nothing is stored in {self.source.describe()}. Start the sink "
                "(gapwatch sink) and an agent or a replay (gapwatch simulate), "
                "or point --db at the database the sink writes.",
            }
        elif ticks == 0:
            body |= {
                "state": "out_of_range",
                "message": f"No readings in the {choice.label}.",
                "hint": "The newest reading is older than this range (replayed history keeps "
                "its original timestamps): choose 'All data' or a custom range.",
            }
        else:
            body |= {"state": "ok", "message": "", "hint": ""}
        return ApiResponse(200, body)

    def device(self, params: Mapping[str, str]) -> ApiResponse:
        missing = [p for p in ("site", "device") if p not in params]
        if missing:
            raise RequestError(
                f"missing {' and '.join(missing)}; pass ?site=…&device=… as listed by /api/fleet"
            )
        site, device = params["site"], params["device"]
        points = self._int_param(params, "points", self.max_points, 10, MAX_POINTS_CAP)
        now_ms = self._now_ms()
        choice = parse_range(params, now_ms)
        body: dict[str, Any] = {
            "site": site,
            "device": device,
            "now_ms": now_ms,
            "range": _range_json(choice),
        }
        extent = self.source.extent(site, device, choice.window)
        if extent is None:
            ever = self.source.extent(site, device, Window())
            hint = (
                f"{device!r} has no stored readings at all; check the site and device names."
                if ever is None
                else "Choose 'All data' or a longer range to see its history."
            )
            empty = {"interval_ms": 0, "times": [], "channels": [], "alarms": []}
            return ApiResponse(
                200,
                body
                | empty
                | {
                    "state": "empty",
                    "message": f"No readings from this device in the {choice.label}.",
                    "hint": hint,
                    "last_seen_ms": None if ever is None else ever.last_ms,
                },
            )
        window = choice.window
        if not window.bounded:
            window = Window(extent.first_ms, extent.last_ms)
        interval = 0
        if extent.ticks > points:
            interval = choose_interval_ms(extent.last_ms - extent.first_ms, points)
        series = self.source.series(site, device, window, interval)
        episodes, complete = self._episodes(
            window, site, device, {(site, device): extent.period_ms}
        )
        body["range"] |= {"start_ms": window.start_ms, "end_ms": window.end_ms}
        body |= _series_json(series) | {
            "state": "ok",
            "message": "",
            "hint": "",
            "last_seen_ms": extent.last_ms,
            "alarms": [_episode_json(e) for e in episodes],
            "alarms_complete": complete,
        }
        return ApiResponse(200, body)

    def alarms(self, params: Mapping[str, str]) -> ApiResponse:
        choice = parse_range(params, self._now_ms())
        limit = self._int_param(params, "limit", self.alarm_limit, 1, 10_000)
        site, device = params.get("site") or None, params.get("device") or None
        summaries = self.source.summaries(choice.window)
        periods = {(d.site, d.device): d.extent.period_ms if d.extent else None for d in summaries}
        episodes, complete = self._episodes(choice.window, site, device, periods)
        return ApiResponse(
            200,
            {
                "range": _range_json(choice),
                "alarms": [_episode_json(e) for e in episodes[:limit]],
                "alarms_complete": complete,
            },
        )

    @staticmethod
    def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
        raw = params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise RequestError(f"{name}={raw!r} is not an integer") from exc
        if not low <= value <= high:
            raise RequestError(f"{name}={value} is out of range; use {low}..{high}")
        return value
