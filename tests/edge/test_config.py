"""The agent config: TOML + env + --set, strict validation with errors naming field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import AgentConfig, load_config
from edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = """
[[devices]]
match = "*"
bundle = "skab"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_config_is_valid_and_matches_the_defaults() -> None:
    config = load_config(REPO / "deploy" / "edge" / "agent.toml", env={})
    defaults = AgentConfig()
    assert config.mqtt == defaults.mqtt
    assert config.kafka == defaults.kafka
    assert config.spool == defaults.spool
    assert config.align == defaults.align
    assert [r.match for r in config.devices] == ["lab/pump-*", "*"]


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.mqtt.port == 1883
    assert config.mqtt.protocol == "5"
    assert config.spool.when_full == "pause"
    assert config.spool_path == Path("/var/lib/gapwatch/spool.sqlite")
    assert config.devices[0].bundle == "skab"


def test_env_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    env = {
        "GAPWATCH_AGENT__MQTT__PORT": "1884",
        "GAPWATCH_AGENT__MQTT__TLS__ENABLED": "true",
        "GAPWATCH_AGENT__MQTT__TLS__CA_FILE": "/etc/ca.pem",
        "GAPWATCH_AGENT__KAFKA__BOOTSTRAP": "k1:9092,k2:9092",
        "gapwatch_agent__site": "plant-7",
        "GAPWATCH_AGENT__DEVICES": '[{match = "plant-7/*", bundle = "air", warmup_ticks = 50}]',
        "OTHER": "ignored",
    }
    config = load_config(write(tmp_path, MINIMAL), env=env)
    assert config.mqtt.port == 1884
    assert config.mqtt.tls.enabled is True
    assert config.mqtt.tls.ca_file == "/etc/ca.pem"
    assert config.kafka.bootstrap == "k1:9092,k2:9092"
    assert config.site == "plant-7"
    assert config.devices[0].bundle == "air"
    assert config.devices[0].warmup_ticks == 50


def test_set_wins_over_env_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[mqtt]\nhost = "file"\n')
    config = load_config(
        path, env={"GAPWATCH_AGENT__MQTT__HOST": "env"}, sets=["mqtt.host=cli", "mqtt.qos=0"]
    )
    assert config.mqtt.host == "cli"
    assert config.mqtt.qos == 0


def test_a_comma_list_is_accepted_for_topics() -> None:
    config = load_config(
        None,
        env={
            "GAPWATCH_AGENT__MQTT__TOPICS": "a/{device}, b/{site}/{device}",
            "GAPWATCH_AGENT__DEVICES": '[{match="*", bundle="m"}]',
        },
    )
    assert config.mqtt.topics == ("a/{device}", "b/{site}/{device}")


def test_every_problem_is_reported_at_once_with_field_and_fix(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
[mqtt]
port = "eighteen"
protcol = "5"
[spool]
when_full = "explode"
"""
    )
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    msg = str(err.value)
    assert "mqtt.port: expected an integer, got 'eighteen'" in msg
    assert "mqtt.protcol: unknown key (did you mean 'protocol'?)" in msg


def test_range_errors_name_the_field_and_fix(tmp_path: Path) -> None:
    text = MINIMAL + '[spool]\nwhen_full = "explode"\n[mqtt]\ntopics = ["sensors/{site}"]\n'
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    msg = str(err.value)
    assert 'spool.when_full \'explode\': use "pause" or "drop_oldest"' in msg
    assert "mqtt.topics[0] 'sensors/{site}' needs a {device} field" in msg


def test_no_device_rules_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"devices is empty"):
        load_config(None, env={})


def test_a_device_rule_needs_its_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"devices\[0\]\.bundle: required"):
        load_config(write(tmp_path, '[[devices]]\nmatch = "*"\n'), env={})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[mqtt\n"), env={})


def test_bad_set_syntax() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, env={}, sets=["nonsense"])


def test_rules_match_site_and_device_in_order(tmp_path: Path) -> None:
    text = """
[[devices]]
match = "lab/pump-*"
bundle = "pumps"
[[devices]]
match = "*"
bundle = "other"
"""
    config = load_config(write(tmp_path, text), env={})
    assert config.rule_for("lab", "pump-3").bundle == "pumps"  # type: ignore[union-attr]
    assert config.rule_for("yard", "pump-3").bundle == "other"  # type: ignore[union-attr]
    only_pumps = load_config(
        write(tmp_path, '[[devices]]\nmatch = "lab/*"\nbundle = "p"\n'), env={}
    )
    assert only_pumps.rule_for("yard", "fan") is None


def test_string_fields_from_the_environment_are_taken_verbatim() -> None:
    env = {
        "GAPWATCH_AGENT__DEVICES": '[{match="*", bundle="m"}]',
        "GAPWATCH_AGENT__MQTT__PASSWORD": "0x1F",  # TOML would read the number 31
        "GAPWATCH_AGENT__MQTT__USERNAME": "true",
        "GAPWATCH_AGENT__KAFKA__SASL_PASSWORD": "[not a list",
        "GAPWATCH_AGENT__SITE": '"plant-7"',  # a complete TOML string is unquoted
    }
    config = load_config(None, env=env)
    assert config.mqtt.password == "0x1F"
    assert config.mqtt.username == "true"
    assert config.kafka.sasl_password == "[not a list"
    assert config.site == "plant-7"


def test_a_bad_environment_value_names_its_variable() -> None:
    env = {
        "GAPWATCH_AGENT__DEVICES": '[{match="*", bundle="m"}]',
        "GAPWATCH_AGENT__MQTT__PORT": "eighteen",
        "GAPWATCH_AGENT__MQTT__PROTCOL": "5",
    }
    with pytest.raises(ConfigError) as err:
        load_config(None, env=env)
    msg = str(err.value)
    assert "mqtt.port (from GAPWATCH_AGENT__MQTT__PORT): expected an integer" in msg
    assert "mqtt.protcol: unknown key (from GAPWATCH_AGENT__MQTT__PROTCOL)" in msg
    assert "did you mean 'protocol'?" in msg


def test_kafka_topics_dead_letter_size_and_stuck_bound_are_checked(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[kafka]\nscored_topic = "bad topic!"\ndeadletter_raw_max_bytes = 2000000\n'
        "stuck_after_s = 0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    msg = str(err.value)
    assert "kafka.scored_topic 'bad topic!': a Kafka topic is 1-249 of" in msg
    assert "kafka.deadletter_raw_max_bytes 2000000 must be in 0..131072" in msg
    assert "kafka.stuck_after_s 0.0 must be > 0 seconds" in msg
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert (config.kafka.deadletter_raw_max_bytes, config.kafka.stuck_after_s) == (16384, 120.0)


def test_receive_maximum_and_overload_lag_are_checked(tmp_path: Path) -> None:
    env = {
        "GAPWATCH_AGENT__MQTT__RECEIVE_MAXIMUM": "0",
        "GAPWATCH_AGENT__MQTT__OVERLOAD_LAG_S": "0",
    }
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL), env=env)
    assert "mqtt.receive_maximum 0 must be in 1..65535" in str(err.value)
    assert "mqtt.overload_lag_s must be > 0" in str(err.value)
    env = {"GAPWATCH_AGENT__MQTT__RECEIVE_MAXIMUM": "250"}
    assert load_config(write(tmp_path, MINIMAL), env=env).mqtt.flow_window == 250
