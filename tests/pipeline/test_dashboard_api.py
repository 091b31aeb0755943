"""The dashboard's JSON API against the in-memory source, fed with the sink's line protocol."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge.schema import ScoredTick
from pipeline.dashboard.api import DashboardApi, parse_instant
from pipeline.dashboard.memory_source import MemorySource
from pipeline.errors import StorageError
from pipeline.lineproto import LineEncoder

BASE = datetime(2024, 5, 1, tzinfo=UTC)
BASE_MS = int(BASE.timestamp() * 1000)
SECOND = 1000


def tick(i: int, device: str = "p1", site: str = "lab", **changes: Any) -> ScoredTick:
    """Tick ``i`` (1 s apart) of a two-channel device; keyword arguments replace fields."""
    base = ScoredTick(
        site=site,
        device=device,
        ts_ms=BASE_MS + i * SECOND,
        values={"temp": 20.0 + i, "rh": 50.0},
        imputed=(),
        sigma={},
        score=0.5,
        smoothed=0.5,
        threshold=3.0,
        anomaly=False,
        top_channels=(),
        model="m",
        model_version="v1",
    )
    return replace(base, **changes)


def store_of(ticks: Iterable[ScoredTick]) -> MemorySource:
    store = MemorySource()
    encoder = LineEncoder()
    store.write_lines(b"".join(encoder.encode(t) for t in ticks))
    return store


def fleet_ticks() -> list[ScoredTick]:
    """p1: 60 ticks, rh imputed on 10-14, flagged 30-34 and 50 (two alarms); p2: 20 ticks."""
    ticks = []
    for i in range(60):
        changes: dict[str, Any] = {}
        if 10 <= i < 15:
            changes |= {"imputed": ("rh",), "sigma": {"rh": 2.0}}
        if 30 <= i < 35 or i == 50:
            top = ("rh", "temp") if i == 32 else ("temp",)
            changes |= {"anomaly": True, "score": 9.0 if i == 32 else 5.0, "top_channels": top}
        ticks.append(tick(i, **changes))
    ticks += [tick(i, device="p2", site="plant", model_version="v2") for i in range(20)]
    return ticks


def api_for(store: MemorySource, now: datetime, **kwargs: Any) -> DashboardApi:
    return DashboardApi(store, clock=lambda: now, **kwargs)


def test_fleet_on_an_empty_store_says_no_data_yet() -> None:
    answer = api_for(MemorySource("empty"), BASE).handle("/api/fleet", {})
    assert answer.status == 200
    body = answer.body
    assert body["state"] == "empty"
    assert body["message"] == "No data yet."
    assert "in-memory store 'empty'" in body["hint"]
    assert body["devices"] == [] and body["alarms"] == []


def test_fleet_over_all_data_counts_devices_alarms_and_imputation() -> None:
    api = api_for(store_of(fleet_ticks()), BASE + timedelta(days=30))
    body = api.handle("/api/fleet", {"range": "all"}).body
    assert body["state"] == "ok"
    assert body["range"] == {"key": "all", "label": "all data", "start_ms": None, "end_ms": None}
    p1, p2 = body["devices"]
    assert (p1["site"], p1["device"], p2["site"], p2["device"]) == ("lab", "p1", "plant", "p2")
    assert p1["ticks"] == 60 and p2["ticks"] == 20
    assert p1["last_seen_ms"] == BASE_MS + 59 * SECOND
    assert (p1["model_version"], p2["model_version"]) == ("v1", "v2")
    assert p1["imputation_rate"] == pytest.approx(5 * 0.5 / 60)  # 1 of 2 channels on 5 ticks
    assert p2["imputation_rate"] == 0.0
    assert (p1["flagged"], p1["alarms"], p2["alarms"]) == (6, 2, 0)
    totals = body["totals"]
    assert totals == {
        "devices": 2,
        "active": 2,
        "ticks": 80,
        "flagged": 6,
        "alarms": 2,
        "imputation_rate": pytest.approx(2.5 / 80),
    }
    newest, oldest = body["alarms"]
    assert (newest["start_ms"], newest["ticks"]) == (BASE_MS + 50 * SECOND, 1)
    assert (oldest["start_ms"], oldest["end_ms"]) == (BASE_MS + 30 * SECOND, BASE_MS + 34 * SECOND)
    assert (oldest["peak_score"], oldest["top_channels"]) == (9.0, ["rh", "temp"])
    assert body["alarms_complete"] is True
    assert body["newest_ms"] == BASE_MS + 59 * SECOND


def test_relative_range_counts_only_ticks_inside_it() -> None:
    now = BASE + timedelta(seconds=59)
    body = api_for(store_of(fleet_ticks()), now).handle("/api/fleet", {"range": "15m"}).body
    assert body["range"]["start_ms"] == BASE_MS + 59 * SECOND - 15 * 60 * SECOND
    assert body["totals"]["ticks"] == 80
    later = now + timedelta(minutes=15, seconds=-10)
    body = api_for(store_of(fleet_ticks()), later).handle("/api/fleet", {"range": "15m"}).body
    p1, p2 = body["devices"]
    assert (p1["ticks"], p2["ticks"]) == (11, 0)  # ticks 49..59 of p1 only
    assert (p1["flagged"], p1["alarms"]) == (1, 1)


def test_old_data_outside_a_relative_range_points_at_all_data() -> None:
    body = api_for(store_of(fleet_ticks()), BASE + timedelta(days=400)).handle("/api/fleet", {})
    assert body.body["state"] == "out_of_range"
    assert "All data" in body.body["hint"]
    assert len(body.body["devices"]) == 2  # still listed, with their last-seen time
    assert body.body["devices"][0]["ticks"] == 0


def test_a_revision_that_clears_an_alarm_removes_it() -> None:
    flagged = tick(5, anomaly=True, score=7.0, top_channels=("temp",))
    cleared = replace(flagged, anomaly=False, revision=1, score=1.0)
    body = api_for(store_of([tick(4), flagged, cleared]), BASE).fleet({"range": "all"}).body
    (device,) = body["devices"]
    assert (device["flagged"], device["alarms"]) == (0, 0)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"range": "2h"}, "range='2h' is unknown"),
        ({"range": "custom", "start": "1"}, "needs end"),
        ({"range": "custom", "start": "5", "end": "5"}, "must be before end"),
        ({"range": "custom", "start": "2024-05-01T00:00:00", "end": "9"}, "no time zone"),
        ({"range": "custom", "start": "yesterday", "end": "9"}, "is not a time"),
    ],
)
def test_bad_ranges_answer_400_naming_the_parameter(params: dict[str, str], needle: str) -> None:
    answer = api_for(MemorySource(), BASE).handle("/api/fleet", params)
    assert answer.status == 400
    assert needle in answer.body["error"]


def test_custom_range_takes_epoch_ms_or_rfc3339() -> None:
    api = api_for(store_of(fleet_ticks()), BASE)
    params = {"range": "custom", "start": "2024-05-01T00:00:10Z", "end": str(BASE_MS + 19_000)}
    body = api.handle("/api/fleet", params).body
    assert body["range"]["start_ms"] == BASE_MS + 10_000
    assert [d["ticks"] for d in body["devices"]] == [10, 10]
    assert parse_instant("2024-05-01T02:00:00+02:00", "start") == BASE_MS


def test_device_series_are_raw_when_they_fit() -> None:
    api = api_for(store_of(fleet_ticks()), BASE)
    body = api.handle("/api/device", {"site": "lab", "device": "p1", "range": "all"}).body
    assert body["state"] == "ok"
    assert body["interval_ms"] == 0
    assert len(body["times"]) == 60
    assert body["range"]["start_ms"] == BASE_MS and body["range"]["end_ms"] == BASE_MS + 59_000
    rh = next(c for c in body["channels"] if c["name"] == "rh")
    assert rh["imputed"][10:15] == [1.0] * 5 and rh["imputed"][15] == 0.0
    assert rh["sigma"][10] == 2.0 and rh["sigma"][15] is None
    assert [c["name"] for c in body["channels"]] == ["rh", "temp"]
    assert body["flagged"][30] is True and body["flagged"][29] is False
    assert [a["ticks"] for a in body["alarms"]] == [1, 5]


def test_device_series_are_bucketed_when_longer_than_max_points() -> None:
    api = api_for(store_of(fleet_ticks()), BASE)
    params = {"site": "lab", "device": "p1", "range": "all", "points": "10"}
    body = api.handle("/api/device", params).body
    assert body["interval_ms"] == 10_000  # 59 s over at most 10 points
    assert len(body["times"]) == 6
    assert all(t % 10_000 == 0 for t in body["times"])
    rh = next(c for c in body["channels"] if c["name"] == "rh")
    assert rh["imputed"][1] == 0.5  # ticks 10..19: 5 of 10 imputed
    assert rh["sigma"][1] == 2.0
    assert body["score"][3] == 9.0  # the bucket max keeps the spike
    assert body["flagged"][3] is True and body["flagged"][0] is False


def test_unknown_or_silent_devices_explain_why_they_are_empty() -> None:
    api = api_for(store_of(fleet_ticks()), BASE + timedelta(days=2))
    unknown = api.handle("/api/device", {"site": "lab", "device": "nope"}).body
    assert unknown["state"] == "empty"
    assert "no stored readings at all" in unknown["hint"]
    silent = api.handle("/api/device", {"site": "lab", "device": "p1", "range": "1h"}).body
    assert silent["state"] == "empty"
    assert "All data" in silent["hint"]
    assert silent["last_seen_ms"] == BASE_MS + 59 * SECOND
    missing = api.handle("/api/device", {"device": "p1"})
    assert missing.status == 400 and "missing site" in missing.body["error"]
    bad = api.handle("/api/device", {"site": "lab", "device": "p1", "points": "many"})
    assert bad.status == 400 and "points" in bad.body["error"]


def test_alarms_endpoint_filters_and_limits() -> None:
    api = api_for(store_of(fleet_ticks()), BASE)
    body = api.handle("/api/alarms", {"range": "all", "limit": "1"}).body
    assert [a["start_ms"] for a in body["alarms"]] == [BASE_MS + 50 * SECOND]
    body = api.handle("/api/alarms", {"range": "all", "device": "p2"}).body
    assert body["alarms"] == []


def test_capped_anomaly_points_are_reported_as_incomplete() -> None:
    api = api_for(store_of(fleet_ticks()), BASE, anomaly_points=3)
    body = api.handle("/api/fleet", {"range": "all"}).body
    assert body["alarms_complete"] is False


def test_storage_failures_answer_503_with_a_hint() -> None:
    store = store_of(fleet_ticks())
    store.failure = StorageError("InfluxDB x is unreachable: refused")
    api = api_for(store, BASE)
    for path in ("/api/fleet", "/api/health", "/api/alarms"):
        answer = api.handle(path, {"range": "all", "site": "lab", "device": "p1"})
        assert answer.status == 503, path
        assert "unreachable" in answer.body["error"]
        assert "deploy/local/stack" in answer.body["hint"]
    store.failure = None
    assert api.handle("/api/health", {}).status == 200


def test_unknown_endpoint_is_404_and_config_describes_the_source() -> None:
    api = api_for(MemorySource("m"), BASE, refresh_s=7)
    assert api.handle("/api/nope", {}).status == 404
    config = api.handle("/api/config", {}).body
    assert config["refresh_s"] == 7
    assert [r["key"] for r in config["ranges"]] == ["15m", "1h", "6h", "24h", "7d", "all", "custom"]


def test_clock_must_be_timezone_aware_and_max_points_bounded() -> None:
    api = DashboardApi(MemorySource(), clock=lambda: datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        api.handle("/api/fleet", {})
    with pytest.raises(ValueError, match="max_points"):
        DashboardApi(MemorySource(), clock=lambda: BASE, max_points=5)
