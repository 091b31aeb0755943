"""A short live demo on the real stack: its printed counts are what InfluxQL says.

Two small files (a few hundred ticks each), a tiny model trained for the test, the real agent,
sink and dashboard as subprocesses, real Mosquitto, Kafka and InfluxDB. The counts are checked
against InfluxQL queries written here (not the demo's own), and against the offline replay of
the same files with the same bundle (the same engine must give the same numbers).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.bundle import load_bundle
from gapwatch.demo.bundle import TrainSettings, ensure_trained
from gapwatch.demo.inputs import GapSettings, load_replays
from gapwatch.demo.offline import run_offline
from gapwatch.demo.online import OnlineSettings, down, run_online
from gapwatch.demo.services import Stack

pytestmark = pytest.mark.integration


def write_device(path: Path, rows: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t0 = datetime(2021, 5, 1, tzinfo=UTC) + timedelta(hours=seed)
    lines = ["datetime;flow;pressure;temp;anomaly"]
    for i in range(rows):
        label = int(150 <= i < 190)
        flow = 30 + 3 * np.sin(i / 12) + rng.normal(0, 0.3) + 8 * label
        pressure = 1.0 + 0.1 * np.cos(i / 12) + rng.normal(0, 0.01)
        temp = 20 + i / 100 + rng.normal(0, 0.05)
        stamp = (t0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{stamp};{flow:.4f};{pressure:.4f};{temp:.4f};{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Quiet:
    def stage(self, text: str) -> None:
        pass

    def bar(self, total: int, desc: str, unit: str) -> Any:
        return lambda n: None


def influxql(url: str, db: str, q: str) -> int:
    query = urllib.parse.urlencode({"db": db, "q": q})
    with urllib.request.urlopen(f"{url}/query?{query}", timeout=10) as resp:
        body = json.loads(resp.read())
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def newest_ms(url: str, db: str) -> int:
    query = urllib.parse.urlencode(
        {"db": db, "q": 'SELECT last("threshold") FROM "readings"', "epoch": "ms"}
    )
    with urllib.request.urlopen(f"{url}/query?{query}", timeout=10) as resp:
        body = json.loads(resp.read())
    return int(body["results"][0]["series"][0]["values"][0][0])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_live_demo_counts_match_influxql(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    influx_url: str,
) -> None:
    files = [write_device(tmp_path / f"pump{k}.csv", 300, seed=k) for k in range(2)]
    state = tmp_path / "state"
    tiny = TrainSettings(name="tiny", epochs=2, window=16, hidden=16, latent=4)
    path, _ = ensure_trained(files, state, tiny, progress=False)
    bundle = load_bundle(path)
    replays = load_replays(
        files, GapSettings(drop_rate=0.05, channel_outage_s=20, device_outage_s=10, seed=5)
    )
    stack = Stack(mqtt_addr[0], mqtt_addr[1], kafka_bootstrap, influx_url)
    settings = OnlineSettings(duration_s=6.0, warmup=50, dashboard=True, dashboard_port=0)
    try:
        started = datetime.now(UTC)
        result = run_online(
            replays, bundle, state, stack, settings, progress=Quiet(), now=lambda: datetime.now(UTC)
        )
        records = json.loads((result.run_dir / "processes.json").read_text())
        check_run(result, bundle, replays, influx_url)
        # re-based: the files' 2021 stamps were moved to the run's own minutes
        newest = newest_ms(influx_url, result.names.database)
        assert started.timestamp() * 1000 - 60_000 < newest
        assert newest < datetime.now(UTC).timestamp() * 1000 + 60_000
    finally:
        stopped = down(state)
        run_file = state / "run" / "run.json"
        if run_file.exists():
            _drop(influx_url, kafka_bootstrap, json.loads(run_file.read_text())["names"])
    assert sorted(stopped) == ["agent", "dashboard", "sink"]
    assert not any(_alive(r["pid"]) for r in records)


def check_run(result: Any, bundle: Any, replays: Any, influx_url: str) -> None:
    db = result.names.database
    s = result.summary
    channels = bundle.manifest.channel_names
    assert s.ticks == influxql(influx_url, db, 'SELECT count("threshold") FROM "readings"')
    # 300 one-second rows per file, then max_gap silent ticks imputed before "offline"
    assert s.ticks == 2 * (300 + bundle.manifest.max_gap_ticks)
    assert s.scored_ticks == influxql(influx_url, db, 'SELECT count("score") FROM "readings"')
    imputed = sum(
        influxql(
            influx_url,
            db,
            f'SELECT count("{c}_imputed") FROM "readings" WHERE "{c}_imputed" = true',
        )
        for c in channels
    )
    assert s.imputed_entries == imputed > 0
    flagged = influxql(
        influx_url, db, 'SELECT count("anomaly") FROM "readings" WHERE "anomaly" = true'
    )
    assert s.anomaly_ticks == flagged
    assert s.received == s.messages == sum(r.messages for r in replays)
    assert s.latency is not None and s.latency.samples == s.messages
    assert 0 < s.latency.p50_s <= s.latency.p99_s < 30
    assert s.detection is not None and s.detection.segments == 2

    offline = run_offline(replays, bundle, clock=time.perf_counter, warmup=50).summary
    assert (offline.ticks, offline.imputed_entries, offline.anomaly_ticks) == (
        s.ticks,
        s.imputed_entries,
        s.anomaly_ticks,
    )
    assert offline.imputation[0].vae == pytest.approx(s.imputation[0].vae, rel=1e-6)

    assert result.dashboard_url is not None
    with urllib.request.urlopen(result.dashboard_url, timeout=10) as resp:
        assert resp.status == 200


def _drop(influx_url: str, bootstrap: str, names: dict[str, str]) -> None:
    from kafka import KafkaAdminClient

    body = urllib.parse.urlencode({"q": f'DROP DATABASE "{names["database"]}"'}).encode()
    urllib.request.urlopen(f"{influx_url}/query", data=body, timeout=10).close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="demo-test-cleanup")
    try:
        admin.delete_topics([names["scored_topic"], names["deadletter_topic"]])
    finally:
        admin.close()
