"""Fixtures of the fault-injection suite (names start with ``faults_``).

Each test gets private Mosquitto and Kafka instances (``tests/security/servers.py``) on free
loopback ports, so SIGKILLing them never disturbs the shared stack or other tests. A missing
binary skips, unless ``GAPWATCH_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _load(path: Path, key: str) -> ModuleType:
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


servers = _load(HERE.parent / "security" / "servers.py", "_gapwatch_tests_security_servers")
harness = _load(HERE / "harness.py", "_gapwatch_tests_faults_harness")


def _unavailable(what: str) -> None:
    if os.environ.get("GAPWATCH_REQUIRE_SERVICES", "") == "1":
        pytest.fail(f"GAPWATCH_REQUIRE_SERVICES=1: {what}", pytrace=False)
    pytest.skip(what)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="session")
def faults_harness() -> ModuleType:
    return harness


@pytest.fixture(scope="session")
def faults_servers() -> ModuleType:
    """``tests/security/servers.py``: start private brokers with other settings (controls)."""
    return servers


@pytest.fixture(scope="session")
def faults_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle root holding ``skab/1``: SKAB's channels, a tiny ONNX graph (no training)."""
    pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("faults-bundles")
    harness.write_tiny_bundle(root)
    return root


@pytest.fixture
def faults_skab_files() -> list[Path]:
    files = [harness.DATA / "skab" / "valve1" / f"{i}.csv" for i in range(3)]
    if not all(f.exists() for f in files):
        _unavailable(f"shared data not found under {harness.DATA}")
    return files


@pytest.fixture
def faults_tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs mounted for this test (needs root): a disk that fills up for real.

    Cannot mount: skipped, unless ``GAPWATCH_REQUIRE_SERVICES=1``, which makes it a failure.
    """
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        _unavailable(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


@pytest.fixture
def faults_mosquitto(tmp_path: Path) -> Iterator[Any]:
    """A private Mosquitto (plain listener) running the shipped broker settings
    (deploy/mosquitto/gapwatch.conf: every change persisted, a deep queue per session), so a
    kill -9 here tests what deploy/local/stack and compose run."""
    if servers.mosquitto_binary() is None:
        _unavailable("mosquitto is not installed; run deploy/local/stack install")
    service = servers.start_mosquitto(
        tmp_path / "mosquitto",
        plain_port=servers.free_port(),
        allow_anonymous=True,
        include_dir=servers.SHIPPED_MOSQUITTO_DIR,
    )
    try:
        yield service
    finally:
        service.kill()


@pytest.fixture
def faults_influx(tmp_path: Path) -> Iterator[Any]:
    """A private InfluxDB 1.x (no auth) with its own data directories."""
    import shutil

    if shutil.which("influxd") is None:
        _unavailable("influxd is not installed; run deploy/local/stack install")
    service = servers.start_influxdb(tmp_path / "influxdb", auth=False)
    try:
        yield service
    finally:
        service.kill()


@pytest.fixture
def faults_kafka_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make(start=True, port=None) -> Service``: private single-node Kafka (PLAINTEXT)."""
    if servers.kafka_lib() is None:
        _unavailable("Kafka jars or java missing; run deploy/local/stack install")
    made: list[Any] = []

    def make(start: bool = True, port: int | None = None) -> Any:
        service = servers.start_kafka(
            tmp_path / f"kafka-{len(made)}",
            plain_port=port or servers.free_port(),
            start=start,
        )
        made.append(service)
        return service

    try:
        yield make
    finally:
        for service in made:
            service.kill()


@pytest.fixture
def faults_agent(tmp_path: Path, faults_bundles: Path) -> Iterator[Callable[..., Any]]:
    """``make(mqtt_port, kafka_bootstrap, **settings) -> harness.Agent`` (not started)."""
    agents: list[Any] = []

    def make(mqtt_port: int, kafka_bootstrap: str, **settings: str) -> Any:
        prefix = f"faults-{uuid.uuid4().hex[:8]}"
        port = _port()
        workdir = tmp_path / f"agent-{len(agents)}"
        workdir.mkdir()
        env = harness.agent_env(
            prefix=prefix,
            state=workdir / "state",
            mqtt_port=mqtt_port,
            kafka_bootstrap=kafka_bootstrap,
            bundles=faults_bundles,
            metrics_port=port,
            **settings,
        )
        agent = harness.Agent(env, workdir, port, prefix)
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            agent.kill()
