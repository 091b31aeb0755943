"""Fixtures of the integration tests. Keep fixture names prefixed by their owner's area.

Edge agent (``agent_*``): a small model bundle trained once per session with the training API
(SKAB's own protocol: the first rows of the replayed file, which are normal), the real
``gapwatch agent`` run as a subprocess against the local stack, and a Kafka reader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("GAPWATCH_DATA_DIR", REPO / ".." / "shared" / "data"))
AGENT_SKAB_FILE = DATA / "skab" / "other" / "3.csv"
AGENT_TRAIN_ROWS = 450  # normal rows at the start of the file (its anomaly starts at row 568)


@pytest.fixture(scope="session")
def agent_skab_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/skab/1/``: a small VAE trained on the first rows of SKAB other/3 (seconds)."""
    pytest.importorskip("torch")
    if not AGENT_SKAB_FILE.exists():
        pytest.skip(f"shared data not found at {DATA}")
    from training.data import load_series
    from training.train import TrainConfig
    from training.train_bundle import BundleConfig, train_bundle

    root = tmp_path_factory.mktemp("agent-bundles")
    series = load_series([AGENT_SKAB_FILE])[0]
    config = BundleConfig(
        train=TrainConfig(window=16, hidden=64, latent=8, epochs=30, batch_size=64),
        name="skab",
        version="1",
        holdout=0.25,
        progress=False,
    )
    train_bundle([series.slice(0, AGENT_TRAIN_ROWS)], root, config)
    return root


@dataclass
class AgentProcess:
    """``gapwatch agent`` in a subprocess, configured through GAPWATCH_AGENT__* variables."""

    env: dict[str, str]
    log_path: Path
    metrics_port: int
    prefix: str  # MQTT topic prefix and Kafka topic prefix of this agent
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        log = self.log_path.with_suffix(f".{len(self.logs)}.log")
        self.logs.append(log)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gapwatch", "agent", "--log-format", "json"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2
            ) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except OSError:
            return None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text: str = resp.read().decode()
            return text

    def metric(self, sample: str) -> float:
        """One sample by its exact name and labels, e.g. 'x_total{reason="too_late"}'."""
        for line in self.metrics().splitlines():
            if line.rsplit(" ", 1)[0] == sample:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            h = self.health()
            if h and h.get("mqtt_subscribed"):
                return
            time.sleep(0.2)
        raise AssertionError(f"agent not ready in {timeout_s}s:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for path in self.logs:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    events.append(json.loads(line))
        return events

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.logs if p.exists())


@pytest.fixture
def agent_runner(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    unique_name: str,
    free_port: int,
) -> Iterator[Callable[..., AgentProcess]]:
    """``make(bundle_root, **settings) -> AgentProcess`` with unique topics, client id, state dir.

    ``settings`` are ``section__key=value`` overrides (TOML values as text), e.g.
    ``align__lateness_ticks="2"``. The process is SIGKILLed at teardown if still running.
    """
    started: list[AgentProcess] = []
    name = unique_name

    mqtt_host, mqtt_port = mqtt_addr

    def make(bundle_root: Path, **settings: str) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAPWATCH_AGENT__")}
        base = {
            "state_dir": f'"{tmp_path / "state"}"',
            "mqtt__host": f'"{mqtt_host}"',
            "mqtt__port": str(mqtt_port),
            "mqtt__client_id": f'"{name}"',
            "mqtt__topics": f'["{name}/{{site}}/{{device}}"]',
            "kafka__bootstrap": f'"{kafka_bootstrap}"',
            "kafka__scored_topic": f'"{name}.scored"',
            "kafka__deadletter_topic": f'"{name}.deadletter"',
            "kafka__linger_ms": "5",
            "bundles__root": f'"{bundle_root}"',
            "bundles__poll_s": "0.5",
            "devices": '[{match = "*", bundle = "skab"}]',
            "metrics__port": str(free_port),
            "shutdown_timeout_s": "20.0",
            **settings,
        }
        env.update({f"GAPWATCH_AGENT__{k.upper()}": v for k, v in base.items()})
        agent = AgentProcess(env, tmp_path / "agent", free_port, name)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(10)


def agent_read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[bytes]], bool],
    timeout_s: float = 90.0,
) -> list[bytes]:
    """Values of ``topic`` from the beginning, read until ``until(values)`` or the timeout."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(bytes(r.value) for r in records)
            if until(values):
                break
    finally:
        consumer.close()
    return values


@pytest.fixture
def agent_kafka_reader(kafka_bootstrap: str) -> Callable[..., list[bytes]]:
    """``read(topic, until, timeout_s=90, bootstrap=None) -> values`` (all, from the start)."""

    def read(
        topic: str,
        until: Callable[[list[bytes]], bool],
        timeout_s: float = 90.0,
        bootstrap: str | None = None,
    ) -> list[bytes]:
        return agent_read_topic(bootstrap or kafka_bootstrap, topic, until, timeout_s)

    return read
