"""``gapwatch simulate --fleet``: stamps, transport gaps, history files, a live run on Mosquitto."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.fleet import CHANNELS, FAULT_KINDS, FleetConfig, simulate_fleet
from edge.simulate import Series, catch_up_start, fleet_gaps, main, read_series

START = 1_767_225_600_000


def test_catch_up_stamps_end_at_the_last_send_and_never_lead_the_clock() -> None:
    now, ticks, tick = 1_000_000_000, 101, 1000
    # real time: tick k is sent at now + k s and stamped with that moment
    assert catch_up_start(now, ticks, tick, 1.0) == now
    for speed in (2.0, 10.0, 0.0):
        first = catch_up_start(now, ticks, tick, speed)
        stamps = first + tick * np.arange(ticks)
        sent = now + (tick * np.arange(ticks) / speed if speed else np.zeros(ticks))
        assert stamps[-1] == round(sent[-1])  # the newest reading is stamped "now"
        assert np.all(stamps <= np.round(sent))  # and none is in the future


def test_fleet_gaps_drop_silence_a_channel_and_a_device() -> None:
    runs = simulate_fleet(FleetConfig(devices=3), START, 300, faults=False)
    series = [Series(r.device, r.ts_ms, r.channels, r.values) for r in runs]
    gaps = fleet_gaps(series, 0.05, 40.0, 20.0, np.random.default_rng(0))
    for k, (s, g) in enumerate(zip(series, gaps, strict=True)):
        t = (s.ts_ms - s.ts_ms[0]) / 1000.0
        silent_ch = k % len(CHANNELS)
        in_outage = (t >= 0.3 * 299) & (t < 0.3 * 299 + 40)
        assert g.withheld[in_outage, silent_ch].all()
        in_device = (t >= 0.6 * 299) & (t < 0.6 * 299 + 20)
        assert np.array_equal(g.silent, in_device)
        others = ~in_outage & ~in_device
        rate = g.withheld[others].mean()
        assert 0.02 < rate < 0.09  # the random drops
    none = fleet_gaps(series, 0.0, 0.0, 0.0, np.random.default_rng(0))
    assert not any(g.withheld.any() or g.silent.any() for g in none)


def test_write_history_cli_writes_files_the_replayer_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hist"
    args = ["--fleet", "2", "--write-history", str(out), "--days", "0.05", "--seed", "4"]
    assert main([*args, "--start", "2026-01-01T00:00:00Z"]) == 0
    assert "2 devices x 4,320 ticks" in capsys.readouterr().out
    s = read_series(out / "pump-02.csv")
    assert s.channels == CHANNELS and len(s.ts_ms) == 4320 and s.ts_ms[0] == START
    again = tmp_path / "again"
    assert main([*args[:3], str(again), *args[4:], "--start", "2026-01-01T00:00:00Z"]) == 0
    assert (again / "pump-02.csv").read_bytes() == (out / "pump-02.csv").read_bytes()
    normal = tmp_path / "normal"
    assert main(["--fleet", "1", "--write-history", str(normal), "--days", "0.05", "--normal"]) == 0
    meta = json.loads((normal / "fleet.json").read_text())
    assert meta["devices"][0]["faults"] == []
    assert "0" in (normal / "pump-01.csv").read_text().splitlines()[1].split(",")[-1]


def test_fleet_cli_refuses_files_and_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--fleet", "2", str(tmp_path / "a.csv")]) == 2
    assert "give no FILE" in capsys.readouterr().err
    assert main(["--fleet", "2", "--duration", "1"]) == 2
    assert main(["--fleet", "2", "--mqtt", "nohost"]) == 2
    assert main(["--fleet", "2", "--write-history", str(tmp_path), "--days", "0"]) == 2
    assert main([]) == 2
    assert "--fleet N" in capsys.readouterr().err


@pytest.mark.integration
def test_live_fleet_reaches_a_subscriber_in_the_agent_payload_format(
    mqtt_addr: tuple[str, int], tmp_path: Path
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = mqtt_addr
    site = f"fleet-{uuid.uuid4().hex[:8]}"
    got: list[tuple[str, dict[str, Any]]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{site}")
    sub.on_connect = lambda c, *_: c.subscribe(f"sensors/{site}/#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda _c, _u, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect(host, port, keepalive=30)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK from Mosquitto"
        before = time.time() * 1000
        argv = ["--fleet", "2", "--duration", "200", "--speed", "0", "--site", site]
        argv += ["--mqtt", f"{host}:{port}", "--drop-rate", "0.05", "--seed", "2"]
        argv += ["--labels", str(tmp_path / "labels.json"), "--truth", str(tmp_path / "t.csv")]
        assert main(argv) == 0
        after = time.time() * 1000
        expected = 2 * 200 - 2 * 30  # every device silent for 30 s
        deadline = time.monotonic() + 20
        while len(got) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert len(got) == expected
    by_device: dict[str, list[dict[str, Any]]] = {}
    for topic, payload in got:
        assert set(payload) == {"ts", "values"} and isinstance(payload["ts"], int)
        assert set(payload["values"]) <= set(CHANNELS)
        assert all(isinstance(v, float) for v in payload["values"].values())
        by_device.setdefault(topic.rsplit("/", 1)[1], []).append(payload)
    assert sorted(by_device) == ["pump-01", "pump-02"]
    for k, device in enumerate(sorted(by_device)):
        rows = sorted(by_device[device], key=lambda p: p["ts"])
        ts = np.array([p["ts"] for p in rows])
        assert np.all(np.diff(ts) % 1000 == 0)
        # stamped with the wall clock: the newest reading at the moment the run started
        assert before - 1000 <= ts[-1] <= after
        # the silent channel: device k's channel k is missing for 60 s from 30 % of the run
        start = ts[0]
        quiet = [p for p in rows if start + 60_000 <= p["ts"] < start + 119_000]
        assert quiet and all(CHANNELS[k] not in p["values"] for p in quiet)
        dropped = sum(len(CHANNELS) - len(p["values"]) for p in rows if p not in quiet)
        assert dropped > 0  # random drops
    # 200 s is shorter than the clean start: no fault segment, and the labels say so
    assert json.loads((tmp_path / "labels.json").read_text()) == []
    truth_rows = (tmp_path / "t.csv").read_text().splitlines()
    sent_values = sum(len(p["values"]) for _, p in got)
    assert len(truth_rows) - 1 == 2 * 200 * len(CHANNELS) - sent_values  # what was withheld


@pytest.mark.integration
def test_live_fleet_labels_name_the_faults_it_sent(
    mqtt_addr: tuple[str, int], tmp_path: Path
) -> None:
    host, port = mqtt_addr
    site = f"fleet-{uuid.uuid4().hex[:8]}"
    labels = tmp_path / "labels.json"
    before = time.time() * 1000
    argv = ["--fleet", "2", "--duration", "1500", "--speed", "0", "--site", site]
    assert main([*argv, "--mqtt", f"{host}:{port}", "--labels", str(labels)]) == 0
    segments = json.loads(labels.read_text())
    assert {s["device"] for s in segments} == {"pump-01", "pump-02"}
    for s in segments:
        assert s["kind"] in FAULT_KINDS and s["stop"] > s["start"] >= FleetConfig().clean_ticks
        # stamped like the readings: the run ends when it started sending
        assert before - 1500 * 1000 <= s["start_ms"] < s["stop_ms"] <= time.time() * 1000
