"""The sink's config: TOML + environment overrides, validated with errors that say the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import SinkConfig, load_sink_config
from pipeline.errors import ConfigError
from pipeline.sink import SinkSettings

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sink.toml"
    path.write_text(text)
    return path


def test_the_commented_example_is_valid_and_matches_the_defaults() -> None:
    cfg = load_sink_config(REPO / "deploy" / "pipeline" / "sink.toml", {})
    defaults = SinkConfig()
    assert cfg.kafka == defaults.kafka
    assert cfg.batch == defaults.batch
    assert cfg.retry == defaults.retry
    assert cfg.influx.url == "http://127.0.0.1:8086"


def test_file_values_then_environment_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[kafka]\nbootstrap = "k1:9092"\nmax_poll_records = 500\n'
        '[influx]\nurl = "http://db:8086"\ndatabase = "plant"\n[batch]\nmax_points = 2000\n',
    )
    env = {
        "GAPWATCH_SINK__KAFKA__BOOTSTRAP": "k2:9092,k3:9092",
        "GAPWATCH_SINK__INFLUX__PASSWORD": "s3cret",
        "GAPWATCH_SINK__INFLUX__GZIP": "true",
        "GAPWATCH_SINK__BATCH__MAX_WAIT_S": "0.25",
    }
    cfg = load_sink_config(path, env)
    assert cfg.kafka.bootstrap == "k2:9092,k3:9092"
    assert cfg.kafka.max_poll_records == 500
    assert cfg.influx.database == "plant"
    assert cfg.influx.password == "s3cret"
    assert cfg.influx.gzip is True
    assert cfg.batch.max_points == 2000
    assert cfg.batch.max_wait_s == 0.25
    assert cfg.redacted()["influx"]["password"] == "***"
    settings = SinkSettings.from_config(cfg)
    assert settings.max_points == 2000
    assert settings.max_wait_s == 0.25
    assert settings.max_poll_records == 500


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            "[kafka]\nbootstrp = 'x'\n",
            {},
            r"kafka.bootstrp: unknown key \(did you mean 'bootstrap'\?\)",
        ),
        ("[kafak]\n", {}, r"kafak: unknown key \(did you mean 'kafka'\?\)"),
        ("[batch]\nmax_points = 'many'\n", {}, "batch.max_points: expected an integer, got 'many'"),
        ("[batch]\nmax_points = 0\n", {}, "batch.max_points = 0 must be > 0"),
        ("[influx]\nkind = 'v3'\n", {}, "use 'v1' for InfluxDB 1.x or 'v2'"),
        ("[influx]\nkind = 'v2'\norg = 'o'\nbucket = 'b'\n", {}, "influx.token is empty"),
        ("[influx]\nurl = 'db:8086'\n", {}, "write it as http://host:port"),
        (
            "",
            {"GAPWATCH_SINK__INFLUX__GZIP": "maybe"},
            r"influx.gzip \(from GAPWATCH_SINK__INFLUX__GZIP\): expected true or false",
        ),
        (
            "",
            {"GAPWATCH_SINK__INFLUX__PASWORD": "x"},
            r"influx.pasword: unknown key \(from GAPWATCH_SINK__INFLUX__PASWORD\)",
        ),
        (
            "[kafka]\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 3000\n",
            {},
            "at most a third of session_timeout_ms",
        ),
        ("[retry]\ninitial_backoff_s = 5\nmax_backoff_s = 1\n", {}, "below initial_backoff_s"),
        ("not toml = = 1", {}, "is not valid TOML"),
    ],
)
def test_bad_values_are_named_with_the_fix(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sink_config(write(tmp_path, text), env)


def test_missing_file_points_at_the_example(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"deploy/pipeline/sink\.toml"):
        load_sink_config(tmp_path / "nope.toml", {})


def test_sink_check_prints_the_redacted_config_and_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from pipeline.cli import sink as sink_cli

    monkeypatch.setenv("GAPWATCH_SINK__INFLUX__PASSWORD", "hunter2")
    good = write(tmp_path, '[influx]\nusername = "sink"\n')
    assert sink_cli.main(["--check", "--config", str(good), "--log-format", "text"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["influx"]["password"] == "***"
    assert shown["influx"]["username"] == "sink"
    bad = write(tmp_path, "[batch]\nmax_points = -1\n")
    assert sink_cli.main(["--config", str(bad)]) == 2
    assert "batch.max_points = -1 must be > 0" in capsys.readouterr().err
