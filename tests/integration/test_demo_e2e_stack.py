"""``gapwatch bench e2e`` on the real stack, cut to one small step per path (a smoke run)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_bench_e2e_measures_both_paths_and_cleans_up(
    tmp_path: Path, mqtt_addr: tuple[str, int], kafka_bootstrap: str, influx_url: str
) -> None:
    out = tmp_path / "e2e.json"
    env = {
        **os.environ,
        "GAPWATCH_BENCH_STATE_DIR": str(tmp_path),
        "GAPWATCH_MQTT_PORT": str(mqtt_addr[1]),
        "GAPWATCH_KAFKA_PORT": kafka_bootstrap.rsplit(":", 1)[1],
        "GAPWATCH_INFLUX_PORT": influx_url.rsplit(":", 1)[1],
    }
    args = [
        "--json", str(out), "--devices", "2", "--latency-rate", "20", "--latency-seconds", "3",
        "--start-rate", "20", "--max-rate", "25", "--step-seconds", "2",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "gapwatch", "bench", "e2e", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sustained ticks/s" in result.stdout and "bare relay" in result.stdout
    data = json.loads(out.read_text())
    for path in ("pipeline", "baseline"):
        r = data[path]
        assert r["sustained_ticks_s"] == 20 and r["capped"], r
        assert r["latency_ticks"] > 0
        assert 0 < r["latency_p50_s"] <= r["latency_p99_s"] < 30
    assert math.isfinite(data["ratios"]["latency_p50"])
    # the run's processes were stopped and its databases dropped
    query = urllib.parse.urlencode({"q": "SHOW DATABASES"})
    with urllib.request.urlopen(f"{influx_url}/query?{query}", timeout=10) as resp:
        series = json.loads(resp.read())["results"][0].get("series", [{}])
        databases = {row[0] for row in series[0].get("values", [])}
    for path in ("pipeline", "baseline"):
        assert data[path]["database"] and data[path]["database"] not in databases
        records = json.loads((tmp_path / "bench" / "e2e-run" / path / "processes.json").read_text())
        assert records and not any(_alive(r["pid"]) for r in records)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
