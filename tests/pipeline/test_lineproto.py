"""Scored ticks → line protocol: exact fields, escaping, revisions, fast path == decode path."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import SchemaError
from edge.schema import ScoredTick
from pipeline.errors import LineProtocolError
from pipeline.lineproto import LineEncoder, format_floats, parse_line


def tick(**over: object) -> ScoredTick:
    base: dict[str, object] = {
        "site": "lab",
        "device": "pump-3",
        "ts_ms": 1_700_000_000_123,
        "values": {"Pressure": 0.27, "Current": 1.9, "Volume Flow RateRMS": 32.5},
        "imputed": ("Current",),
        "sigma": {"Current": 0.04},
        "score": 1.37,
        "smoothed": 1.1,
        "threshold": 2.5,
        "anomaly": False,
        "top_channels": ("Pressure",),
        "model": "skab",
        "model_version": "20261125T120000",
    }
    base.update(over)
    return ScoredTick(**base)  # type: ignore[arg-type]


def test_reading_point_has_tags_fields_and_tick_time() -> None:
    lines = LineEncoder().encode(tick()).decode().rstrip("\n").split("\n")
    assert len(lines) == 1
    p = parse_line(lines[0])
    assert p.measurement == "readings"
    assert p.tags == {"site": "lab", "device": "pump-3"}
    assert p.time == 1_700_000_000_123
    assert p.fields == {
        "Pressure": 0.27,
        "Pressure_imputed": False,
        "Current": 1.9,
        "Current_imputed": True,
        "Current_sigma": 0.04,
        "Volume Flow RateRMS": 32.5,
        "Volume Flow RateRMS_imputed": False,
        "imputed_frac": 1 / 3,
        "score": 1.37,
        "smoothed": 1.1,
        "threshold": 2.5,
        "anomaly": False,
        "revision": 0,
        "model_version": "20261125T120000",
        "warmup": False,
        "model": "skab",
    }
    assert isinstance(p.fields["revision"], int)


def test_missing_value_and_non_finite_numbers_are_left_out() -> None:
    t = tick(values={"a": None, "b": 2.0}, imputed=(), sigma={}, score=None, smoothed=math.nan)
    p = parse_line(LineEncoder().encode(t).decode())
    assert "a" not in p.fields
    assert p.fields["a_imputed"] is False
    assert p.fields["b"] == 2.0
    assert "score" not in p.fields
    assert "smoothed" not in p.fields


def test_alarm_writes_an_anomalies_point_at_the_same_time() -> None:
    t = tick(anomaly=True, top_channels=("Pressure", "Current"), score=9.5)
    readings, alarm = (
        parse_line(x) for x in LineEncoder().encode(t).decode().rstrip("\n").split("\n")
    )
    assert readings.fields["anomaly"] is True
    assert alarm.measurement == "anomalies"
    assert alarm.tags == readings.tags
    assert alarm.time == readings.time
    assert alarm.fields["active"] is True
    assert alarm.fields["top_channels"] == "Pressure,Current"
    assert alarm.fields["score"] == 9.5


def test_revision_writes_inactive_alarm_so_a_cleared_alarm_is_overwritten() -> None:
    lines = LineEncoder().encode(tick(revision=1)).decode().rstrip("\n").split("\n")
    assert len(lines) == 2
    alarm = parse_line(lines[1])
    assert alarm.fields["active"] is False
    assert alarm.fields["revision"] == 1


def test_tags_and_keys_are_escaped_and_round_trip() -> None:
    t = tick(site="a,b=c d", device="x y", values={"flow rate,l=m": 1.5}, imputed=(), sigma={})
    p = parse_line(LineEncoder().encode(t).decode())
    assert p.tags == {"site": "a,b=c d", "device": "x y"}
    assert p.fields["flow rate,l=m"] == 1.5


def test_string_fields_are_quoted() -> None:
    p = parse_line(LineEncoder().encode(tick(model_version='v"1')).decode())
    assert p.fields["model_version"] == 'v"1'


@pytest.mark.parametrize(
    "over",
    [
        {"values": {"score": 1.0}, "imputed": (), "sigma": {}},
        {"values": {"time": 1.0}, "imputed": (), "sigma": {}},
        {"device": "a\\b"},
        {"site": "line\nbreak"},
        {"device": "form\x0cfeed"},
        {"values": {'quo"te': 1.0}, "imputed": (), "sigma": {}},
    ],
)
def test_names_influxdb_cannot_hold_are_refused(over: dict[str, object]) -> None:
    with pytest.raises(LineProtocolError):
        LineEncoder().encode(tick(**over))


def test_encode_json_matches_decode_then_encode() -> None:
    enc = LineEncoder()
    t = tick(anomaly=True, revision=1)
    fast = enc.encode_json(t.encode())
    assert fast is not None
    assert fast.lines == enc.encode(ScoredTick.decode(t.encode()))
    assert (fast.site, fast.device, fast.ts_ms, fast.revision) == ("lab", "pump-3", t.ts_ms, 1)
    assert fast.points == 2


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(ts_ms=float(d["ts_ms"])),  # decode accepts integral floats
        lambda d: d.update(anomaly=1),  # decode takes bool(x)
        lambda d: d["values"].update(Pressure=True),
        lambda d: d.pop("score"),  # decode refuses
        lambda d: d.update(schema=2),
        lambda d: d.update(imputed=["nope"]),
        lambda d: d.update(model=5),
    ],
)
def test_encode_json_gives_what_the_strict_reader_gives_for_any_shape(mutate: object) -> None:
    """Off the canonical shape, encode_json follows ScoredTick's own reader exactly."""
    data = tick().to_dict()
    mutate(data)  # type: ignore[operator]
    raw = json.dumps(data).encode()
    fast = LineEncoder().encode_json(raw)
    try:
        slow = LineEncoder().encode(ScoredTick.decode(raw))
    except SchemaError:
        assert fast is None  # refused: the sink's decode path dead-letters it with the reason
        return
    assert fast is not None and fast.lines == slow


def test_encode_json_defers_non_json_and_nan_tokens() -> None:
    enc = LineEncoder()
    assert enc.encode_json(b"\xff\xfe") is None
    assert enc.encode_json(b"[1, 2]") is None
    raw = json.dumps(tick().to_dict()).replace("1.37", "NaN").encode()
    assert enc.encode_json(raw) is None or b"score=" not in enc.encode_json(raw).lines  # type: ignore[union-attr]


names = st.text(
    alphabet=st.characters(blacklist_characters='\\\n\r"', blacklist_categories=["Cs"]),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in {"score", "time", "anomaly", "revision", "model", "warmup"})
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=300, deadline=None)
@given(
    values=st.dictionaries(names, st.none() | floats, min_size=0, max_size=6),
    data=st.data(),
    score=st.none() | floats,
    anomaly=st.booleans(),
    revision=st.integers(0, 3),
)
def test_fast_path_and_decode_path_agree(
    values: dict[str, float | None],
    data: st.DataObject,
    score: float | None,
    anomaly: bool,
    revision: int,
) -> None:
    if any(k.endswith(("_imputed", "_sigma")) or k == "smoothed" for k in values):
        return
    imputed = data.draw(
        st.lists(st.sampled_from(sorted(values)), unique=True) if values else st.just([])
    )
    sigma = {c: data.draw(floats) for c in imputed}
    t = tick(
        values=values,
        imputed=tuple(imputed),
        sigma=sigma,
        score=score,
        anomaly=anomaly,
        revision=revision,
    )
    raw = json.dumps(t.to_dict()).encode()
    try:
        slow = LineEncoder().encode(ScoredTick.decode(raw))
    except LineProtocolError:
        with pytest.raises(LineProtocolError):
            LineEncoder().encode_json(raw)
        return
    fast = LineEncoder().encode_json(raw)
    numbers = [v for v in values.values() if v is not None] + list(sigma.values())
    if all(math.isfinite(v) for v in [*numbers, 0.0 if score is None else score]):
        assert fast is not None  # canonical records take the fast path
    if fast is not None:
        assert fast.lines == slow
    for line in slow.decode().rstrip("\n").split("\n"):
        parse_line(line)


# InfluxDB's line-protocol float: optional sign, digits, optional fraction, optional exponent.
_INFLUX_FLOAT = re.compile(rb"-?[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=12))
def test_floats_are_written_as_text_that_reads_back_exactly(numbers: list[float]) -> None:
    texts = format_floats(numbers)
    assert len(texts) == len(numbers)
    for number, text in zip(numbers, texts, strict=True):
        assert _INFLUX_FLOAT.fullmatch(text), text
        assert float(text) == number
        assert math.copysign(1.0, float(text)) == math.copysign(1.0, number)


def test_tiny_and_huge_values_keep_their_exact_value() -> None:
    values = {"a": 4.4e-05, "b": 1e16, "c": -0.0, "d": 5e-324, "e": 1.7976931348623157e308}
    t = tick(values=values, imputed=(), sigma={})
    fast = LineEncoder().encode_json(t.encode())
    assert fast is not None
    assert fast.lines == LineEncoder().encode(t)
    fields = parse_line(fast.lines.decode()).fields
    assert {k: fields[k] for k in values} == values


def test_percent_signs_in_names_and_strings_are_written_as_they_are() -> None:
    t = tick(
        site="lab%d",
        device="pump%s 3",
        values={"Flow %": 1.5, "Pressure": 0.25},
        imputed=("Flow %",),
        sigma={"Flow %": 0.125},
        model="m%%",
        anomaly=True,
    )
    fast = LineEncoder().encode_json(t.encode())
    assert fast is not None
    assert fast.lines == LineEncoder().encode(t)
    readings, alarm = (parse_line(x) for x in fast.lines.decode().rstrip("\n").split("\n"))
    assert readings.tags == {"site": "lab%d", "device": "pump%s 3"}
    assert readings.fields["Flow %"] == 1.5
    assert readings.fields["Flow %_sigma"] == 0.125
    assert readings.fields["model"] == "m%%"
    assert alarm.tags == readings.tags
    assert alarm.fields["active"] is True


def test_an_imputed_channel_without_sigma_is_written_without_its_sigma_field() -> None:
    data = tick(imputed=("Current", "Pressure"), sigma={"Current": 0.04}).to_dict()
    raw = json.dumps(data).encode()
    fast = LineEncoder().encode_json(raw)
    assert fast is not None
    assert fast.lines == LineEncoder().encode(ScoredTick.decode(raw))
    fields = parse_line(fast.lines.decode()).fields
    assert fields["Current_sigma"] == 0.04
    assert "Pressure_sigma" not in fields
    assert fields["Pressure_imputed"] is True


def test_one_encoder_keeps_shapes_and_series_apart() -> None:
    enc = LineEncoder()
    a = tick(device="a", values={"Pressure": 1.0, "Current": 2.0}, imputed=(), sigma={})
    b = tick(device="b", values={"Current": 2.0, "Pressure": 1.0}, imputed=(), sigma={})
    c = tick(device="a", values={"Pressure": 1.0, "Current": 2.0}, imputed=("Current",))
    for t in (a, b, c, a, b, c):
        fast = enc.encode_json(t.encode())
        assert fast is not None
        assert fast.lines == LineEncoder().encode(t)
        assert (fast.device, fast.points) == (t.device, 1)


@pytest.mark.parametrize(
    "over",
    [
        {"device": "pump-\ud800"},
        {"site": "\udfff"},
        {"values": {"Pressure": 1.0, "Cur\ud800": 2.0}, "imputed": (), "sigma": {}},
        {"model": "skab\ud800"},
        {"model_version": "\ud800"},
        {"anomaly": True, "top_channels": ("\ud800",)},
    ],
)
def test_a_name_that_is_not_utf8_is_refused_as_bad_name_not_a_crash(
    over: dict[str, object],
) -> None:
    # A ScoredTick built in memory can hold a lone surrogate; encoding it used to raise
    # UnicodeEncodeError out of the encoder.
    with pytest.raises(LineProtocolError) as err:
        LineEncoder().encode(tick(**over))
    assert err.value.reason == "bad_name"


@pytest.mark.parametrize(
    "values",
    [{"x": 1.0, "x_imputed": 2.0}, {"x_sigma": 1.0, "x": 2.0}],
)
def test_a_channel_beside_its_suffixed_twin_is_a_name_collision(values: dict[str, float]) -> None:
    t = tick(values=values, imputed=(), sigma={})
    for encode in (lambda: LineEncoder().encode(t), lambda: LineEncoder().encode_json(t.encode())):
        with pytest.raises(LineProtocolError) as err:
            encode()
        assert err.value.reason == "name_collision"
        assert "collides" in str(err.value)
