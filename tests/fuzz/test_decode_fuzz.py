"""Fuzzing the MQTT decoding layer (edge.decode): arbitrary topics and payloads never crash it.

The contract: :func:`edge.decode.decode_message` returns a :class:`Reading` or raises
:class:`edge.errors.PayloadError` with one of the documented reasons; any other exception is a
crash of the agent's hot loop on one bad message. Hypothesis runs derandomized in CI (``CI``
set) so a failure there is reproducible; locally it explores new inputs each run.

Topics and channel names include lone surrogates (``\\ud800``, issue 16): every name in a
Reading must be encodable as UTF-8 (a Kafka key, the record, line protocol all need that), and
what is not is ``bad_name``.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.decode import Limits, Reading, TopicTemplate, decode_message, parse_ts
from edge.errors import PayloadError
from edge.schema import unencodable

FUZZ = settings(
    max_examples=int(os.environ.get("GAPWATCH_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REASONS = {
    "unknown_topic",
    "oversized",
    "not_utf8",
    "not_json",
    "bad_shape",
    "bad_ts",
    "ts_future",
    "ts_past",
    "bad_value",
    "non_finite",
    "bad_name",
}
TEMPLATES = (
    TopicTemplate("sensors/{site}/{device}"),
    TopicTemplate("sensors/{site}/{device}/{channel}"),
)
NOW_MS = 1_764_000_000_000  # 2025-11-24

# ----------------------------------------------------------------------------- strategies

surrogates = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
# text with lone surrogates mixed in (st.text() leaves them out unless told otherwise)
names = st.text(st.characters() | surrogates, max_size=20)
huge_ints = st.integers(min_value=10**300, max_value=10**1000).map(lambda n: n * (-1) ** (n % 2))
numbers = st.one_of(
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**53 + 1, 2**63, 1e11, 1e11 - 1]),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=50))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=14))]),
)
timestamps = st.one_of(
    numbers,
    aware_datetimes.map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # no zone
    st.integers(min_value=NOW_MS - 10**9, max_value=NOW_MS + 10**9),
    st.integers(min_value=NOW_MS // 1000 - 10**6, max_value=NOW_MS // 1000 + 10**6),
    json_values,
)
channel_values = st.one_of(numbers, st.none(), json_values, st.text(max_size=20))
payload_objects = st.fixed_dictionaries(
    {},
    optional={
        "ts": timestamps,
        "values": st.one_of(st.dictionaries(names, channel_values, max_size=8), json_values),
        "extra": json_values,
    },
)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=512),
    payload_objects.map(_dump),
    json_values.map(_dump),
    numbers.map(lambda n: str(n).encode()),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(min_value=1, max_value=70_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=70_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b'"' + b"x" * n + b'"'),
)
levels = st.text(st.characters(blacklist_characters="/"), max_size=12)
topics = st.one_of(
    st.text(max_size=80),
    st.lists(levels, min_size=1, max_size=6).map(lambda parts: "sensors/" + "/".join(parts)),
    st.tuples(levels, levels).map(lambda p: f"sensors/{p[0]}/{p[1]}"),
    st.tuples(levels, levels, levels).map(lambda p: f"sensors/{p[0]}/{p[1]}/{p[2]}"),
)
limits = st.builds(
    Limits,
    max_payload_bytes=st.integers(min_value=0, max_value=1 << 20),
    future_tolerance_ms=st.integers(min_value=0, max_value=10**13),
    max_age_ms=st.integers(min_value=0, max_value=10**13),
    min_ts_ms=st.integers(min_value=-(10**15), max_value=10**15),
)


def _check_reading(reading: Reading, topic: str, payload: bytes, lim: Limits, now: int) -> None:
    assert isinstance(reading, Reading)
    assert reading.device and "/" not in reading.device
    for name in (reading.site, reading.device, *reading.values):
        name.encode("utf-8")  # never a name no UTF-8 writer can carry
    assert topic.endswith(reading.device) or f"/{reading.device}/" in topic
    assert isinstance(reading.ts_ms, int)
    assert lim.min_ts_ms <= reading.ts_ms <= now + lim.future_tolerance_ms
    assert len(payload) <= lim.max_payload_bytes
    assert reading.values, "a reading without values must be a PayloadError"
    for channel, value in reading.values.items():
        assert isinstance(channel, str)
        assert isinstance(value, float)
        assert math.isfinite(value) or math.isnan(value)
    rejected = {c for c, _ in reading.rejected}
    assert not rejected & set(reading.values)
    assert {r for _, r in reading.rejected} <= {"bad_value", "non_finite", "bad_name"}


def _finite_float(raw: float) -> bool:
    try:
        return math.isfinite(float(raw))
    except OverflowError:
        return False


# ----------------------------------------------------------------------------- properties


@FUZZ
@given(topic=topics, payload=payloads, lim=limits, now=st.integers(-(2**62), 2**62))
@example(
    topic="sensors/a/b",
    payload=b'{"ts": 1700000000, "values": {"x": 1' + b"0" * 400 + b"}}",
    lim=Limits(),
    now=NOW_MS,
)
@example(
    topic="sensors/a/b",
    payload=b'{"ts": 1' + b"0" * 400 + b', "values": {"x": 1}}',
    lim=Limits(),
    now=NOW_MS,
)
@example(topic="sensors/a/b/c", payload=b"1" + b"0" * 400, lim=Limits(), now=NOW_MS)
@example(topic="sensors/a/b", payload=b"[" * 60_000 + b"]" * 60_000, lim=Limits(), now=NOW_MS)
def test_decode_message_returns_a_reading_or_a_documented_payload_error(
    topic: str, payload: bytes, lim: Limits, now: int
) -> None:
    try:
        reading = decode_message(topic, payload, now, TEMPLATES, limits=lim)
    except PayloadError as exc:
        assert exc.reason in REASONS, f"undocumented reason {exc.reason!r}"
        assert isinstance(exc.detail, str)
        return
    _check_reading(reading, topic, payload, lim, now)


@FUZZ
@given(
    site=levels.filter(bool),
    device=levels.filter(bool),
    values=st.dictionaries(names, channel_values, min_size=1, max_size=8),
    ts=timestamps,
)
@example(site="lab", device="pump-\ud800", values={"a": 1.0}, ts=NOW_MS)
@example(site="lab", device="pump", values={"a": 1.0, "b\ud800": 2.0}, ts=NOW_MS)
@example(site="lab", device="pump", values={"a": math.nan, "b\ud800": 2.0}, ts=NOW_MS)
def test_well_formed_envelopes_keep_every_good_value(
    site: str, device: str, values: dict[str, Any], ts: Any
) -> None:
    payload = _dump({"ts": ts, "values": values})
    try:
        reading = decode_message(
            f"sensors/{site}/{device}",
            payload,
            NOW_MS,
            TEMPLATES,
            limits=Limits(max_payload_bytes=1 << 22),
        )
    except PayloadError as exc:
        assert exc.reason in REASONS
        return
    assert (reading.site, reading.device) == (site, device)
    assert not unencodable(site) and not unencodable(device)
    for channel, raw in values.items():
        good = not unencodable(channel) and (
            raw is None
            or (isinstance(raw, int | float) and not isinstance(raw, bool) and _finite_float(raw))
        )
        if good:
            assert channel in reading.values, f"good value of {channel!r} was dropped"
        else:
            assert channel not in reading.values


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode), st.integers(0, 2**40))
@example(b"null", 0)
@example(b'{"ts": 1700000000, "value": 2.5}', 1_700_000_000_000)
def test_channel_topic_accepts_only_numbers_or_stamped_values(payload: bytes, now: int) -> None:
    try:
        reading = decode_message(
            "sensors/s/d/Pressure", payload, now, TEMPLATES, limits=Limits(min_ts_ms=0)
        )
    except PayloadError as exc:
        assert exc.reason in REASONS
        return
    assert list(reading.values) == ["Pressure"]
    sent = json.loads(payload)
    if isinstance(sent, dict):  # {"ts": ..., "value": ...}: a stamped channel value
        sent = sent["value"]
    else:
        assert reading.ts_ms == now
    got = reading.values["Pressure"]
    if sent is None:  # null: "not measured"
        assert math.isnan(got)
    else:
        assert float(sent) == pytest.approx(got)


@FUZZ
@given(st.one_of(json_values, st.text(max_size=60), aware_datetimes.map(datetime.isoformat)))
def test_parse_ts_returns_int_or_value_error(value: Any) -> None:
    try:
        ms = parse_ts(value)
    except ValueError:
        return
    assert isinstance(ms, int)


@FUZZ
@given(aware_datetimes.filter(lambda d: 2000 <= d.astimezone(UTC).year < 5000))
def test_parse_ts_agrees_across_formats(when: datetime) -> None:
    when = when.replace(microsecond=(when.microsecond // 1000) * 1000)
    ms = round(when.timestamp() * 1000)
    assert parse_ts(when.isoformat()) == ms
    assert parse_ts(ms) == ms
    assert abs(parse_ts(ms / 1000) - ms) <= 1


# Levels a template literal may contain: no separators, wildcards or braces.
literal = st.text(
    st.characters(blacklist_characters="/{}+#", blacklist_categories=("Cs",)), max_size=8
)


@FUZZ
@given(
    prefix=st.lists(literal, max_size=3),
    order=st.permutations(["site", "device", "channel"]),
    use=st.tuples(st.booleans(), st.booleans()),
    names=st.tuples(levels.filter(bool), levels.filter(bool), levels.filter(bool)),
)
def test_topic_templates_match_what_they_render(
    prefix: list[str], order: list[str], use: tuple[bool, bool], names: tuple[str, str, str]
) -> None:
    fields = [
        f for f in order if f == "device" or (f == "site" and use[0]) or (f == "channel" and use[1])
    ]
    pattern = "/".join([*prefix, *(f"{{{f}}}" for f in fields)])
    template = TopicTemplate(pattern)
    values = dict(zip(["site", "device", "channel"], names, strict=True))
    topic = "/".join([*prefix, *(values[f] for f in fields)])
    assert template.match(topic) == {f: values[f] for f in fields}
    assert "{" not in template.filter
    assert template.match(topic + "/extra") is None


@FUZZ
@given(st.text(max_size=60))
def test_topic_template_rejects_bad_patterns_with_value_error(pattern: str) -> None:
    try:
        template = TopicTemplate(pattern)
    except ValueError as exc:
        assert pattern in str(exc) or repr(pattern) in str(exc)
        return
    assert "device" in template.fields
