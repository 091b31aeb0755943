"""Fuzzing the Kafka record schema (edge.schema): a poison record is a SchemaError, not a crash.

The sink decodes every record it consumes with :meth:`ScoredTick.decode`; anything but a
:class:`~edge.errors.SchemaError` there would stop the consumer group on one bad record. Text
here includes lone surrogates (``\\ud800``): valid JSON escapes that no UTF-8 writer can carry
(issue 16: one in a device name crashed the sink in its line-protocol encoder).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.errors import SchemaError
from edge.schema import DeadLetter, ScoredTick
from pipeline.lineproto import LineEncoder, LineProtocolError

FUZZ = settings(
    max_examples=int(os.environ.get("GAPWATCH_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
surrogates = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
# any text, lone surrogates included (st.characters() leaves them out by default)
any_text = st.text(st.characters() | surrogates, max_size=20)
bad_names = st.tuples(any_text, surrogates, any_text).map("".join)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
ticks = st.builds(
    ScoredTick,
    site=names,
    device=names,
    ts_ms=st.integers(0, 2**53),
    values=st.dictionaries(names, st.none() | finite, max_size=5),
    imputed=st.just(()),
    sigma=st.dictionaries(names, finite, max_size=3),
    score=st.none() | finite,
    smoothed=st.none() | finite,
    threshold=finite,
    anomaly=st.booleans(),
    top_channels=st.lists(names, max_size=3).map(tuple),
    model=names,
    model_version=names,
    revision=st.integers(0, 10),
    warmup=st.booleans(),
    received_ms=st.none() | st.integers(0, 2**53),
)
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(10**300, 10**500)
    | st.floats()
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=15,
)


def _mutate(tick: ScoredTick, key: str, value: Any) -> bytes:
    body = tick.to_dict()
    body[key] = value
    return json.dumps(body, allow_nan=True).encode()


@FUZZ
@given(ticks)
def test_scored_tick_round_trips(tick: ScoredTick) -> None:
    back = ScoredTick.decode(tick.encode())
    assert back.to_dict() == tick.to_dict()


@FUZZ
@given(
    tick=ticks,
    key=st.sampled_from(sorted(ScoredTick.__dataclass_fields__)),
    value=junk,
)
@example(
    tick=ScoredTick("s", "d", 1, {}, (), {}, None, None, 1.0, False, (), "m", "1"),
    key="ts_ms",
    value=10**400,
)
@example(
    tick=ScoredTick("s", "d", 1, {}, (), {}, None, None, 1.0, False, (), "m", "1"),
    key="values",
    value={"x": 10**400},
)
def test_scored_tick_with_one_bad_field_is_a_schema_error(
    tick: ScoredTick, key: str, value: Any
) -> None:
    try:
        decoded = ScoredTick.decode(_mutate(tick, key, value))
    except SchemaError:
        return
    assert isinstance(decoded.ts_ms, int)
    assert all(v is None or isinstance(v, float) for v in decoded.values.values())
    assert decoded.score is None or isinstance(decoded.score, float)


@FUZZ
@given(st.binary(max_size=300) | junk.map(lambda j: json.dumps(j).encode()))
@example(b"[" * 50_000 + b"]" * 50_000)
def test_arbitrary_bytes_decode_or_schema_error(raw: bytes) -> None:
    for decode in (ScoredTick.decode, DeadLetter.decode):
        with contextlib.suppress(SchemaError):
            decode(raw)


@FUZZ
@given(
    reason=names,
    raw=st.binary(max_size=200),
    received=st.integers(0, 2**53),
)
def test_dead_letter_round_trips_any_bytes(reason: str, raw: bytes, received: int) -> None:
    letter = DeadLetter(reason, "detail", "mqtt:sensors/a/b", raw, received)
    back = DeadLetter.decode(letter.encode())
    assert back == letter


@FUZZ
@given(
    key=st.sampled_from(["reason", "detail", "source", "raw", "received_ms", "schema"]), value=junk
)
@example(key="raw", value=[1, 2])
@example(key="received_ms", value=1e400)
def test_dead_letter_with_one_bad_field_is_a_schema_error(key: str, value: Any) -> None:
    body = json.loads(DeadLetter("r", "d", "s", b"x", 1).encode())
    body[key] = value
    try:
        letter = DeadLetter.decode(json.dumps(body, allow_nan=True))
    except SchemaError:
        return
    assert isinstance(letter.raw, bytes)
    assert isinstance(letter.received_ms, int)


_NAME_FIELDS = ["site", "device", "model", "model_version", "values", "sigma", "top_channels"]


def _with_name(tick: ScoredTick, where: str, name: str) -> bytes:
    body = tick.to_dict()
    if where in {"values", "sigma"}:
        body[where] = {**body[where], name: 1.0}
    elif where == "top_channels":
        body[where] = [*body[where], name]
    else:
        body[where] = name
    return json.dumps(body).encode()  # ensure_ascii: a surrogate is written as \\udXXX


@FUZZ
@given(tick=ticks, where=st.sampled_from(_NAME_FIELDS), name=bad_names)
@example(
    tick=ScoredTick("s", "pump", 1, {}, (), {}, None, None, 1.0, False, (), "m", "1"),
    where="device",
    name="pump-\ud800",
)
def test_a_name_with_a_lone_surrogate_is_a_bad_name_schema_error(
    tick: ScoredTick, where: str, name: str
) -> None:
    raw = _with_name(tick, where, name)
    try:
        ScoredTick.decode(raw)
    except SchemaError as exc:
        assert str(exc).startswith("bad_name:"), exc
    else:
        raise AssertionError(f"{where}={name!r} was accepted")


@FUZZ
@given(
    tick=ticks,
    where=st.sampled_from([*_NAME_FIELDS, "imputed"]),
    name=bad_names | names | any_text,
)
def test_the_sink_encoder_refuses_with_a_reason_and_never_raises_anything_else(
    tick: ScoredTick, where: str, name: str
) -> None:
    """The sink's two paths (encode_json, then decode + encode) on names of any text."""
    if where == "imputed":
        body = tick.to_dict()
        body["values"][name] = 1.0
        body["imputed"], body["sigma"] = [name], {name: 0.5}
        raw = json.dumps(body).encode()
    else:
        raw = _with_name(tick, where, name)
    encoder = LineEncoder()
    try:
        if encoder.encode_json(raw) is None:
            encoder.encode(ScoredTick.decode(raw))
    except LineProtocolError as exc:
        assert exc.reason in {"unencodable", "bad_name", "name_collision"}
    except SchemaError as exc:
        assert str(exc).startswith("bad_name:") or "not JSON" not in str(exc)
