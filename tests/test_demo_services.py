"""Generated configs load in the real config loaders; run names; processes stopped safely."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.config import load_config
from gapwatch.demo.errors import ServiceDown
from gapwatch.demo.processes import Processes, stop_recorded
from gapwatch.demo.services import RunNames, Stack, agent_toml, check_stack, sink_toml
from pipeline.config import load_sink_config

STACK = Stack("127.0.0.1", 11883, "127.0.0.1:19092", "http://127.0.0.1:18086")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_run_names_are_fresh_and_valid_everywhere() -> None:
    a = RunNames.new("demo", NOW, token="abc123")
    b = RunNames.new("demo", NOW)
    assert a.run_id == "20260102t030405-abc123"
    assert a.scored_topic != b.scored_topic and a.database != b.database
    assert re.fullmatch(r"[A-Za-z0-9._-]+", a.scored_topic)
    assert re.fullmatch(r"[a-z0-9_]+", a.database)
    assert (
        a.topic_template.format(site="demo", device="d1")
        == "gapwatch-demo/" + a.run_id + "/demo/d1"
    )


def test_agent_config_is_accepted_by_the_agent(tmp_path: Path) -> None:
    names = RunNames.new("demo", NOW, token="x")
    path = tmp_path / "agent.toml"
    path.write_text(
        agent_toml(
            names,
            STACK,
            state_dir=tmp_path / "state",
            bundles_root=tmp_path / "bundles",
            model="skab",
            metrics_port=9999,
            warmup_ticks=400,
            rescale=True,
        )
    )
    cfg = load_config(path, env={})
    assert cfg.mqtt.port == 11883 and cfg.mqtt.client_id == names.agent_client_id
    assert cfg.mqtt.topics == (names.topic_template,)
    assert cfg.kafka.scored_topic == names.scored_topic
    assert cfg.kafka.bootstrap == "127.0.0.1:19092"
    assert cfg.bundles.root == str(tmp_path / "bundles")
    assert cfg.metrics.port == 9999
    (rule,) = cfg.devices
    assert (rule.match, rule.bundle, rule.warmup_ticks, rule.rescale) == ("*", "skab", 400, True)
    assert cfg.spool_path == tmp_path / "state" / "spool.sqlite"


def test_sink_config_is_accepted_by_the_sink(tmp_path: Path) -> None:
    names = RunNames.new("demo", NOW, token="x")
    path = tmp_path / "sink.toml"
    path.write_text(sink_toml(names, STACK, max_wait_s=0.5))
    cfg = load_sink_config(path, env={})
    assert cfg.kafka.topic == names.scored_topic and cfg.kafka.group_id == names.group_id
    assert cfg.influx.database == names.database and cfg.influx.url == STACK.influx_url
    assert cfg.batch.max_wait_s == 0.5 and cfg.metrics.port == 0


def test_stack_addresses_follow_the_stack_environment() -> None:
    s = Stack.from_env(
        {"GAPWATCH_MQTT_PORT": "21883", "GAPWATCH_KAFKA_PORT": "29092", "GAPWATCH_INFLUX_PORT": "1"}
    )
    assert (s.mqtt_port, s.kafka_bootstrap, s.influx_url) == (
        21883,
        "127.0.0.1:29092",
        "http://127.0.0.1:1",
    )


def test_check_stack_names_every_service_that_is_down(free_port: int) -> None:
    down = Stack("127.0.0.1", free_port, f"127.0.0.1:{free_port}", f"http://127.0.0.1:{free_port}")
    with pytest.raises(ServiceDown) as err:
        check_stack(down)
    text = str(err.value)
    for name in ("Mosquitto", "Kafka", "InfluxDB", "deploy/local/stack up", "--offline"):
        assert name in text


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_processes_are_recorded_and_stopped_by_a_later_command(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    marker = str(tmp_path / "marker-arg")
    code = "import time, sys; print('up', flush=True); time.sleep(60)"
    proc = procs.start("sleeper", [sys.executable, "-c", code, marker], marker)
    deadline = time.monotonic() + 10
    while "up" not in procs.log_path("sleeper").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    procs.check_alive()
    assert stop_recorded(tmp_path) == ["sleeper"]
    assert proc.wait(timeout=10) != 0
    with pytest.raises(ServiceDown, match="sleeper exited"):
        procs.check_alive()


def test_a_pid_running_something_else_is_never_signalled(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        procs.start("x", [sys.executable, "-c", "pass"], "marker-not-in-cmdline")
        # pretend the record names the other process (a recycled pid)
        text = (tmp_path / "processes.json").read_text()
        (tmp_path / "processes.json").write_text(re.sub(r'"pid": \d+', f'"pid": {other.pid}', text))
        assert stop_recorded(tmp_path, timeout_s=1) == []
        assert _alive(other.pid)
    finally:
        other.kill()
        other.wait()
