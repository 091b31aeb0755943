"""MQTT topic and payload -> :class:`Reading` (pure: the arrival time is passed in).

Topic templates name their levels: ``sensors/{site}/{device}`` carries a JSON object::

    {"ts": 1700000000.5 | 1700000000500 | "2023-11-14T22:13:20.5Z",
     "values": {"Pressure": 0.27, "Current": null}}

(``ts`` in epoch seconds or milliseconds — a number >= 1e11 is read as milliseconds — or an
RFC 3339 string with a zone; ``null`` means "not measured"), and
``sensors/{site}/{device}/{channel}`` carries one plain number, stamped with its arrival time,
or ``{"ts": <as above>, "value": <number | null>}`` (without ``ts``: the arrival time).
This is the ``gapwatch`` input format; the others (Telegraf JSON, line protocol, SenML) are in
:mod:`edge.formats`.

A payload that cannot be used at all raises :class:`~edge.errors.PayloadError` with a stable
``reason``. A usable payload with some bad values yields a :class:`Reading` holding the good
values plus ``rejected`` ``(channel, reason)`` pairs, so the caller can dead-letter the raw
payload without losing the rest. Reasons:

``unknown_topic``, ``oversized``, ``not_utf8``, ``not_json``, ``bad_shape``, ``bad_ts``,
``ts_future``, ``ts_past``, ``bad_value``, ``non_finite``, ``bad_name`` (and, decided by the
caller, ``unknown_device``, ``unknown_channel``, ``too_late``).

``bad_name``: a topic, or a channel name in the payload, that is not encodable as UTF-8. JSON
can spell a lone surrogate (``"pump-\\ud800"``) and Python's json reader accepts it, but no
Kafka key, record or line protocol can carry it; a channel so named is rejected on its own
(the rest of the payload is used), a topic so named rejects the message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge.errors import PayloadError
from edge.schema import unencodable

try:  # orjson parses a payload several times faster; json (the reference) is the fallback
    import orjson

    _fast_loads: Any = orjson.loads
    _FastError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - orjson is optional on the edge
    _fast_loads = None
    _FastError = ValueError

__all__ = [
    "Limits",
    "Reading",
    "TopicTemplate",
    "check_time",
    "decode_gapwatch",
    "decode_message",
    "loads",
    "number",
    "parse_ts",
]

_MS_THRESHOLD = 1e11  # epoch numbers at or above this are milliseconds (1e11 s is year 5138)
_FIELD_RE = re.compile(r"\{([a-z]+)\}")
_KNOWN_FIELDS = {"site", "device", "channel"}
_MATCH_CACHE = 4096  # topics remembered per template (devices repeat their topics)
_isfinite = math.isfinite


@dataclass(frozen=True)
class Reading:
    """Values of one device at one time, from one MQTT message."""

    site: str
    device: str
    ts_ms: int
    values: dict[str, float]  # NaN = reported as not measured
    received_ms: int
    rejected: tuple[tuple[str, str], ...] = ()  # (channel, reason) dropped from values


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 65536
    future_tolerance_ms: int = 300_000
    max_age_ms: int = 0  # 0: no age limit
    min_ts_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z


class TopicTemplate:
    """A topic pattern with named levels, e.g. ``sensors/{site}/{device}/{channel}``."""

    def __init__(self, pattern: str, *, device_required: bool = True) -> None:
        names = _FIELD_RE.findall(pattern)
        unknown = set(names) - _KNOWN_FIELDS
        missing = device_required and "device" not in names
        if unknown or missing or len(set(names)) != len(names):
            need = "needs one {device} and" if device_required else "takes {device},"
            raise ValueError(
                f"topic template {pattern!r} {need} may use {{site}}, "
                f"{{channel}} once each (got fields {names})"
            )
        levels = pattern.split("/")
        for level in levels:
            if "{" in level and not _FIELD_RE.fullmatch(level):
                raise ValueError(f"topic template {pattern!r}: a field must fill a whole level")
        self.pattern = pattern
        self.fields = tuple(names)
        self.per_channel = "channel" in names
        self.filter = "/".join("+" if _FIELD_RE.fullmatch(lv) else lv for lv in levels)
        regex = "/".join(
            f"(?P<{m.group(1)}>[^/]+)" if (m := _FIELD_RE.fullmatch(lv)) else re.escape(lv)
            for lv in levels
        )
        self._regex = re.compile(f"^{regex}$")
        self._seen: dict[str, dict[str, str] | None] = {}

    def match(self, topic: str) -> dict[str, str] | None:
        """The fields of ``topic`` (a shared dict: do not modify it), or None."""
        try:
            return self._seen[topic]
        except KeyError:
            pass
        m = self._regex.match(topic)
        fields = None if m is None else m.groupdict()
        if len(self._seen) >= _MATCH_CACHE:
            self._seen.clear()
        self._seen[topic] = fields
        return fields

    def __repr__(self) -> str:
        return f"TopicTemplate({self.pattern!r})"


def parse_ts(value: object) -> int:
    """Epoch seconds, epoch milliseconds or RFC 3339 (with a zone) -> epoch milliseconds."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"timestamp {value!r} is not a number or RFC 3339 string")
    if isinstance(value, int | float):
        try:
            v = float(value)
        except OverflowError as exc:  # an int beyond float range (JSON allows any length)
            raise ValueError(f"timestamp {value!r:.40} is out of range") from exc
        if not math.isfinite(v):
            raise ValueError(f"timestamp {value!r} is not finite")
        return round(v) if abs(v) >= _MS_THRESHOLD else round(v * 1000.0)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"timestamp {value!r} is not RFC 3339") from exc
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no zone; append 'Z' or an offset")
        return round(dt.timestamp() * 1000.0)
    raise ValueError(f"timestamp {value!r} is not a number or RFC 3339 string")


def _nan_constant(_name: str) -> float:
    return math.nan  # NaN / Infinity literals: reported as non_finite per value


def _number(channel: str, raw: object, rejected: list[tuple[str, str]]) -> float | None:
    if raw is None:
        return math.nan
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        rejected.append((channel, "bad_value"))
        return None
    try:
        v = float(raw)
    except OverflowError:  # an int beyond float range: as unusable as Infinity
        v = math.inf
    if not math.isfinite(v):
        rejected.append((channel, "non_finite"))
        return None
    return v


def _loads(payload: bytes) -> tuple[Any, bool]:
    """JSON of a payload, and whether its strings may hold lone surrogates.

    orjson first, and where it refuses, the json module decides. orjson is strict where json
    is lenient (NaN/Infinity literals, lone surrogates, integers beyond 64 bits); whatever
    orjson accepts, json reads the same way, and its strings are always valid UTF-8.
    """
    if _fast_loads is not None:
        try:
            return _fast_loads(payload), False
        except _FastError:
            pass
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("not_utf8", str(exc)) from exc
    try:
        return json.loads(text, parse_constant=_nan_constant), True
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too long ints, deep nesting
        raise PayloadError("not_json", str(exc)[:200]) from exc


def _drop_bad_names(values: dict[str, Any], rejected: list[tuple[str, str]]) -> dict[str, Any]:
    """``values`` without channels whose names are not UTF-8, each noted as ``bad_name``."""
    bad = [c for c in values if unencodable(c)]
    if not bad:
        return values
    rejected.extend((c, "bad_name") for c in bad)
    return {c: v for c, v in values.items() if c not in bad}


def _check_time(ts_ms: int, received_ms: int, limits: Limits) -> None:
    if ts_ms > received_ms + limits.future_tolerance_ms:
        raise PayloadError(
            "ts_future", f"ts {ts_ms} is {ts_ms - received_ms} ms ahead of the clock"
        )
    if ts_ms < limits.min_ts_ms:
        raise PayloadError("ts_past", f"ts {ts_ms} is before the minimum {limits.min_ts_ms}")
    if limits.max_age_ms > 0 and ts_ms < received_ms - limits.max_age_ms:
        raise PayloadError("ts_past", f"ts {ts_ms} is {received_ms - ts_ms} ms old")


loads = _loads  # shared with edge.formats (the other input formats)
number = _number
check_time = _check_time


def decode_message(
    topic: str,
    payload: bytes,
    received_ms: int,
    templates: tuple[TopicTemplate, ...],
    *,
    limits: Limits,
    default_site: str = "default",
) -> Reading:
    """Decode one MQTT message; raise PayloadError with a stable reason when it is unusable."""
    fields: dict[str, str] | None = None
    template = None
    for template in templates:
        fields = template.match(topic)
        if fields is not None:
            break
    if fields is None or template is None:
        raise PayloadError("unknown_topic", f"topic {topic!r} matches no template")
    if not topic.isascii() and unencodable(topic):
        raise PayloadError("bad_name", f"topic {topic!r} is not encodable as UTF-8")
    return decode_gapwatch(fields, template.per_channel, payload, received_ms, limits, default_site)


def decode_gapwatch(  # noqa: PLR0917 - the hot path: positional calls are cheaper
    fields: dict[str, str],
    per_channel: bool,
    payload: bytes,
    received_ms: int,
    limits: Limits,
    default_site: str,
) -> Reading:
    """The ``gapwatch`` format of a matched topic (``fields`` from its template)."""
    if len(payload) > limits.max_payload_bytes:
        raise PayloadError("oversized", f"{len(payload)} bytes > {limits.max_payload_bytes}")
    data, lenient = _loads(payload)
    site = fields.get("site", default_site)
    device = fields["device"]
    rejected: list[tuple[str, str]] = []
    values: dict[str, float] = {}
    if per_channel:
        channel = fields["channel"]
        ts_ms = received_ms
        if isinstance(data, dict):  # {"ts": ..., "value": ...}: a stamped channel value
            data, ts_ms = _stamped(data, received_ms)
        elif isinstance(data, list):
            raise PayloadError("bad_shape", 'a channel topic carries a number or {"ts", "value"}')
        v = _number(channel, data, rejected)
        if rejected:
            raise PayloadError(rejected[0][1], f"channel {channel!r} value {data!r}")
        assert v is not None
        values[channel] = v
    else:
        if not isinstance(data, dict):
            raise PayloadError("bad_shape", 'expected {"ts": ..., "values": {...}}')
        raw_values = data.get("values")
        if not isinstance(raw_values, dict) or not raw_values:
            raise PayloadError("bad_shape", '"values" must be a non-empty object of channels')
        if "ts" not in data:
            raise PayloadError("bad_ts", 'missing "ts"')
        try:
            ts_ms = parse_ts(data["ts"])
        except ValueError as exc:
            raise PayloadError("bad_ts", str(exc)) from exc
        if lenient:
            raw_values = _drop_bad_names(raw_values, rejected)
        for channel, raw in raw_values.items():
            if type(raw) is float and _isfinite(raw):
                values[channel] = raw  # the common case, as _number would take it
                continue
            v = _number(channel, raw, rejected)
            if v is not None:
                values[channel] = v
        if not values:
            reason = rejected[0][1]
            raise PayloadError(reason, f"no usable value: {rejected}")
    _check_time(ts_ms, received_ms, limits)
    return Reading(site, device, ts_ms, values, received_ms, tuple(rejected))


def _stamped(data: dict[str, Any], received_ms: int) -> tuple[object, int]:
    """``{"ts": ..., "value": ...}`` of a channel topic -> (raw value, ts_ms); no ts: arrival."""
    if "value" not in data:
        raise PayloadError("bad_shape", 'a channel object needs "value" (and optionally "ts")')
    if "ts" not in data:
        return data["value"], received_ms
    try:
        return data["value"], parse_ts(data["ts"])
    except ValueError as exc:
        raise PayloadError("bad_ts", str(exc)) from exc
