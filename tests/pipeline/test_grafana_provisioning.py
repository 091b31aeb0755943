"""The Grafana provisioning files parse, and every InfluxDB query in them is time-bounded.

A query without ``$timeFilter`` scans a device's whole history on every refresh (the "Fleet
overview" table did). The template variables (``SHOW TAG VALUES`` / ``SHOW FIELD KEYS``) are
metadata queries and take no time range in InfluxDB 1.x; they are not panel queries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
ALERTING = sorted((GRAFANA / "provisioning" / "alerting").glob("*.yaml"))
DATASOURCE_UID = "gapwatch-influxdb"


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if "query" in target:
                out.append((f"{panel.get('title')}/{target.get('refId')}", target["query"]))
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in ALERTING:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert doc["apiVersion"] == 1
        for group in doc["groups"]:
            assert {"orgId", "name", "folder", "interval", "rules"} <= set(group), path
            rules.extend(group["rules"])
    return rules


def is_time_bounded(query: str) -> bool:
    return bool(re.search(r"\$timeFilter\b|\$__timeFilter\b|\btime\s*[<>]=?", query))


def test_there_is_a_dashboard_and_alert_rules() -> None:
    assert DASHBOARDS and ALERTING


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_has_a_time_filter(path: Path) -> None:
    queries = panel_queries(json.loads(path.read_text(encoding="utf-8")))
    assert queries
    unbounded = [name for name, q in queries if not is_time_bounded(q)]
    assert unbounded == [], f"queries without $timeFilter in {path.name}: {unbounded}"


def test_the_checker_catches_an_unbounded_query() -> None:
    assert not is_time_bounded('SELECT last("revision") FROM "readings" GROUP BY "device"')
    assert is_time_bounded('SELECT last("revision") FROM "readings" WHERE $timeFilter')


def test_every_alert_rule_is_well_formed_and_time_bounded() -> None:
    rules = alert_rules()
    assert len(rules) >= 2
    uids = [r["uid"] for r in rules]
    assert len(uids) == len(set(uids))
    for rule in rules:
        assert {"uid", "title", "condition", "data", "labels", "annotations"} <= set(rule)
        refs = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in refs, rule["uid"]
        influx = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
        assert influx, rule["uid"]
        for d in influx:
            assert d["datasourceUid"] == DATASOURCE_UID
            assert d["relativeTimeRange"]["from"] > d["relativeTimeRange"]["to"] >= 0
            assert d["model"]["rawQuery"] is True
            assert is_time_bounded(d["model"]["query"]), rule["uid"]
            assert 'GROUP BY "site", "device"' in d["model"]["query"]  # one alert per device
        for d in rule["data"]:
            if d["datasourceUid"] == "__expr__":
                assert d["model"]["expression"] in refs
        assert rule["annotations"]["__dashboardUid__"] == "gapwatch-fleet"
        assert rule["labels"]["source"] == "gapwatch"
