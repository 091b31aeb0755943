"""Fuzzing the config layers: any file, environment or ``--set`` gives a config or a ConfigError.

Covers ``edge.config.load_config`` (the agent) and ``pipeline.config.load_sink_config`` (the
sink). Beyond "never crash", a wrong value for a known key must produce an error that names the
field, so an operator can fix it from the message alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge import config as agent_config
from edge.errors import ConfigError as AgentConfigError
from pipeline import config as sink_config
from pipeline.errors import ConfigError as SinkConfigError

FUZZ = settings(
    max_examples=int(os.environ.get("GAPWATCH_FUZZ_EXAMPLES", "300")) // 2,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

MINIMAL_AGENT = 'state_dir = "/tmp/gw"\n[[devices]]\nmatch = "*"\nbundle = "skab"\n'


# ----------------------------------------------------------------------------- a tiny TOML writer


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON escapes are TOML escapes (DEL must be escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return _toml_string(key)  # a quoted key is always valid


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(value)


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level scalars first, then one ``[section]`` per table (nested tables inline)."""
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)
    ]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- strategies

text_no_surrogates = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=10**400),  # TOML allows any size; floats overflow
    st.floats(allow_nan=True, allow_infinity=True),
    text_no_surrogates,
    st.sampled_from(["", "0", "-1", "1e400", "nan", "true", "5", "3.1.1", "*", "a/b", "{device}"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(text_no_surrogates, inner, max_size=4)
    ),
    max_leaves=12,
)


def _leaf_paths(cls: type[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every (dotted name, type) of a config dataclass tree (lists of tables excluded)."""
    out: list[tuple[str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _leaf_paths(typing.cast(type[Any], hint), f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", hint))
    return out


AGENT_LEAVES = [
    (p, h) for p, h in _leaf_paths(agent_config.AgentConfig) if not p.startswith("devices")
]
SINK_LEAVES = _leaf_paths(sink_config.SinkConfig)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    node: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        node = {part: node}
    return node


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def documents(leaves: list[tuple[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Config documents mixing real keys (any value) and unknown keys."""
    known = st.tuples(st.sampled_from([p for p, _ in leaves]), values)
    unknown = st.tuples(text_no_surrogates.filter(bool), values)
    pairs = st.lists(st.one_of(known, known, unknown), max_size=8)

    def build(items: list[tuple[str, Any]]) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for dotted, value in items:
            doc = _merge(doc, _nest(dotted, value))
        return doc

    return pairs.map(build)


def _wrong_value(hint: Any) -> st.SearchStrategy[Any]:
    """A value of the wrong type for a field of type ``hint``."""
    if hint is bool:
        return st.one_of(
            st.integers(),
            st.text(max_size=5).filter(
                lambda s: s.lower() not in {"1", "true", "yes", "on", "0", "false", "no"}
            ),
            st.lists(st.integers(), max_size=2),
        )
    if hint in (int, float):
        return st.one_of(
            st.booleans(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        )
    if hint is str:
        return st.one_of(st.booleans(), st.lists(st.integers(), max_size=2))
    return st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2)


# ----------------------------------------------------------------------------- the agent config


def _load_agent(path: Path | None, env: dict[str, str], sets: list[str]) -> Any:
    try:
        return agent_config.load_config(path, env=env, sets=sets)
    except AgentConfigError as exc:
        assert str(exc)
        return exc


@FUZZ
@given(st.binary(max_size=400))
@example(b"\xff\xfe = 1")
def test_agent_config_from_arbitrary_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(raw)
    _load_agent(path, {}, [])


def test_agent_config_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=str(tmp_path)):
        agent_config.load_config(tmp_path, env={})


@FUZZ
@given(documents(AGENT_LEAVES))
def test_agent_config_from_arbitrary_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL_AGENT + to_toml(doc), encoding="utf-8")
    result = _load_agent(path, {}, [])
    if isinstance(result, agent_config.AgentConfig):
        assert 0 < result.mqtt.port < 65536
        assert result.devices
        assert result.spool.when_full in {"pause", "drop_oldest"}


@FUZZ
@given(
    env=st.dictionaries(
        st.tuples(st.sampled_from([p for p, _ in AGENT_LEAVES]), st.booleans()).map(
            lambda t: agent_config.ENV_PREFIX + t[0].replace(".", "__").upper()
        )
        | text_no_surrogates.map(lambda s: agent_config.ENV_PREFIX + s),
        text_no_surrogates,
        max_size=6,
    ),
    sets=st.lists(text_no_surrogates, max_size=3),
)
@example(env={}, sets=["bundles.poll_s=1" + "0" * 400])
@example(env={"GAPWATCH_AGENT__MQTT": "5", "GAPWATCH_AGENT__MQTT__PORT": "1"}, sets=[])
def test_agent_config_from_arbitrary_env_and_sets(
    tmp_path: Path, env: dict[str, str], sets: list[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL_AGENT, encoding="utf-8")
    _load_agent(path, {k: v.replace("\0", "") for k, v in env.items()}, sets)


@FUZZ
@given(st.data())
def test_agent_config_error_names_the_wrong_field(tmp_path: Path, data: st.DataObject) -> None:
    dotted, hint = data.draw(st.sampled_from(AGENT_LEAVES))
    wrong = data.draw(_wrong_value(hint))
    if hint is str and isinstance(wrong, int):
        return  # numbers are accepted as strings on purpose (protocol = 5)
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL_AGENT + to_toml(_nest(dotted, wrong)), encoding="utf-8")
    with pytest.raises(AgentConfigError) as err:
        agent_config.load_config(path, env={})
    assert dotted in str(err.value)


# ----------------------------------------------------------------------------- the sink config


def _load_sink(path: Path | None, env: dict[str, str]) -> Any:
    try:
        return sink_config.load_sink_config(path, env)
    except SinkConfigError as exc:
        assert str(exc)
        return exc


@FUZZ
@given(st.binary(max_size=400))
@example(b"\xff\xfe = 1")
def test_sink_config_from_arbitrary_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "sink.toml"
    path.write_bytes(raw)
    _load_sink(path, {})


def test_sink_config_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SinkConfigError, match=str(tmp_path)):
        sink_config.load_sink_config(tmp_path, {})


@FUZZ
@given(documents(SINK_LEAVES))
@example({"batch": {"max_wait_s": 10**400}})
def test_sink_config_from_arbitrary_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "sink.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    result = _load_sink(path, {})
    if isinstance(result, sink_config.SinkConfig):
        assert result.batch.max_points > 0
        assert result.retry.max_backoff_s >= result.retry.initial_backoff_s
        assert result.retry.give_up_after_s >= 0, "NaN or negative give-up time was accepted"


@FUZZ
@given(
    env=st.dictionaries(
        st.sampled_from([p for p, _ in SINK_LEAVES]).map(
            lambda p: sink_config.ENV_PREFIX + p.replace(".", "__").upper()
        ),
        text_no_surrogates.map(lambda s: s.replace("\0", "")),
        max_size=6,
    )
)
@example({sink_config.ENV_PREFIX + "INFLUX__URL": "http://[::1"})
@example({sink_config.ENV_PREFIX + "INFLUX__URL": "http://[x]:8086"})
@example({sink_config.ENV_PREFIX + "RETRY__GIVE_UP_AFTER_S": "nan"})
def test_sink_config_from_arbitrary_env(env: dict[str, str]) -> None:
    result = _load_sink(None, env)
    if isinstance(result, sink_config.SinkConfig):
        assert result.retry.give_up_after_s >= 0, "NaN or negative give-up time was accepted"
        assert result.influx.timeout_s > 0


@FUZZ
@given(st.data())
def test_sink_config_error_names_the_wrong_field(tmp_path: Path, data: st.DataObject) -> None:
    dotted, hint = data.draw(st.sampled_from(SINK_LEAVES))
    wrong = data.draw(_wrong_value(hint))
    path = tmp_path / "sink.toml"
    path.write_text(to_toml(_nest(dotted, wrong)), encoding="utf-8")
    with pytest.raises(SinkConfigError) as err:
        sink_config.load_sink_config(path, {})
    assert dotted in str(err.value)
