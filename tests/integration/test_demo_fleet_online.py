"""`make demo` on a bare clone, live: no shared data, no --data -> the simulated fleet, streamed
through the real agent, Kafka, sink and InfluxDB, with stamps re-based to the present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from gapwatch.demo.services import Stack, drop_storage

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_live_demo_without_data_streams_the_fleet(
    tmp_path: Path, mqtt_addr: tuple[str, int], kafka_bootstrap: str, influx_url: str
) -> None:
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    state = tmp_path / "state"
    env = {
        **os.environ,
        "GAPWATCH_DATA_DIR": str(empty),
        "GAPWATCH_DEMO_DATA": "",
        "GAPWATCH_MQTT_PORT": str(mqtt_addr[1]),
        "GAPWATCH_INFLUX_PORT": str(urllib.parse.urlsplit(influx_url).port),
        "GAPWATCH_KAFKA_PORT": kafka_bootstrap.rsplit(":", 1)[1],
    }
    args = ["--state-dir", str(state), "--fleet-devices", "2", "--fleet-minutes", "20"]
    args += ["--duration", "6", "--no-dashboard", "--no-progress"]
    started_ms = time.time() * 1000
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gapwatch", "demo", *args],
            capture_output=True,
            text=True,
            timeout=400,
            cwd=REPO,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        names = json.loads((state / "run" / "run.json").read_text())["names"]
        query = urllib.parse.urlencode(
            {
                "db": names["database"],
                "q": 'SELECT first("threshold") FROM "readings"',
                "epoch": "ms",
            }
        )
        with urllib.request.urlopen(f"{influx_url}/query?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
    finally:
        subprocess.run(
            [sys.executable, "-m", "gapwatch", "demo", "--down", "--state-dir", str(state)],
            capture_output=True,
            timeout=60,
            cwd=REPO,
            env=env,
            check=False,
        )
        run_file = state / "run" / "run.json"
        if run_file.exists():
            stack = Stack(mqtt_addr[0], mqtt_addr[1], kafka_bootstrap, influx_url)
            drop_storage(stack, json.loads(run_file.read_text())["names"])
    assert "simulated fleet" in result.stderr and "shipped for the simulated fleet" in result.stderr
    summary = json.loads((state / "out" / "summary.json").read_text())
    assert summary["mode"] == "online" and summary["devices"] == 2
    assert summary["model"].startswith("fleet/")
    assert summary["received"] == summary["messages"] > 2000
    assert summary["detection"] is not None and summary["detection"]["segments"] >= 2
    assert summary["imputation"][0]["entries"] > 0
    # 20 simulated minutes squeezed into 6 s and stamped up to the present
    first_ms = body["results"][0]["series"][0]["values"][0][0]
    assert started_ms - 20 * 60_000 - 60_000 < first_ms < started_ms
