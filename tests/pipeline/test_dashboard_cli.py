"""``gapwatch dashboard``: flags, environment overrides, validation and startup errors."""

from __future__ import annotations

import socket

import pytest

from pipeline.cli.dashboard import DashboardConfig, build_parser, load_config, main
from pipeline.errors import ConfigError


def config_from(argv: list[str], env: dict[str, str] | None = None) -> DashboardConfig:
    return load_config(build_parser(env or {}).parse_args(argv))


def test_defaults_flags_and_environment() -> None:
    cfg = config_from([])
    assert (cfg.influx_url, cfg.database, cfg.host, cfg.port) == (
        "http://127.0.0.1:8086",
        "gapwatch",
        "127.0.0.1",
        8050,
    )
    env = {
        "GAPWATCH_DASHBOARD_INFLUX_URL": "http://influx:18086/",
        "GAPWATCH_DASHBOARD_INFLUX_DATABASE": "plant",
        "GAPWATCH_DASHBOARD_PORT": "9000",
        "GAPWATCH_DASHBOARD_INFLUX_PASSWORD": "secret",
    }
    cfg = config_from([], env)
    assert (cfg.influx_url, cfg.database, cfg.port, cfg.password) == (
        "http://influx:18086",
        "plant",
        9000,
        "secret",
    )
    cfg = config_from(["--db", "other", "--port", "0"], env)  # a flag wins over the environment
    assert (cfg.database, cfg.port) == ("other", 0)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--influx", "influx:8086"], "--influx 'influx:8086' is not an http(s) URL"),
        (["--influx", "http://u:p@influx:8086"], "must not carry credentials"),
        (["--db", " "], "--db is empty"),
        (["--port", "http"], "--port 'http' is not an integer"),
        (["--port", "70000"], "--port 70000 is out of range"),
        (["--max-points", "3"], "--max-points 3 is out of range"),
        (["--log-level", "loud"], "--log-level 'loud'"),
    ],
)
def test_bad_values_name_the_flag_and_the_fix(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from(argv)
    assert needle in str(info.value)


def test_help_teaches_the_environment_and_all_data(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for needle in ("GAPWATCH_DASHBOARD_INFLUX_URL", "--db", "All data", "deploy/grafana", "18086"):
        assert needle in out


def test_bad_config_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--influx", "nope"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err


def test_a_busy_port_exits_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.cli.dashboard.configure_logging", lambda *a: None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["--port", str(port), "--influx", "http://127.0.0.1:9", "--log-level", "ERROR"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "--port" in err
