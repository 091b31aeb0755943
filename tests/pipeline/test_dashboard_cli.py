"""``gapwatch dashboard``: flags, environment overrides, validation and startup errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipeline.cli.dashboard import DashboardConfig, build_parser, load_config, main
from pipeline.errors import ConfigError


def config_from(argv: list[str], env: dict[str, str] | None = None) -> DashboardConfig:
    return load_config(build_parser().parse_args(argv), env or {})


def test_defaults_flags_and_environment() -> None:
    cfg = config_from([])
    assert (cfg.influx_url, cfg.database, cfg.host, cfg.port) == (
        "http://127.0.0.1:8086",
        "gapwatch",
        "127.0.0.1",
        8050,
    )
    env = {
        "GAPWATCH_DASHBOARD__INFLUX_URL": "http://influx:18086/",
        "GAPWATCH_DASHBOARD__DATABASE": "plant",
        "GAPWATCH_DASHBOARD__PORT": "9000",
        "GAPWATCH_DASHBOARD__PASSWORD": "0x1F",  # verbatim, as in the agent and the sink
    }
    cfg = config_from([], env)
    assert (cfg.influx_url, cfg.database, cfg.port, cfg.password) == (
        "http://influx:18086",
        "plant",
        9000,
        "0x1F",
    )
    cfg = config_from(["--db", "other", "--port", "0"], env)  # a flag wins over the environment
    assert (cfg.database, cfg.port) == ("other", 0)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--influx", "influx:8086"], "influx_url 'influx:8086' is not an http(s) URL"),
        (["--influx", "http://u:p@influx:8086"], "must not carry credentials"),
        (["--db", " "], "database is empty"),
        (["--port", "http"], "port (from --port): expected an integer, got 'http'"),
        (["--port", "70000"], "port 70000 is out of range"),
        (["--max-points", "3"], "max_points 3 is out of range"),
        (["--log-level", "loud"], "log_level 'loud'"),
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
    for needle in ("GAPWATCH_DASHBOARD__INFLUX_URL", "--db", "All data", "deploy/grafana", "18086"):
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


def test_old_environment_names_are_refused_with_the_new_name() -> None:
    with pytest.raises(ConfigError, match="write GAPWATCH_DASHBOARD__HOST"):
        config_from([], {"GAPWATCH_DASHBOARD_HOST": "0.0.0.0"})


def test_a_config_file_sits_below_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.toml"
    path.write_text('database = "from-file"\nport = 9100\n', encoding="utf-8")
    cfg = config_from(["--config", str(path)], {"GAPWATCH_DASHBOARD__PORT": "9200"})
    assert (cfg.database, cfg.port) == ("from-file", 9200)
