"""The production stack description (deploy/compose) and the systemd units hold together.

``docker compose config`` validates the file where Docker Compose is installed; everywhere the
structure is checked: every service the stack needs, images or builds, dependencies that
exist, files it mounts or reads that exist, and the sink's settings (file + environment) pass
the sink's own validation.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_sink_config

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
NEEDED = {"mosquitto", "kafka", "influxdb", "grafana", "sink", "dashboard", "agent"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def env_file(name: str) -> dict[str, str]:
    out = {}
    for line in (COMPOSE_DIR / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in service.get("env_file", []):
        env.update(env_file(name))
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
    return env


def test_every_service_of_the_stack_is_there_with_an_image_or_build() -> None:
    services = compose()["services"]
    assert set(services) >= NEEDED
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka['KAFKA_NODE_ID']}@")
    assert services["influxdb"]["image"].startswith("influxdb:2")


def test_dependencies_exist_and_infrastructure_has_health_checks() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
    for name in ("mosquitto", "kafka", "influxdb"):
        assert "healthcheck" in services[name], name


def test_mounted_and_referenced_files_exist() -> None:
    data = compose()
    volumes = set(data.get("volumes") or {})
    for name, svc in data["services"].items():
        for f in svc.get("env_file", []):
            assert (COMPOSE_DIR / f).is_file(), f"{name}: env_file {f}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source}"
            else:
                assert source in volumes, f"{name}: named volume {source} is not declared"
        build = svc.get("build")
        if build:
            assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file(), name


def test_host_ports_do_not_collide() -> None:
    published = [
        str(p).split(":")[0] for svc in compose()["services"].values() for p in svc.get("ports", [])
    ]
    assert len(published) == len(set(published))


def test_the_sink_container_settings_pass_the_sink_validation() -> None:
    sink = compose()["services"]["sink"]
    assert sink["command"][:3] == ["gapwatch", "sink", "--config"]
    mounted = {m.split(":")[1]: m.split(":")[0] for m in sink["volumes"]}
    config_file = COMPOSE_DIR / mounted[sink["command"][3]]
    cfg = load_sink_config(config_file, service_env(sink))
    assert cfg.influx.kind == "v2"
    assert cfg.influx.token == env_file("influxdb.env")["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert cfg.influx.bucket == env_file("influxdb.env")["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert cfg.kafka.bootstrap == "kafka:9092"
    health = " ".join(sink["healthcheck"]["test"])
    assert f":{cfg.metrics.port}/healthz" in health  # a 503 (not consuming or writing) fails it


def test_one_token_everywhere() -> None:
    env = env_file("influxdb.env")
    tokens = {v for k, v in env.items() if k.endswith("TOKEN") or k == "GAPWATCH_INFLUX_PASSWORD"}
    assert len(tokens) == 1


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="Docker Compose is not installed here")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit", ["gapwatch-sink.service", "gapwatch-dashboard.service"])
def test_systemd_units_run_the_right_command(unit: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "deploy" / "systemd" / unit)
    service = parser["Service"]
    command = unit.removeprefix("gapwatch-").removesuffix(".service")
    assert service["ExecStart"].split()[1] == command
    assert service["User"] == "gapwatch"
    assert service["Restart"] == "on-failure"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
