"""The production stack description (deploy/compose) and the systemd units hold together.

``docker compose config`` validates the file where Docker Compose is installed; everywhere the
structure is checked: every service the stack needs, images or builds, dependencies that
exist, files it mounts or reads that exist (``secrets/...``: made by the shipped
``init_secrets.py``, run here into a temporary directory), the sink's and the dashboard's
settings (file + environment) pass their own validation, every published port binds 127.0.0.1
unless told otherwise, and no secret is written in the committed files.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.dashboard import build_parser as dashboard_parser
from pipeline.cli.dashboard import load_config as load_dashboard_config
from pipeline.config import load_sink_config
from pipeline.errors import ConfigError

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
NEEDED = {"mosquitto", "kafka", "influxdb", "grafana", "sink", "dashboard", "agent"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


SECRETS = "secrets/"  # compose.yaml's paths under the generated, git-ignored directory


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``python3 init_secrets.py`` writes, in a temporary directory."""
    spec = importlib.util.spec_from_file_location("_init_secrets", COMPOSE_DIR / "init_secrets.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path_factory.mktemp("secrets")
    assert tool.main(["--dir", str(out)]) == 0
    return out


def _path(name: str, secrets: Path | None) -> Path:
    name = name.removeprefix("./")
    if name.startswith(SECRETS):
        assert secrets is not None, f"{name} is generated: pass the generated directory"
        return secrets / name.removeprefix(SECRETS)
    return COMPOSE_DIR / name


def env_file(name: str, secrets: Path | None = None) -> dict[str, str]:
    out = {}
    for line in _path(name, secrets).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with ``env`` (empty: every default)."""
    env = env or {}
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), value
    )


def service_env(service: dict[str, Any], secrets: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in service.get("env_file", []):
        env.update(env_file(name, secrets))
    env.update({k: interpolate(str(v)) for k, v in (service.get("environment") or {}).items()})
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


def test_mounted_and_referenced_files_exist(generated: Path) -> None:
    data = compose()
    volumes = set(data.get("volumes") or {})
    for name, svc in data["services"].items():
        for f in svc.get("env_file", []):
            assert _path(f, generated).is_file(), f"{name}: env_file {f}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert _path(source, generated).exists(), f"{name}: {source}"
            else:
                assert source in volumes, f"{name}: named volume {source} is not declared"
        build = svc.get("build")
        if build:
            assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file(), name


def published(env: dict[str, str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """service -> [(host address, host port)] after interpolation with ``env``."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, svc in compose()["services"].items():
        for spec in svc.get("ports", []):
            parts = interpolate(str(spec), env).rsplit(":", 2)
            assert len(parts) == 3, f"{name}: {spec} publishes on every interface"
            out.setdefault(name, []).append((parts[0], parts[1]))
    return out


def test_host_ports_do_not_collide() -> None:
    ports = [port for pairs in published().values() for _, port in pairs]
    assert len(ports) == len(set(ports))


def test_every_published_port_binds_loopback_unless_told_otherwise() -> None:
    ports = published()
    assert set(ports) == {"mosquitto", "influxdb", "grafana", "dashboard"}
    for name, pairs in ports.items():
        assert {addr for addr, _ in pairs} == {"127.0.0.1"}, name
    opened = published({"GAPWATCH_MQTT_BIND": "0.0.0.0"})  # told otherwise: MQTT on the LAN
    assert opened["mosquitto"] == [("0.0.0.0", "1883")]
    assert opened["dashboard"] == [("127.0.0.1", "8050")]


SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|_KEY)$|^GAPWATCH_ANNOUNCE_MQTT$")


def test_no_secret_is_committed(generated: Path) -> None:
    committed = [COMPOSE, *(p for p in COMPOSE_DIR.glob("*.env"))]
    for path in committed:
        text = path.read_text()
        assert "change-me" not in text, path.name
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                assert not SECRET_NAME.search(key.strip()), f"{path.name}: {key} is set in git"
    for svc in compose()["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert str(value).startswith("${"), f"{key} is written in compose.yaml"
    values = env_file("secrets/values.env", generated)
    assert len(values) >= 7 and all(len(v) >= 32 for v in values.values())
    everything = "\n".join(p.read_text() for p in committed)
    assert not any(v in everything for v in values.values())
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(COMPOSE_DIR / "secrets" / "values.env")],
        cwd=REPO,
        check=False,
    )
    assert ignored.returncode == 0, "deploy/compose/secrets/ must be git-ignored"


def test_the_broker_is_locked_down_and_runs_the_shipped_settings() -> None:
    mosquitto = compose()["services"]["mosquitto"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in mosquitto["volumes"]}
    conf = (COMPOSE_DIR / mounts["/mosquitto/config/mosquitto.conf"]).read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert "password_file /mosquitto/config/passwd" in conf
    assert mounts["/mosquitto/config/passwd"] == "./secrets/mosquitto/passwd"
    included = next(line.split()[1] for line in conf if line.startswith("include_dir "))
    acl = next(line.split()[1] for line in conf if line.startswith("acl_file "))
    shipped = (COMPOSE_DIR / mounts[included]).resolve()
    assert shipped == REPO / "deploy" / "mosquitto"  # the file the fault tests run
    assert acl == f"{included}/acl" and (shipped / "acl").is_file()
    health = " ".join(mosquitto["healthcheck"]["test"])
    assert "-u gapwatch-health" in health  # anonymous clients are refused, the check too


def test_the_sink_container_settings_pass_the_sink_validation(generated: Path) -> None:
    sink = compose()["services"]["sink"]
    assert sink["command"][:3] == ["gapwatch", "sink", "--config"]
    mounted = {m.split(":")[1]: m.split(":")[0] for m in sink["volumes"]}
    config_file = COMPOSE_DIR / mounted[sink["command"][3]]
    cfg = load_sink_config(config_file, service_env(sink, generated))
    influx = env_file("secrets/influxdb.env", generated)
    assert cfg.influx.kind == "v2"
    assert cfg.influx.token == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert cfg.influx.bucket == env_file("influxdb.env")["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert cfg.kafka.bootstrap == "kafka:9092"
    assert cfg.metrics.host == "127.0.0.1"  # inside the container: the health check is too
    health = " ".join(sink["healthcheck"]["test"])
    assert f"127.0.0.1:{cfg.metrics.port}/healthz" in health  # a 503 fails it


def test_the_dashboard_container_starts_only_with_its_token(generated: Path) -> None:
    dashboard = compose()["services"]["dashboard"]
    args = dashboard_parser().parse_args(dashboard["command"][2:])
    env = service_env(dashboard, generated)
    cfg = load_dashboard_config(args, env)
    assert cfg.host == "0.0.0.0" and len(cfg.auth_token) >= 32
    assert (
        cfg.token == env_file("secrets/influxdb.env", generated)["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    )
    del env["GAPWATCH_DASHBOARD__AUTH_TOKEN"]
    with pytest.raises(ConfigError, match="AUTH_TOKEN"):
        load_dashboard_config(args, env)


def test_one_token_everywhere(generated: Path) -> None:
    tokens = set()
    for path in generated.glob("*.env"):
        for key, value in env_file(f"secrets/{path.name}", generated).items():
            if key.endswith("__TOKEN") or key in (
                "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
                "GAPWATCH_INFLUX_TOKEN",
                "GAPWATCH_INFLUX_PASSWORD",
            ):
                tokens.add(value)
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


def test_the_agent_container_logs_in_as_the_acl_agent_user(generated: Path) -> None:
    from edge.config import load_config as load_agent_config

    agent = compose()["services"]["agent"]
    mounted = {m.split(":")[1]: m.split(":")[0] for m in agent["volumes"]}
    config_file = COMPOSE_DIR / mounted[agent["command"][3]]
    cfg = load_agent_config(config_file, service_env(agent, generated))
    assert cfg.mqtt.username == "gapwatch-agent"  # the user deploy/mosquitto/acl lets read sensors
    assert cfg.mqtt.password == env_file("secrets/values.env", generated)["MQTT_AGENT_PASSWORD"]
    assert cfg.mqtt.announce_topic == "gapwatch/models/+"
    assert cfg.metrics.host == "127.0.0.1"
    acl = (REPO / "deploy" / "mosquitto" / "acl").read_text()
    assert "user gapwatch-agent\ntopic read sensors/#\ntopic read gapwatch/models/#" in acl
