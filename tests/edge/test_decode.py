"""MQTT topic/payload decoding: every accepted form, and every bad input by its reason."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.decode import Limits, TopicTemplate, decode_message, parse_ts
from edge.errors import PayloadError

NOW = 1_700_000_000_000
TEMPLATES = (
    TopicTemplate("sensors/{site}/{device}"),
    TopicTemplate("sensors/{site}/{device}/{channel}"),
)
LIMITS = Limits(max_payload_bytes=1024, future_tolerance_ms=60_000, max_age_ms=0)


def decode(topic: str, payload: bytes | str, limits: Limits = LIMITS):  # type: ignore[no-untyped-def]
    raw = payload.encode() if isinstance(payload, str) else payload
    return decode_message(topic, raw, NOW, TEMPLATES, limits=limits, default_site="dflt")


def reason(topic: str, payload: bytes | str, limits: Limits = LIMITS) -> str:
    with pytest.raises(PayloadError) as err:
        decode(topic, payload, limits)
    return err.value.reason


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_699_999_999.5, 1_699_999_999_500),
        (1_699_999_999, 1_699_999_999_000),
        (1_699_999_999_123, 1_699_999_999_123),
        ("2023-11-14T22:13:19.5Z", 1_699_999_999_500),
        ("2023-11-15T00:13:19+02:00", 1_699_999_999_000),
    ],
)
def test_json_timestamps_in_every_form(ts: object, expected: int) -> None:
    r = decode("sensors/lab/pump-1", json.dumps({"ts": ts, "values": {"p": 1.5}}))
    assert (r.site, r.device, r.ts_ms) == ("lab", "pump-1", expected)
    assert r.values == {"p": 1.5}
    assert r.received_ms == NOW


def test_null_means_not_measured() -> None:
    r = decode("sensors/lab/d", '{"ts": 1699999999000, "values": {"p": null, "q": 2}}')
    assert math.isnan(r.values["p"]) and r.values["q"] == 2.0


def test_channel_topic_carries_a_plain_number_stamped_on_arrival() -> None:
    r = decode("sensors/lab/pump-1/Pressure", b"0.27")
    assert (r.device, r.ts_ms, r.values) == ("pump-1", NOW, {"Pressure": 0.27})


def test_template_without_site_uses_the_default_site() -> None:
    r = decode_message(
        "plant/d7",
        b'{"ts": 1699999999, "values": {"x": 1}}',
        NOW,
        (TopicTemplate("plant/{device}"),),
        limits=LIMITS,
        default_site="s",
    )
    assert (r.site, r.device) == ("s", "d7")


def test_bad_values_are_rejected_one_by_one_and_the_rest_kept() -> None:
    payload = (
        '{"ts": 1699999999, "values": {"ok": 1, "s": "high", "b": true, "n": NaN, "i": 1e999}}'
    )
    r = decode("sensors/lab/d", payload)
    assert r.values == {"ok": 1.0}
    assert dict(r.rejected) == {
        "s": "bad_value",
        "b": "bad_value",
        "n": "non_finite",
        "i": "non_finite",
    }


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("other/lab/d", '{"ts": 1, "values": {"a": 1}}', "unknown_topic"),
        ("sensors/lab/d", b"\xff\xfe", "not_utf8"),
        ("sensors/lab/d", "{not json", "not_json"),
        ("sensors/lab/d", "[1, 2]", "bad_shape"),
        ("sensors/lab/d", '{"ts": 1699999999, "values": {}}', "bad_shape"),
        ("sensors/lab/d", '{"ts": 1699999999, "values": [1]}', "bad_shape"),
        ("sensors/lab/d", '{"values": {"a": 1}}', "bad_ts"),
        ("sensors/lab/d", '{"ts": "yesterday", "values": {"a": 1}}', "bad_ts"),
        ("sensors/lab/d", '{"ts": "2023-11-14T22:13:19", "values": {"a": 1}}', "bad_ts"),
        ("sensors/lab/d", '{"ts": true, "values": {"a": 1}}', "bad_ts"),
        ("sensors/lab/d", '{"ts": 1799999999, "values": {"a": 1}}', "ts_future"),
        ("sensors/lab/d", '{"ts": 12, "values": {"a": 1}}', "ts_past"),
        ("sensors/lab/d", '{"ts": 1699999999, "values": {"a": "x"}}', "bad_value"),
        ("sensors/lab/d", '{"ts": 1699999999, "values": {"a": Infinity}}', "non_finite"),
        ("sensors/lab/d/ch", "NaN", "non_finite"),
        ("sensors/lab/d/ch", '"3"', "bad_value"),
        ("sensors/lab/d/ch", '{"v": 3}', "bad_shape"),
        ("sensors/lab/d", "1" * 2000, "oversized"),
    ],
)
def test_each_bad_input_has_its_reason(topic: str, payload: str | bytes, expected: str) -> None:
    assert reason(topic, payload) == expected


def test_max_age_rejects_old_readings_only_when_set() -> None:
    old = json.dumps({"ts": (NOW - 7_200_000) / 1000, "values": {"a": 1}})
    assert decode("sensors/lab/d", old).ts_ms == NOW - 7_200_000
    limits = Limits(max_payload_bytes=1024, future_tolerance_ms=60_000, max_age_ms=3_600_000)
    assert reason("sensors/lab/d", old, limits) == "ts_past"


def test_templates_check_their_fields() -> None:
    t = TopicTemplate("sensors/{site}/{device}/{channel}")
    assert t.filter == "sensors/+/+/+"
    assert t.match("sensors/a/b/c") == {"site": "a", "device": "b", "channel": "c"}
    assert t.match("sensors/a/b") is None
    for bad in ("sensors/{site}", "sensors/{device}x", "s/{device}/{device}", "s/{dev}/{device}"):
        with pytest.raises(ValueError, match="template"):
            TopicTemplate(bad)


def test_parse_ts_treats_large_numbers_as_milliseconds() -> None:
    assert parse_ts(99_999_999_999) == 99_999_999_999_000  # seconds (year 5138)
    assert parse_ts(100_000_000_000) == 100_000_000_000  # milliseconds (1973)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=10,
    ).map(lambda v: json.dumps({"ts": 1_699_999_999, "values": v}).encode())
)
def test_any_payload_either_decodes_or_raises_payload_error(payload: bytes) -> None:
    for topic in ("sensors/lab/d", "sensors/lab/d/c"):
        try:
            r = decode(topic, payload)
        except PayloadError as exc:
            assert exc.reason
        else:
            assert all(math.isnan(v) or math.isfinite(v) for v in r.values.values())


def _outcome(topic: str, payload: bytes) -> tuple[object, ...]:
    try:
        r = decode(topic, payload)
    except PayloadError as exc:
        return ("error", exc.reason)
    return ("ok", r.site, r.device, r.ts_ms, json.dumps(r.values), r.rejected)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"ts": 1699999999000, "values": {"a": 1.5, "b": NaN, "c": -Infinity}}',
        b'\xef\xbb\xbf{"ts": 1699999999000, "values": {"a": 1}}',  # byte order mark
        b'{"ts": 1699999999000, "values": {"a": 123456789012345678901234567890}}',
        b'{"ts": 1699999999000, "values": {"a": 1e400, "b": 1e-400, "c": -0.0}}',
        b'{"ts": 1699999999000, "values": {"a": 1, "a": 2}}',  # duplicate key: the last wins
        b'{"ts": 1699999999000, "values": {"\\ud800": 1, "b": 2}}',  # lone surrogate
        b'{"ts": 1.699999999e12, "values": {"a": 18446744073709551616}}',
        b'{"ts": 1699999999000, "values": {"a": 1}} trailing',
        b'{"ts": 1699999999000, "values": {"a": 01}}',
        b"\xff\xfe",
        b"[" * 3000 + b"]" * 3000,
        b'  {"ts": "2023-11-14T22:13:19.5Z", "values": {"a": true, "b": "1", "c": null}}\n',
    ],
)
def test_orjson_fast_path_decodes_exactly_like_the_json_module(
    payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.decode

    for topic in ("sensors/lab/pump", "sensors/lab/pump/a"):
        fast = _outcome(topic, payload)
        monkeypatch.setattr(edge.decode, "_fast_loads", None)  # the json module only
        assert _outcome(topic, payload) == fast
        monkeypatch.undo()


def test_topic_matches_are_remembered_but_stay_correct() -> None:
    t = TopicTemplate("sensors/{site}/{device}")
    for _ in range(3):
        assert t.match("sensors/lab/pump-1") == {"site": "lab", "device": "pump-1"}
        assert t.match("other/lab/pump-1") is None
    for k in range(5000):  # more topics than remembered: still right
        assert t.match(f"sensors/s/d{k}") == {"site": "s", "device": f"d{k}"}
