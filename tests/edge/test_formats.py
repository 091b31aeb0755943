"""Input formats per topic (edge.formats, edge.lineproto, edge.senml): good, bad, edge cases."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from edge.config import InputConfig, MqttConfig, load_config
from edge.decode import Limits, Reading
from edge.errors import ConfigError, PayloadError
from edge.formats import Input, build_inputs, decode_input, to_ms

NOW = 1_700_000_000_000
T_S = 1_699_999_999  # one second before NOW
LIMITS = Limits(max_payload_bytes=4096, future_tolerance_ms=60_000)
INPUTS = build_inputs(
    MqttConfig(
        inputs=(
            InputConfig(topic="tg/{site}/{device}", preset="telegraf"),
            InputConfig(topic="tgh/{site}", preset="telegraf", device_key="tags.host"),
            InputConfig(topic="flat/{site}/{device}", format="flat_json", exclude=("id",)),
            InputConfig(topic="flat/{site}/{device}/{channel}", format="flat_json"),
            InputConfig(topic="ms/{device}", format="flat_json", time_path="t.at", time_unit="ms"),
            InputConfig(topic="lp/{site}/{device}", format="influx_line"),
            InputConfig(topic="lph/{site}", format="influx_line", device_key="host"),
            InputConfig(topic="lpn/{device}", format="influx_line", channel_name="{name}.{field}"),
            InputConfig(topic="senml/{site}/{device}", format="senml"),
            InputConfig(topic="senbn/{site}", format="senml", device_key="bn"),
        ),
    )
)


def decode(topic: str, payload: bytes | str | list[Any] | dict[str, Any]) -> tuple[Reading, ...]:
    if isinstance(payload, list | dict):
        payload = json.dumps(payload)
    raw = payload.encode() if isinstance(payload, str) else payload
    return decode_input(topic, raw, NOW, INPUTS, limits=LIMITS, default_site="dflt")


def reason(topic: str, payload: bytes | str | list[Any] | dict[str, Any]) -> str:
    with pytest.raises(PayloadError) as err:
        decode(topic, payload)
    return err.value.reason


def one(topic: str, payload: bytes | str | list[Any] | dict[str, Any]) -> Reading:
    (r,) = decode(topic, payload)
    return r


TELEGRAF = {
    "fields": {"usage_idle": 91.5, "usage_user": 3},
    "name": "cpu",
    "tags": {"host": "pump-1", "cpu": "cpu-total"},
    "timestamp": T_S,
}

# -- routing and time ------------------------------------------------------------------------


def test_the_gapwatch_topics_still_decode_after_the_inputs() -> None:
    r = one("sensors/lab/d", {"ts": T_S, "values": {"p": 1.5}})
    assert (r.site, r.device, r.ts_ms, r.values) == ("lab", "d", T_S * 1000, {"p": 1.5})
    assert reason("nowhere/x", "1") == "unknown_topic"


def test_the_first_matching_input_wins_over_the_gapwatch_topics() -> None:
    inputs = build_inputs(
        MqttConfig(inputs=(InputConfig(topic="sensors/{site}/{device}", format="influx_line"),))
    )
    (r,) = decode_input("sensors/a/b", b"m x=1", NOW, inputs, limits=LIMITS)
    assert r.values == {"x": 1.0} and r.ts_ms == NOW


@pytest.mark.parametrize(
    ("raw", "unit", "ms"),
    [
        (T_S, "auto", T_S * 1000),
        (T_S + 0.25, "auto", T_S * 1000 + 250),
        (T_S * 1000, "auto", T_S * 1000),
        (T_S * 1_000_000, "auto", T_S * 1000),
        (T_S * 1_000_000_000 + 600_000, "auto", T_S * 1000 + 1),
        (T_S * 1_000_000_000, "ns", T_S * 1000),
        (T_S * 1000, "ms", T_S * 1000),
        (1000, "s", 1_000_000),
        (5, "ms", 5),
        ("2023-11-14T22:13:19.5Z", "auto", T_S * 1000 + 500),
        ("2023-11-15T00:13:19+02:00", "iso", T_S * 1000),
    ],
)
def test_time_units(raw: object, unit: str, ms: int) -> None:
    assert to_ms(raw, unit) == ms


@pytest.mark.parametrize(
    ("raw", "unit"),
    [
        ("2023-11-14T22:13:19", "auto"),  # no zone
        ("yesterday", "iso"),
        ("1700000000", "s"),  # text where a number is expected
        (T_S, "iso"),
        (True, "auto"),
        (None, "ms"),
        (math.inf, "auto"),
        (10**400, "ns"),
        (1e307, "s"),
    ],
)
def test_bad_time_is_a_value_error(raw: object, unit: str) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        to_ms(raw, unit)


# -- flat_json and the telegraf preset -------------------------------------------------------


def test_telegraf_json_serializer_output_decodes_out_of_the_box() -> None:
    r = one("tg/lab/pump-1", TELEGRAF)
    assert (r.site, r.device, r.ts_ms) == ("lab", "pump-1", T_S * 1000)
    assert r.values == {"usage_idle": 91.5, "usage_user": 3.0}


def test_telegraf_batch_format_and_device_from_a_tag() -> None:
    other = {**TELEGRAF, "tags": {"host": "pump-2"}, "fields": {"usage_idle": 50}}
    mem = {**TELEGRAF, "name": "mem", "fields": {"used": 7}}
    readings = decode("tgh/lab", {"metrics": [TELEGRAF, other, mem]})
    assert [(r.device, r.values) for r in readings] == [
        ("pump-1", {"usage_idle": 91.5, "usage_user": 3.0, "used": 7.0}),  # same device, time
        ("pump-2", {"usage_idle": 50.0}),
    ]
    assert reason("tgh/lab", {**TELEGRAF, "tags": {}}) == "no_device"
    assert reason("tgh/lab", {**TELEGRAF, "tags": {"host": "a/b"}}) == "no_device"


def test_telegraf_milliseconds_and_string_fields() -> None:
    r = one("tg/lab/p", {**TELEGRAF, "timestamp": T_S * 1000, "fields": {"a": 1, "s": "ok"}})
    assert r.ts_ms == T_S * 1000 and r.values == {"a": 1.0}
    assert r.rejected == (("s", "bad_value"),)


def test_flat_json_takes_the_top_level_less_time_and_excluded_keys() -> None:
    r = one("flat/lab/d", {"ts": T_S, "a": 1, "b": None, "id": "x7"})
    assert r.values["a"] == 1.0 and math.isnan(r.values["b"]) and set(r.values) == {"a", "b"}
    r = one("ms/d", {"t": {"at": T_S * 1000}, "a": 2})
    assert (r.ts_ms, r.values) == (T_S * 1000, {"a": 2.0})


def test_flat_json_channel_topic_takes_a_number_or_a_stamped_object() -> None:
    r = one("flat/lab/d/Pressure", {"ts": T_S, "value": 0.5})
    assert (r.ts_ms, r.values) == (T_S * 1000, {"Pressure": 0.5})
    r = one("flat/lab/d/Pressure", "0.25")
    assert (r.ts_ms, r.values) == (NOW, {"Pressure": 0.25})


def test_gapwatch_channel_topic_carries_a_timestamp() -> None:
    r = one("sensors/lab/d/Pressure", {"ts": "2023-11-14T22:13:19Z", "value": 0.5})
    assert (r.device, r.ts_ms, r.values) == ("d", T_S * 1000, {"Pressure": 0.5})
    r = one("sensors/lab/d/Pressure", {"value": None})
    assert r.ts_ms == NOW and math.isnan(r.values["Pressure"])


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("tg/lab/p", "{not json", "not_json"),
        ("tg/lab/p", b"\xff\xfe", "not_utf8"),
        ("tg/lab/p", {**TELEGRAF, "timestamp": "soon"}, "bad_ts"),
        ("tg/lab/p", {"fields": {"a": 1}, "name": "cpu"}, "bad_ts"),
        ("tg/lab/p", {**TELEGRAF, "timestamp": T_S + 3600}, "ts_future"),
        ("tg/lab/p", {**TELEGRAF, "timestamp": 12}, "ts_past"),
        ("tg/lab/p", {**TELEGRAF, "fields": {}}, "bad_shape"),
        ("tg/lab/p", {**TELEGRAF, "fields": [1]}, "bad_shape"),
        ("tg/lab/p", {**TELEGRAF, "fields": {"a": "x"}}, "bad_value"),
        ("tg/lab/p", {"metrics": []}, "bad_shape"),
        ("tg/lab/p", [1, 2], "bad_shape"),
        ("tg/lab/p", "1" * 5000, "oversized"),
        ("flat/lab/d", {"ts": T_S}, "bad_shape"),
        ("flat/lab/d", {"ts": T_S, "a": True}, "bad_value"),
        ("flat/lab/d/c", {"ts": T_S, "v": 1}, "bad_shape"),
        ("flat/lab/d/c", '"3"', "bad_value"),
        ("flat/lab/d/c", "NaN", "non_finite"),
        ("sensors/lab/d/c", {"ts": T_S}, "bad_shape"),
        ("sensors/lab/d/c", {"ts": "x", "value": 1}, "bad_ts"),
        ("sensors/lab/d/c", {"ts": T_S + 3600, "value": 1}, "ts_future"),
        ("sensors/lab/d/c", "[1]", "bad_shape"),
    ],
)
def test_bad_json_input_has_its_reason(topic: str, payload: Any, expected: str) -> None:
    assert reason(topic, payload) == expected


# -- influx_line -----------------------------------------------------------------------------


def test_line_protocol_with_nanoseconds_integers_and_tags() -> None:
    r = one("lp/lab/d", f"cpu,host=x usage=1.5,n=3i,u=4u {T_S * 10**9}")
    assert (r.site, r.device, r.ts_ms) == ("lab", "d", T_S * 1000)
    assert r.values == {"usage": 1.5, "n": 3.0, "u": 4.0}


def test_line_protocol_batch_device_tags_comments_and_no_timestamp() -> None:
    text = "# telegraf\n\ncpu,host=p1 a=1 {ts}\ncpu,host=p2 a=2 {ts}\nmem,host=p1 b=3 {ts}\n"
    readings = decode("lph/lab", text.format(ts=T_S * 10**9))
    assert [(r.device, r.values) for r in readings] == [
        ("p1", {"a": 1.0, "b": 3.0}),
        ("p2", {"a": 2.0}),
    ]
    (r,) = decode("lp/lab/d", "cpu a=1")
    assert r.ts_ms == NOW
    assert reason("lph/lab", "cpu,rack=1 a=1") == "no_device"


def test_line_protocol_escapes_strings_and_measurement_names() -> None:
    r = one("lpn/d", r'my\ cpu,ta\,g=v\ 1 f\=x=2,msg="a, b=c \"q\"",ok=t 1699999999000000000')
    assert r.values == {"my cpu.f=x": 2.0}
    assert dict(r.rejected) == {"my cpu.msg": "bad_value", "my cpu.ok": "bad_value"}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("cpu", "bad_line"),
        ("cpu a=1 1 extra", "bad_line"),
        ("cpu  a=1", "bad_line"),
        ("cpu a", "bad_line"),
        ("cpu a=", "bad_line"),
        ("cpu a=zz", "bad_line"),
        ('cpu a="open', "bad_line"),
        (",t=1 a=1", "bad_line"),
        ("cpu a=1 noon", "bad_ts"),
        (f"cpu a=1 {(T_S + 3600) * 10**9}", "ts_future"),
        ("cpu a=1 12", "ts_past"),
        ('cpu a="x"', "bad_value"),
        ("cpu a=NaN", "non_finite"),
        ("cpu a=1e999", "non_finite"),
        ("cpu a=" + "9" * 400 + "i", "non_finite"),
        ("# only a comment\n", "bad_line"),
        (b"cpu a=\xff", "not_utf8"),
        ("cpu a=1\ncpu", "bad_line"),  # one bad line refuses the message
    ],
)
def test_bad_line_protocol_has_its_reason(payload: str | bytes, expected: str) -> None:
    assert reason("lp/lab/d", payload) == expected


# -- senml -----------------------------------------------------------------------------------


def test_senml_resolves_base_name_time_and_value() -> None:
    pack = [
        {"bn": "urn:dev:p1:", "bt": T_S, "bv": 10, "n": "temp", "v": 1.5, "u": "Cel"},
        {"n": "hum", "v": 2},
        {"n": "temp", "t": 0.5, "v": 3},
    ]
    first, later = decode("senml/lab/d", pack)
    assert (first.device, first.ts_ms) == ("d", T_S * 1000)
    assert first.values == {"urn:dev:p1:temp": 11.5, "urn:dev:p1:hum": 12.0}
    assert (later.ts_ms, later.values) == (T_S * 1000 + 500, {"urn:dev:p1:temp": 13.0})


def test_senml_relative_times_device_from_base_name_and_base_records() -> None:
    pack = [
        {"bn": "pump-7:"},  # a base record
        {"n": "p", "v": 1},  # no time: now
        {"n": "q", "t": -2, "v": 2},  # two seconds ago
        {"n": "s", "vs": "on"},
    ]
    now, before = decode("senbn/lab", pack)
    assert (now.device, now.ts_ms, now.values) == ("pump-7", NOW, {"p": 1.0})
    assert dict(now.rejected) == {"s": "bad_value"}
    assert (before.ts_ms, before.values) == (NOW - 2000, {"q": 2.0})


@pytest.mark.parametrize(
    ("pack", "expected"),
    [
        ({"n": "a", "v": 1}, "bad_shape"),  # not an array
        ([], "bad_shape"),
        ([1], "bad_shape"),
        ([{"n": "a", "v": 1, "x_": 1}], "bad_shape"),  # must-understand field
        ([{"n": 3, "v": 1}], "bad_shape"),
        ([{"bt": "soon", "n": "a", "v": 1}], "bad_shape"),
        ([{"v": 1}], "bad_shape"),  # no name
        ([{"bn": "x"}], "bad_shape"),  # no value record at all
        ([{"n": "a", "vb": True}], "bad_value"),
        ([{"n": "a"}], "bad_value"),
        ([{"n": "a", "v": "1"}], "bad_value"),
        ([{"n": "a", "v": 1e308, "bv": 1e308}], "non_finite"),
        ([{"n": "a", "v": 1, "bt": T_S + 3600}], "ts_future"),
        ([{"n": "a", "v": 1, "bt": 2**28}], "ts_past"),  # absolute, in 1978
        ([{"n": "a", "v": 1, "bt": 1e308, "t": 1e308}], "bad_ts"),
    ],
)
def test_bad_senml_has_its_reason(pack: Any, expected: str) -> None:
    assert reason("senml/lab/d", pack) == expected


def test_senml_device_from_an_unusable_base_name() -> None:
    assert reason("senbn/lab", [{"bn": "a/b", "n": "x", "v": 1}]) == "no_device"


# -- config ----------------------------------------------------------------------------------


def test_inputs_load_from_toml_and_the_environment(tmp_path: Any) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[[devices]]\nmatch = "*"\nbundle = "m"\n'
        '[[mqtt.inputs]]\ntopic = "telegraf/{site}/{device}"\npreset = "telegraf"\n'
    )
    config = load_config(path, env={})
    assert config.mqtt.inputs == (InputConfig(topic="telegraf/{site}/{device}", preset="telegraf"),)
    env = {"GAPWATCH_AGENT__MQTT__INPUTS": '[{topic = "lp/{device}", format = "influx_line"}]'}
    config = load_config(path, env=env)
    assert [i.config.format for i in build_inputs(config.mqtt)] == [
        "influx_line",
        "gapwatch",
        "gapwatch",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('topic = "a/{device}"\nformat = "csv"', "mqtt.inputs[0].format 'csv'"),
        ('topic = "a/{device}"\npreset = "kura"', "mqtt.inputs[0].preset 'kura'"),
        ('topic = "a/{device}"\ntime_unit = "h"', "mqtt.inputs[0].time_unit 'h'"),
        ('topic = "a/{site}"', "needs one {device}"),
        ('topic = "a/+"', "not wildcards"),
        ('topic = "a/{device}"\ndevice_key = "host"', "keep one"),
        ('topic = "a/{device}/{channel}"\nformat = "senml"', "drop {channel}"),
        ('topic = "a"\nformat = "senml"\ndevice_key = "x"', 'senml takes "bn"'),
        ('topic = "a/{device}"\nchannel_name = "{name}"', "must contain {field}"),
        ('topic = "a/{device}"\nformat = "senml"\npreset = "telegraf"', "flat_json preset"),
    ],
)
def test_bad_inputs_are_config_errors_naming_the_field(
    tmp_path: Any, entry: str, message: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[[devices]]\nmatch = "*"\nbundle = "m"\n[[mqtt.inputs]]\n{entry}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert message in str(err.value)
    with pytest.raises(ValueError, match="input"):
        Input(load_config_entry(entry))


def load_config_entry(entry: str) -> InputConfig:
    import tomllib

    return InputConfig(**tomllib.loads(entry))


def test_names_with_lone_surrogates_are_bad_name() -> None:
    r = one("flat/lab/d", b'{"ts": 1699999999, "a": 1, "\\ud800": 2}')
    assert r.values == {"a": 1.0} and r.rejected == (("\ud800", "bad_name"),)
    (r,) = decode("senml/lab/d", b'[{"n": "a", "v": 1}, {"n": "b\\udc00", "v": 2}]')
    assert r.values == {"a": 1.0} and r.rejected == (("b\udc00", "bad_name"),)
    assert (
        reason(
            "tgh/lab", b'{"fields": {"a": 1}, "tags": {"host": "\\ud800"}, "timestamp": 1699999999}'
        )
        == "bad_name"
    )
    assert reason("flat/lab/d", b'{"ts": 1699999999, "\\ud800": 2}') == "bad_name"
    assert reason("flat/lab/\ud800", b'{"ts": 1699999999, "a": 1}') == "bad_name"
