"""Every InfluxQL query of deploy/grafana/dashboards/gapwatch.json runs on a real InfluxDB.

The database is seeded with scored ticks through the sink's own encoder
(:class:`pipeline.lineproto.LineEncoder`). Grafana's macros are substituted the way Grafana does
(multi-value variables become escaped regex alternations, ``${var:raw}`` stays raw), then each
query must return the series and columns its panel expects, with the seeded numbers.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.schema import ScoredTick
from pipeline.lineproto import LineEncoder

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gapwatch.json"
BASE_MS = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1000)
TICK_MS = 10_000
TICKS = 120
DEVICES = (("lab", "pump-1"), ("lab", "pump-2"), ("plant b", "valve.7"))
CHANNELS = ("temp", "PM2.5")  # a dot: ${channel:raw} must not regex-escape field names
FLAGGED = {("lab", "pump-1"): range(60, 71), ("plant b", "valve.7"): range(30, 33)}
SILENT = {"PM2.5": range(10, 16), "temp": range(40, 43)}  # imputed on every device


def seed_ticks() -> list[ScoredTick]:
    ticks = []
    for d, (site, device) in enumerate(DEVICES):
        for i in range(TICKS):
            silent = tuple(ch for ch in CHANNELS if i in SILENT[ch])
            flagged = i in FLAGGED.get((site, device), ())
            ticks.append(
                ScoredTick(
                    site=site,
                    device=device,
                    ts_ms=BASE_MS + i * TICK_MS,
                    values={"temp": 20.0 + d + 0.01 * i, "PM2.5": 35.0 + (i % 7)},
                    imputed=silent,
                    sigma=dict.fromkeys(silent, 1.5),
                    score=5.0 if flagged else 0.5,
                    smoothed=4.0 if flagged else 0.5,
                    threshold=3.0,
                    anomaly=flagged,
                    top_channels=("temp", "PM2.5") if flagged else (),
                    model="synthetic",
                    model_version="20240501T000000",
                )
            )
    return ticks


def _post(url: str, path: str, data: bytes) -> Any:
    with urllib.request.urlopen(urllib.request.Request(f"{url}{path}", data=data), timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None


def run_query(url: str, db: str, statement: str) -> dict[str, Any]:
    form = urllib.parse.urlencode({"db": db, "q": statement, "epoch": "ms"}).encode()
    result: dict[str, Any] = _post(url, "/query", form)["results"][0]
    return result


@pytest.fixture(scope="module")
def seeded(influx_url: str) -> Iterator[str]:
    db = f"test-grafana-{datetime.now(UTC):%H%M%S%f}"
    _post(influx_url, "/query", urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode())
    try:
        encoder = LineEncoder()
        lines = b"".join(encoder.encode(t) for t in seed_ticks())
        query = urllib.parse.urlencode({"db": db, "precision": "ms"})
        _post(influx_url, f"/write?{query}", lines)
        yield db
    finally:
        _post(influx_url, "/query", urllib.parse.urlencode({"q": f'DROP DATABASE "{db}"'}).encode())


def grafana_regex_escape(value: str) -> str:
    """Grafana's escaping of a variable value inside an InfluxQL regex."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", value)


def substitute(query: str, site: list[str], device: list[str], channel: str) -> str:
    def alternation(values: list[str]) -> str:
        escaped = [grafana_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    start, end = BASE_MS, BASE_MS + TICKS * TICK_MS
    out = query.replace("$timeFilter", f"time >= {start}ms and time <= {end}ms")
    out = out.replace("$__interval_ms", "60000").replace("$__interval", "1m")
    out = out.replace("${channel:raw}", channel)
    out = out.replace("$site", alternation(site)).replace("$device", alternation(device))
    assert "$" not in out.replace("^", "").replace("$/", "/"), f"unknown macro left in {out}"
    return out


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (panel["title"], target["refId"], target["query"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


ALL = ("pump-1", "pump-2", "valve.7")
ALARMED = ("pump-1", "valve.7")
# (panel title, refId) -> (columns, the devices of its series when grouped by device)
EXPECTED: dict[tuple[str, str], tuple[list[str], tuple[str, ...] | None]] = {
    ("Alarmed ticks in range", "A"): (["time", "alarmed ticks"], None),
    ("Imputed share in range", "A"): (["time", "imputed share"], None),
    ("Fleet anomaly counts", "A"): (["time", "alarmed ticks"], ALARMED),
    ("Fleet overview", "A"): (["time", "ticks", "imputed share", "model version"], ALL),
    ("Fleet overview", "B"): (["time", "flagged ticks"], ALARMED),
    ("Fleet overview", "C"): (["time", "revision"], ALL),
    ("Score vs threshold · $device", "A"): (["time", "score", "smoothed", "threshold"], None),
    ("Score vs threshold · $device", "B"): (["time", "alarm"], None),
    ("Imputation rate", "A"): (["time", "imputed share"], ALL),
    ("$channel (imputed points and ±σ)", "A"): (["time", "value"], ALL),
    ("$channel (imputed points and ±σ)", "B"): (["time", "imputed"], ALL),
    ("$channel (imputed points and ±σ)", "C"): (["time", "upper", "lower"], ALL),
    ("Alarmed ticks", "A"): (
        ["time", "site", "device", "score", "threshold", "top_channels", "model_version"],
        None,
    ),
}

ALL_SITES = sorted({s for s, _ in DEVICES})
ALL_DEVICES = sorted(d for _, d in DEVICES)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_query_is_expected_and_tested(dashboard: dict[str, Any]) -> None:
    found = {(title, ref) for title, ref, _ in targets(dashboard)}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("channel", CHANNELS)
def test_panel_queries_return_the_expected_series(
    influx_url: str, seeded: str, dashboard: dict[str, Any], channel: str
) -> None:
    for title, ref, raw in targets(dashboard):
        query = substitute(raw, ALL_SITES, ALL_DEVICES, channel)
        result = run_query(influx_url, seeded, query)
        assert "error" not in result, f"{title} {ref}: {result.get('error')}\n{query}"
        series = result.get("series", [])
        assert series, f"{title} {ref} returned nothing:\n{query}"
        columns, devices = EXPECTED[(title, ref)]
        for s in series:
            assert s["columns"] == columns, f"{title} {ref}"
        if devices is not None:
            assert tuple(sorted(s["tags"]["device"] for s in series)) == devices, f"{title} {ref}"


def test_panel_numbers_match_the_seeded_ticks(
    influx_url: str, seeded: str, dashboard: dict[str, Any]
) -> None:
    queries = {(t, r): q for t, r, q in targets(dashboard)}

    def run(key: tuple[str, str], site: list[str], device: list[str]) -> list[dict[str, Any]]:
        query = substitute(queries[key], site, device, "PM2.5")
        series: list[dict[str, Any]] = run_query(influx_url, seeded, query).get("series", [])
        return series

    flagged = sum(len(r) for r in FLAGGED.values())
    (stat,) = run(("Alarmed ticks in range", "A"), ALL_SITES, ALL_DEVICES)
    assert stat["values"][0][1] == flagged
    (share,) = run(("Imputed share in range", "A"), ALL_SITES, ALL_DEVICES)
    silent = sum(len(r) for r in SILENT.values())
    assert share["values"][0][1] == pytest.approx(silent / TICKS / len(CHANNELS))
    counts = run(("Fleet anomaly counts", "A"), ALL_SITES, ALL_DEVICES)
    per_device = {s["tags"]["device"]: sum(v[1] for v in s["values"]) for s in counts}
    assert per_device == {"pump-1": 11, "valve.7": 3}

    # one device selected, with a regex-special name
    (scores,) = run(("Score vs threshold · $device", "A"), ["plant b"], ["valve.7"])
    assert max(v[1] for v in scores["values"]) == 5.0
    (alarms,) = run(("Score vs threshold · $device", "B"), ["plant b"], ["valve.7"])
    assert len(alarms["values"]) >= 1
    imputed = run(("$channel (imputed points and ±σ)", "B"), ["lab"], ["pump-1"])
    assert [s["tags"]["device"] for s in imputed] == ["pump-1"]
    assert len(imputed[0]["values"]) >= 1
    (band,) = run(("$channel (imputed points and ±σ)", "C"), ["lab"], ["pump-1"])
    for _, upper, lower in band["values"]:
        assert upper - lower == pytest.approx(2 * 1.5)
    (table,) = run(("Alarmed ticks", "A"), ALL_SITES, ALL_DEVICES)
    assert len(table["values"]) == flagged
    assert {row[5] for row in table["values"]} == {"temp,PM2.5"}
    overview = run(("Fleet overview", "A"), ALL_SITES, ALL_DEVICES)
    assert {s["tags"]["device"]: s["values"][0][1] for s in overview} == dict.fromkeys(
        ALL_DEVICES, TICKS
    )


def test_variable_queries_list_sites_devices_and_channels(
    influx_url: str, seeded: str, dashboard: dict[str, Any]
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"site", "device", "channel"}
    for v in variables.values():
        assert v["datasource"]["uid"] == "gapwatch-influxdb"
        assert v["multi"] and v["includeAll"]

    def values(name: str, site: list[str]) -> list[str]:
        query = substitute(variables[name]["query"], site, ALL_DEVICES, "temp")
        result = run_query(influx_url, seeded, query)
        assert "error" not in result, result
        rows = [row for s in result["series"] for row in s["values"]]
        # Grafana takes the tag value of SHOW TAG VALUES, the first column otherwise
        found = [row[1] if query.startswith("SHOW TAG VALUES") else row[0] for row in rows]
        pattern = variables[name].get("regex", "")
        if pattern:
            found = [f for f in found if re.search(pattern.strip("/"), f)]
        return sorted(found)

    assert values("site", ALL_SITES) == ALL_SITES
    assert values("device", ALL_SITES) == ALL_DEVICES
    assert values("device", ["plant b"]) == ["valve.7"]
    assert values("channel", ALL_SITES) == sorted(CHANNELS)


def test_dashboard_json_is_consistent(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "gapwatch-fleet"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels(dashboard):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "gapwatch-influxdb", panel["title"]
        assert panel.get("repeat", "site") in variables
        for target in panel["targets"]:
            assert target["rawQuery"] is True
            used = set(re.findall(r"\$\{?(\w+)", target["query"]))
            assert used <= variables | {"timeFilter", "__interval", "__interval_ms"}, used


def test_provisioning_points_at_the_dashboard_and_data_source() -> None:
    source = (GRAFANA / "provisioning/datasources/gapwatch-influxdb.yaml").read_text()
    for line in ("uid: gapwatch-influxdb", "type: influxdb", "version: InfluxQL", "dbName: $"):
        assert re.search(rf"^\s+{re.escape(line)}", source, re.MULTILINE), line
    provider = (GRAFANA / "provisioning/dashboards/gapwatch.yaml").read_text()
    assert re.search(r"^\s+type: file$", provider, re.MULTILINE)
    assert re.search(r"^\s+path: /var/lib/grafana/dashboards/gapwatch$", provider, re.MULTILINE)


def test_alert_rule_queries_name_the_alarmed_devices(influx_url: str, seeded: str) -> None:
    import yaml

    path = GRAFANA / "provisioning" / "alerting" / "gapwatch-alerts.yaml"
    rules = {r["uid"]: r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}

    def run(uid: str) -> dict[str, float]:
        (data,) = [d for d in rules[uid]["data"] if d["datasourceUid"] == "gapwatch-influxdb"]
        query = substitute(data["model"]["query"], ALL_SITES, ALL_DEVICES, "temp")
        result = run_query(influx_url, seeded, query)
        assert "error" not in result, f"{uid}: {result.get('error')}\n{query}"
        return {s["tags"]["device"]: s["values"][-1][1] for s in result.get("series", [])}

    assert run("gapwatch-device-alarm") == {"pump-1": 11, "valve.7": 3}
    silent = sum(len(r) for r in SILENT.values())
    shares = run("gapwatch-imputed-share")
    assert shares == pytest.approx(dict.fromkeys(ALL_DEVICES, silent / TICKS / len(CHANNELS)))
