"""Fuzzing the input formats (edge.formats): any payload on any format's topic yields readings or
a PayloadError with a documented reason, never another exception (a crash of the hot loop).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.config import InputConfig, MqttConfig
from edge.decode import Limits, Reading
from edge.errors import PayloadError
from edge.formats import build_inputs, decode_input

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
    "bad_line",
    "no_device",
    "bad_name",
}
NOW_MS = 1_764_000_000_000
INPUTS = build_inputs(
    MqttConfig(
        topics=(),
        inputs=(
            InputConfig(topic="tg/{device}", preset="telegraf"),
            InputConfig(topic="tgh", preset="telegraf", device_key="tags.host"),
            InputConfig(topic="flat/{device}/{channel}", format="flat_json"),
            InputConfig(topic="flat/{device}", format="flat_json", site_key="site"),
            InputConfig(topic="lp/{device}", format="influx_line", channel_name="{name}.{field}"),
            InputConfig(topic="lph", format="influx_line", device_key="host", site_key="s"),
            InputConfig(topic="sm/{device}", format="senml"),
            InputConfig(topic="smb", format="senml", device_key="bn"),
            InputConfig(topic="gw/{device}/{channel}"),
        ),
    )
)
TOPICS = ["tg/d", "tgh", "flat/d/c", "flat/d", "lp/d", "lph", "sm/d", "smb", "gw/d/c", "x"]

numbers = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NOW_MS // 1000, NOW_MS, NOW_MS * 1000, NOW_MS * 10**6, 2**28, 10**400]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(["bn", "bt", "bv", "n", "v", "t", "vs", "s", "x_", "u", "ts", "value"])
senml = st.lists(st.dictionaries(keys, scalars, max_size=5), max_size=5)
telegraf = st.fixed_dictionaries(
    {},
    optional={
        "fields": st.dictionaries(st.text(max_size=6), scalars, max_size=4) | json_values,
        "name": scalars,
        "tags": st.dictionaries(st.sampled_from(["host", "x"]), scalars, max_size=2),
        "timestamp": numbers | st.text(max_size=30),
        "metrics": st.lists(json_values, max_size=3),
    },
)
line_text = st.text(alphabet=' ,="\\\n#abcsthost0123456789i.-eTfu', max_size=120)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=200),
    line_text.map(str.encode),
    json_values.map(_dump),
    senml.map(_dump),
    telegraf.map(_dump),
    telegraf.map(lambda t: _dump({"metrics": [t, t]})),
)


def _check(readings: tuple[Reading, ...], lim: Limits) -> None:
    assert readings, "no readings must be a PayloadError"
    for r in readings:
        assert r.device and "/" not in r.device and r.site
        assert isinstance(r.ts_ms, int)
        assert lim.min_ts_ms <= r.ts_ms <= NOW_MS + lim.future_tolerance_ms
        assert r.values
        for value in r.values.values():
            assert isinstance(value, float) and (math.isfinite(value) or math.isnan(value))
        assert {reason for _, reason in r.rejected} <= {"bad_value", "non_finite", "bad_name"}


@FUZZ
@given(topic=st.sampled_from(TOPICS), payload=payloads, tolerance=st.integers(0, 10**13))
@example(topic="lp/d", payload=b"m a=" + b"9" * 400 + b"i", tolerance=0)
@example(topic="lp/d", payload=b"m a=" + b"9" * 5000 + b"i", tolerance=0)
@example(topic="lp/d", payload=b"m a=1 " + b"9" * 5000, tolerance=0)
@example(topic="sm/d", payload=b'[{"n": "a", "v": 1e308, "t": 1e308}]', tolerance=0)
@example(
    topic="tg/d", payload=b'{"fields": {"a": 1}, "timestamp": 1' + b"0" * 400 + b"}", tolerance=0
)
def test_every_format_returns_readings_or_a_documented_payload_error(
    topic: str, payload: bytes, tolerance: int
) -> None:
    lim = Limits(max_payload_bytes=1 << 16, future_tolerance_ms=tolerance)
    try:
        readings = decode_input(topic, payload, NOW_MS, INPUTS, limits=lim)
    except PayloadError as exc:
        assert exc.reason in REASONS, f"undocumented reason {exc.reason!r}"
        return
    _check(readings, lim)
