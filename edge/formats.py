"""Input formats per topic template: topic + payload + ``[[mqtt.inputs]]`` entry -> readings.

Pure like :mod:`edge.decode` (the arrival time is passed in). Each :class:`Input` pairs a
:class:`~edge.decode.TopicTemplate` with a format; the first input whose template matches a
topic decodes it (``[[mqtt.inputs]]`` in order, then ``mqtt.topics``, which are ``gapwatch``):

``gapwatch``
    :func:`edge.decode.decode_gapwatch`: ``{"ts", "values"}``, or on a ``{channel}`` topic a
    number or ``{"ts", "value"}``.
``flat_json``
    a JSON object (or a list of them, or a list at ``records_path``) whose time is at
    ``time_path`` and whose channels are the numbers of the object at ``values_path`` (the top
    level when empty, less the keys that the paths name and ``exclude``). On a ``{channel}``
    topic: a number, or an object with the number at ``value_path``. The ``telegraf`` preset
    reads Telegraf's JSON serializer (``{"fields", "name", "tags", "timestamp"}``, also batched
    as ``{"metrics": [...]}``).
``influx_line``
    InfluxDB line protocol (:mod:`edge.lineproto`); the device may come from a tag.
``senml``
    RFC 8428 SenML JSON (:mod:`edge.senml`).

Time units (``time_unit``): ``auto`` reads a number as seconds below 1e11, milliseconds below
1e14, microseconds below 1e17 and nanoseconds above, and a string as ISO 8601 with a zone;
``s``, ``ms``, ``us``, ``ns`` force a number's unit and ``iso`` a string. Readings of one message
that share device and time merge into one. A message is refused whole (:class:`PayloadError`)
or accepted with per-channel ``rejected`` values, as in :mod:`edge.decode`. Reasons added here:
``bad_line`` (line protocol syntax) and ``no_device`` (``device_key`` absent from the payload);
``bad_name`` (a lone surrogate in a topic, device or channel name) as in :mod:`edge.decode`.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any, Protocol

from edge.config import InputConfig, MqttConfig
from edge.decode import (
    Limits,
    Reading,
    TopicTemplate,
    check_time,
    decode_gapwatch,
    loads,
    number,
)
from edge.errors import PayloadError
from edge.schema import unencodable

__all__ = [
    "FORMATS",
    "PRESETS",
    "TIME_UNITS",
    "Batch",
    "Decoder",
    "Input",
    "build_inputs",
    "check_input",
    "decode_input",
    "ident",
    "name_parts",
    "resolve",
    "stamp",
    "to_ms",
]

FORMATS = ("gapwatch", "flat_json", "influx_line", "senml")
TIME_UNITS = ("auto", "s", "ms", "us", "ns", "iso")
PRESETS = {
    "telegraf": {
        "time_path": "timestamp",
        "values_path": "fields",
        "name_path": "name",
        "records_path": "metrics",
    },
}
_DEFAULTS = InputConfig(topic="")
_MISSING = object()
_UNIT_FACTOR = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}


class Decoder(Protocol):
    """One format: (entry, topic fields, per-channel topic?, payload, arrival) -> readings."""

    def __call__(
        self,
        c: InputConfig,
        fields: dict[str, str],
        per_channel: bool,
        payload: bytes,
        received_ms: int,
        /,
        *,
        limits: Limits,
        default_site: str,
    ) -> tuple[Reading, ...]: ...


def resolve(inp: InputConfig) -> InputConfig:
    """``inp`` with its preset's values filled in where the entry left the default."""
    preset = PRESETS.get(inp.preset)
    if not preset:
        return inp
    changes: dict[str, Any] = {
        k: v for k, v in preset.items() if getattr(inp, k) == getattr(_DEFAULTS, k)
    }
    return dataclasses.replace(inp, format="flat_json", **changes)


def check_input(inp: InputConfig) -> list[str]:
    """Problems of one ``[[mqtt.inputs]]`` entry, each ``field: problem and fix``."""
    p = []
    if inp.format not in FORMATS:
        p.append(f"format {inp.format!r}: use one of {', '.join(FORMATS)}")
    if inp.preset and inp.preset not in PRESETS:
        p.append(f"preset {inp.preset!r}: use one of {', '.join(PRESETS)} or leave it empty")
    if inp.preset and inp.format not in {"gapwatch", "flat_json"}:
        p.append(f"preset {inp.preset!r} is a flat_json preset, not for format {inp.format!r}")
    if inp.time_unit not in TIME_UNITS:
        p.append(f"time_unit {inp.time_unit!r}: use one of {', '.join(TIME_UNITS)}")
    if any(ch in inp.topic for ch in "+#$"):
        p.append(f"topic {inp.topic!r}: write fields ({{device}}), not wildcards")
    if inp.format == "senml" and inp.device_key not in {"", "bn"}:
        p.append(f'device_key {inp.device_key!r}: senml takes "bn" (device = base name) or ""')
    if "{field}" not in inp.channel_name:
        p.append(f"channel_name {inp.channel_name!r} must contain {{field}}")
    try:
        t = TopicTemplate(inp.topic, device_required=not inp.device_key)
    except ValueError as exc:
        p.append(f"topic: {exc}")
    else:
        if t.per_channel and inp.format in {"influx_line", "senml"}:
            p.append(f"topic {inp.topic!r}: {inp.format} names its channels; drop {{channel}}")
        if "device" in t.fields and inp.device_key:
            p.append(f"topic {inp.topic!r} has {{device}} and device_key is set: keep one")
    return p


class Input:
    """One topic template and the format of its payloads."""

    __slots__ = ("config", "decoder", "gapwatch", "match", "per_channel", "template")

    def __init__(self, config: InputConfig) -> None:
        problems = check_input(config)
        if problems:
            raise ValueError(f"input {config.topic!r}: {'; '.join(problems)}")
        self.config = resolve(config)
        self.template = TopicTemplate(config.topic, device_required=not config.device_key)
        self.match = self.template.match  # bound once: the hot path looks it up per message
        self.per_channel = self.template.per_channel
        self.gapwatch = self.config.format == "gapwatch"
        self.decoder: Decoder = _decoders()[self.config.format]

    def __repr__(self) -> str:
        return f"Input({self.config.topic!r}, {self.config.format!r})"


def build_inputs(mqtt: MqttConfig) -> tuple[Input, ...]:
    """``mqtt.inputs`` in order, then each of ``mqtt.topics`` as a ``gapwatch`` input."""
    return tuple(Input(i) for i in mqtt.inputs) + tuple(
        Input(InputConfig(topic=t)) for t in mqtt.topics
    )


def decode_input(
    topic: str,
    payload: bytes,
    received_ms: int,
    inputs: tuple[Input, ...],
    *,
    limits: Limits,
    default_site: str = "default",
) -> tuple[Reading, ...]:
    """The readings of one message (one or more); PayloadError when it is unusable."""
    for inp in inputs:
        fields = inp.match(topic)
        if fields is not None:
            break
    else:
        raise PayloadError("unknown_topic", f"topic {topic!r} matches no template")
    if not topic.isascii() and unencodable(topic):
        raise PayloadError("bad_name", f"topic {topic!r} is not encodable as UTF-8")
    per_channel = inp.per_channel
    if inp.gapwatch:  # the default format: no detour
        return (decode_gapwatch(fields, per_channel, payload, received_ms, limits, default_site),)
    if len(payload) > limits.max_payload_bytes:
        raise PayloadError("oversized", f"{len(payload)} bytes > {limits.max_payload_bytes}")
    return inp.decoder(
        inp.config,
        fields,
        per_channel,
        payload,
        received_ms,
        limits=limits,
        default_site=default_site,
    )


def _gapwatch(
    c: InputConfig,
    fields: dict[str, str],
    per_channel: bool,
    payload: bytes,
    received_ms: int,
    *,
    limits: Limits,
    default_site: str,
) -> tuple[Reading, ...]:
    r = decode_gapwatch(fields, per_channel, payload, received_ms, limits, default_site)
    return (r,)


def _decoders() -> dict[str, Decoder]:
    from edge.lineproto import decode_line_protocol
    from edge.senml import decode_senml

    return {
        "gapwatch": _gapwatch,
        "flat_json": _flat_json,
        "influx_line": decode_line_protocol,
        "senml": decode_senml,
    }


# -- time ------------------------------------------------------------------------------------


def to_ms(raw: object, unit: str) -> int:
    """A timestamp in ``unit`` (see the module docstring) -> epoch ms; ValueError if unusable."""
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"timestamp {raw!r} is not a number or ISO 8601 string")
    if isinstance(raw, str):
        if unit not in {"auto", "iso"}:
            raise ValueError(f"timestamp {raw!r} is text; time_unit {unit!r} expects a number")
        try:
            dt = datetime.fromisoformat(raw.strip())
        except ValueError as exc:
            raise ValueError(f"timestamp {raw!r} is not ISO 8601") from exc
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {raw!r} has no zone; append 'Z' or an offset")
        return round(dt.timestamp() * 1000.0)
    if not isinstance(raw, int | float) or unit == "iso":
        raise ValueError(
            f"timestamp {raw!r:.40} is not {'ISO 8601 text' if unit == 'iso' else 'a number'}"
        )
    try:
        v = float(raw)
    except OverflowError as exc:
        raise ValueError(f"timestamp {raw!r:.40} is out of range") from exc
    if not math.isfinite(v):
        raise ValueError(f"timestamp {raw!r} is not finite")
    if unit == "auto":
        a = abs(v)
        unit = "s" if a < 1e11 else "ms" if a < 1e14 else "us" if a < 1e17 else "ns"
    if unit == "ns" and isinstance(raw, int):
        return (raw + 500_000) // 1_000_000  # exact for integer nanoseconds
    ms = v * _UNIT_FACTOR[unit]
    if not math.isfinite(ms):
        raise ValueError(f"timestamp {raw!r:.40} {unit} is out of range")
    return round(ms)


def stamp(raw: object, unit: str) -> int:
    """:func:`to_ms`, its ValueError as PayloadError ``bad_ts``."""
    try:
        return to_ms(raw, unit)
    except ValueError as exc:
        raise PayloadError("bad_ts", str(exc)) from exc


# -- readings --------------------------------------------------------------------------------


Group = tuple[dict[str, float], list[tuple[str, str]]]


class Batch:
    """The readings of one message, gathered per (site, device, time): later values win.

    :meth:`readings` checks each time against the limits; a group left without any value lends
    its rejections to the first group with values, and when none has a value the message is
    refused with the first rejection's reason.
    """

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, int], Group] = {}

    def group(self, site: str, device: str, ts_ms: int) -> Group:
        """The (values, rejected) of one device at one time, to fill in."""
        key = (site, device, ts_ms)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = ({}, [])
        return g

    def readings(
        self, received_ms: int, limits: Limits, *, lenient: bool = False
    ) -> tuple[Reading, ...]:
        """The checked readings; ``lenient``: names may hold lone surrogates (``bad_name``)."""
        out: list[Reading] = []
        lost: list[tuple[str, str]] = []
        for (site, device, ts_ms), (values, rejected) in self.groups.items():
            if lenient:
                _drop_bad_names(site, device, values, rejected)
            if not values:
                lost += rejected
                continue
            check_time(ts_ms, received_ms, limits)
            kept = tuple(x for x in rejected if x[0] not in values) if rejected else ()
            out.append(Reading(site, device, ts_ms, values, received_ms, kept))
        if not out:
            if not lost:
                raise PayloadError("bad_shape", "no channel values")
            raise PayloadError(lost[0][1], f"no usable value: {lost[:10]}")
        if lost:
            first = out[0]
            out[0] = dataclasses.replace(first, rejected=first.rejected + tuple(lost))
        return tuple(out)


def _drop_bad_names(
    site: str, device: str, values: dict[str, float], rejected: list[tuple[str, str]]
) -> None:
    """Channels whose names are not UTF-8 (lone surrogates) move to ``rejected`` as bad_name."""
    if unencodable(site) or unencodable(device):
        raise PayloadError("bad_name", f"{site!r}/{device!r} is not encodable as UTF-8")
    for channel in [c for c in values if unencodable(c)]:
        del values[channel]
        rejected.append((channel, "bad_name"))


def name_parts(channel_name: str, name: str) -> tuple[str, str]:
    """``channel_name`` around ``{field}`` with ``{name}`` filled: (before, after)."""
    before, _, after = channel_name.replace("{name}", name).partition("{field}")
    return before, after


def ident(raw: object, what: str) -> str:
    """A site or device name from a payload: non-empty text (or an integer) without '/'."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw or "/" in raw:
        raise PayloadError("no_device", f"{what} {raw!r:.60} is not a usable name")
    return raw


# -- flat_json -------------------------------------------------------------------------------


def _get(obj: Any, path: str) -> Any:
    if not path:
        return obj
    if "." not in path:  # the common case: one key
        return obj.get(path, _MISSING) if isinstance(obj, dict) else _MISSING
    for part in path.split("."):
        if not isinstance(obj, dict):
            return _MISSING
        obj = obj.get(part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


_SKIPS: dict[int, tuple[InputConfig, frozenset[str]]] = {}


def _skip(c: InputConfig) -> frozenset[str]:
    """Keys of a record that are no channels: ``exclude``, and on the top level the paths' keys."""
    hit = _SKIPS.get(id(c))
    if hit is not None and hit[0] is c:
        return hit[1]
    skip = set(c.exclude)
    if not c.values_path:  # the top level: its time, name, site and device are no channels
        skip.update(p.split(".")[0] for p in (c.time_path, c.name_path, c.site_key, c.device_key))
    if len(_SKIPS) > 64:
        _SKIPS.clear()
    _SKIPS[id(c)] = (c, frozenset(skip))
    return _SKIPS[id(c)][1]


def _flat_json(
    c: InputConfig,
    fields: dict[str, str],
    per_channel: bool,
    payload: bytes,
    received_ms: int,
    *,
    limits: Limits,
    default_site: str,
) -> tuple[Reading, ...]:
    data, lenient = loads(payload)
    records = _get(data, c.records_path) if c.records_path and isinstance(data, dict) else data
    if records is _MISSING:
        records = data
    if not isinstance(records, list):
        records = [records]
    elif not records:
        raise PayloadError("bad_shape", "an empty list of records")
    site = fields.get("site", default_site)
    batch = Batch()
    for rec in records:
        _json_record(c, fields, site, rec, per_channel, received_ms, batch)
    return batch.readings(received_ms, limits, lenient=lenient)


def _json_record(  # noqa: PLR0917 - the per-record hot path: positional on purpose
    c: InputConfig,
    fields: dict[str, str],
    site: str,
    rec: Any,
    per_channel: bool,
    received_ms: int,
    batch: Batch,
) -> None:
    bare = per_channel and not isinstance(rec, dict | list)  # a number, stamped on arrival
    if bare:
        ts_ms = received_ms
    elif not isinstance(rec, dict):
        raise PayloadError("bad_shape", "expected a JSON object per record")
    elif c.time_path:
        raw_ts = _get(rec, c.time_path)
        if raw_ts is _MISSING:
            raise PayloadError("bad_ts", f"missing {c.time_path!r}")
        ts_ms = stamp(raw_ts, c.time_unit)
    else:
        ts_ms = received_ms
    if c.site_key:
        site = ident(_get(rec, c.site_key), f"site {c.site_key!r}")
    if c.device_key:
        device = ident(_get(rec, c.device_key), f"device {c.device_key!r}")
    else:
        device = fields["device"]
    values, rejected = batch.group(site, device, ts_ms)
    if per_channel:
        channel = fields["channel"]
        raw = rec if bare else _get(rec, c.value_path)
        if raw is _MISSING:
            raise PayloadError("bad_shape", f"missing {c.value_path!r} in the channel object")
        v = number(channel, raw, rejected)
        if v is not None:
            values[channel] = v
        return
    obj = _get(rec, c.values_path)
    if not isinstance(obj, dict) or not obj:
        where = repr(c.values_path) if c.values_path else "the object"
        raise PayloadError("bad_shape", f"{where} must be a non-empty object of channels")
    skip = _skip(c)
    if c.channel_name == "{field}":
        before = after = ""
    else:
        name = _get(rec, c.name_path) if c.name_path else ""
        before, after = name_parts(c.channel_name, name if isinstance(name, str) else "")
    for key, raw in obj.items():
        if key in skip:
            continue
        channel = f"{before}{key}{after}" if before or after else key
        v = number(channel, raw, rejected)
        if v is not None:
            values[channel] = v
