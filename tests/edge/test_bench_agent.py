"""``gapwatch bench agent``: the stream it sends, its /proc readers, and a tiny real run.

The smoke run asserts what the JSON says and that the counts add up, never how fast it was.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.bundle import Manifest, read_manifest
from gapwatch.bench.agent import (
    PREFIX,
    Message,
    cpu_seconds,
    main,
    make_messages,
    percentiles,
    proc_memory,
    report,
    torch_loaded,
)

EIGHT = tuple(f"ch{i}" for i in range(8))
BundleFactory = Callable[..., Path]  # the agent_bundle_factory fixture of tests/edge/conftest.py


@pytest.fixture
def manifest8(agent_bundle_factory: BundleFactory) -> Manifest:
    return read_manifest(agent_bundle_factory(channels=EIGHT))


def test_messages_interleave_devices_and_count_readings(manifest8: Manifest) -> None:
    msgs = make_messages(
        manifest8, prefix="p", group="t", devices=3, ticks=4, base_ms=1_000_000, seed=0, missing=0.3
    )
    assert len(msgs) == 12
    assert [m.key for m in msgs[:3]] == ["bench/t000", "bench/t001", "bench/t002"]
    assert msgs[0].topic == "p/bench/t000"
    assert [m.ts_ms for m in msgs[::3]] == [1_000_000, 1_001_000, 1_002_000, 1_003_000]
    assert [m.seq for m in msgs[::3]] == [0, 1, 2, 3]
    for m in msgs:
        body = json.loads(m.payload)
        assert body["ts"] == m.ts_ms
        assert list(body["values"]) == list(EIGHT)
        assert m.readings == sum(v is not None for v in body["values"].values())
    assert sum(m.readings for m in msgs) < 12 * 8  # some values were left out (30 %)


def test_messages_are_reproducible_and_complete_without_missing(manifest8: Manifest) -> None:
    def make() -> list[Message]:
        return make_messages(
            manifest8, prefix=PREFIX, group="l", devices=2, ticks=3, base_ms=0, seed=5
        )

    a, b = make(), make()
    assert a == b
    assert all(m.readings == 8 for m in a)
    assert all(m.topic.startswith(PREFIX + "/") for m in a)


def test_proc_readers() -> None:
    status = "Name:\tpython\nVmHWM:\t  120000 kB\nVmRSS:\t   98000 kB\nThreads:\t4\n"
    assert proc_memory(status) == {"vmhwm_mb": 122.88, "vmrss_mb": 100.352}
    maps = "7f00-7f01 r-xp 0 08:01 1 /venv/lib/python3.11/site-packages/onnxruntime/capi/x.so\n"
    assert not torch_loaded(maps)
    assert torch_loaded(maps + "7f02-7f03 r-xp 0 08:01 2 /venv/site-packages/torch/lib/libc10.so\n")
    assert torch_loaded("7f02-7f03 r-xp 0 08:01 2 /opt/libtorch_cpu.so\n")
    tick = os.sysconf("SC_CLK_TCK")
    stat = f"42 (python -m x) S 1 42 42 0 -1 4194304 10 0 0 0 {3 * tick} {tick} 0 0 20 0 4"
    assert cpu_seconds(stat) == pytest.approx(4.0)


def test_percentiles() -> None:
    got = percentiles([float(i) for i in range(1, 101)])
    assert got["n"] == 100 and got["max_ms"] == 100.0
    assert got["p50_ms"] == pytest.approx(50.5)
    assert 99.0 <= got["p99_ms"] <= 100.0
    assert math.isnan(percentiles([])["p99_ms"])


def _result(rate: float, bare_rate: float, p99: float, hwm: float, torch: bool) -> dict[str, Any]:
    lat = {"p50_ms": 1.0, "p99_ms": p99, "max_ms": p99, "n": 10}
    return {
        "setup": {"channels": 8},
        "agent": {
            "readings_per_s": rate,
            "latency": lat,
            "latency_from_closing_reading": lat,
            "memory": {"vmhwm_mb": hwm, "vmrss_mb": hwm},
            "memory_idle": {"vmrss_mb": hwm},
            "torch_loaded": torch,
        },
        "bare": {"readings_per_s": bare_rate, "latency": lat, "memory": {"vmhwm_mb": 40.0}},
    }


def test_report_checks_each_target() -> None:
    text, met = report(_result(30_000, 40_000, 80.0, 120.0, False))
    assert met == {
        "throughput_20k": True,
        "throughput_vs_bare_0_7": True,
        "latency_p99_100ms": True,
        "rss_150mb": True,
    }
    assert "MISSED" not in text and "0.75" in text and "readings/s (8-ch msgs)" in text
    _, met = report(_result(30_000, 50_000, 150.0, 120.0, True))
    assert met == {
        "throughput_20k": True,
        "throughput_vs_bare_0_7": False,
        "latency_p99_100ms": False,
        "rss_150mb": False,  # torch loaded
    }


@pytest.mark.integration
def test_tiny_run_counts_add_up(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    agent_bundle_factory: BundleFactory,
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores: one for the agent, one for the publisher")
    bundle = agent_bundle_factory(channels=EIGHT, window=4, max_gap_ticks=3)
    out = tmp_path / "agent.json"
    devices, ticks, lateness, rate, seconds, lat_devices = 4, 12, 1, 200.0, 1.0, 4
    args = ["--mqtt", "{}:{}".format(*mqtt_addr), "--kafka", kafka_bootstrap]
    args += ["--bundle", str(bundle), "--devices", str(devices), "--ticks", str(ticks)]
    args += ["--rate", str(rate), "--seconds", str(seconds), "--latency-devices", str(lat_devices)]
    args += ["--lateness", str(lateness), "--core", str(max(os.sched_getaffinity(0)))]
    args += ["--timeout", "60", "--json", str(out)]
    assert main(args) == 0
    got = json.loads(out.read_text())
    manifest = read_manifest(bundle)
    assert got["setup"]["bundle"] == f"{manifest.name}/{manifest.version}"
    assert got["setup"]["channels"] == 8
    a, b = got["agent"], got["bare"]
    lat_ticks = round(rate * seconds / lat_devices)
    published = devices * ticks + lat_devices * lat_ticks
    closed_by_event = devices * (ticks - lateness - 1)

    assert b["published"] == b["received"] == published
    assert a["published"] == published
    assert a["complete"] and a["exit_code"] == 0 and a["dead_letters"] == 0
    # one causal record per published tick, plus the imputed ticks after each device went quiet
    assert a["causal_records_of_published_ticks"] == published
    assert a["causal_records"] == published + a["causal_records_of_silent_ticks"]
    assert a["records"][next(iter(a["records"]))] >= a["causal_records"] + a["backfill_records"]
    assert a["timestamps"] == "LogAppendTime"
    assert a["throughput_messages"] == b["throughput_messages"] == closed_by_event
    n_lat = lat_devices * (lat_ticks - lateness - 1)
    assert a["latency"]["n"] == a["latency_from_closing_reading"]["n"] == b["latency"]["n"] == n_lat
    assert a["readings_per_s"] > 0 and b["readings_per_s"] > 0
    assert a["torch_loaded"] is False
    assert a["memory"]["vmhwm_mb"] >= a["memory"]["vmrss_mb"] > 0
    assert set(got["targets_met"]) == {
        "throughput_20k",
        "throughput_vs_bare_0_7",
        "latency_p99_100ms",
        "rss_150mb",
    }
