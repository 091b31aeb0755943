"""InfluxDB line protocol payloads -> readings (the ``influx_line`` input format).

One line per point, as Telegraf's ``influx`` serializer writes it::

    measurement[,tag=value...] field=value[,field=value...] [timestamp]

Backslash escapes commas, spaces and ``=`` in names; string field values are double-quoted.
Floats (``1.5``, ``1e3``) and integers (``7i``, ``7u``) are channel values; strings and booleans
are rejected per channel (``bad_value``, or listed in ``exclude`` to be ignored), NaN/Inf as
``non_finite``. The timestamp is read in ``time_unit`` (``auto``: by magnitude, so Telegraf's
nanoseconds work as they are); without one, the arrival time. The device is the topic's
``{device}`` or the tag named by ``device_key`` (``site_key`` likewise for the site); channels
are named by ``channel_name`` (``{field}``, optionally ``{name}`` = the measurement). Empty lines
and ``#`` comments are skipped; any malformed line refuses the message as ``bad_line``.
"""

from __future__ import annotations

import math
import re

from edge.config import InputConfig
from edge.decode import Limits, Reading
from edge.errors import PayloadError
from edge.formats import Batch, ident, name_parts, stamp

__all__ = ["decode_line_protocol", "parse_line"]

_UNESCAPE = re.compile(r"\\(.)")
_BOOLS = {"t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"}

Point = tuple[str, dict[str, str], list[tuple[str, str]], str]


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


def _split(text: str, sep: str, *, quotes: bool = False) -> list[str]:
    """``text`` cut at each ``sep`` not escaped by a backslash (nor, with quotes, quoted)."""
    parts: list[str] = []
    start = 0
    i = 0
    quoted = False
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if quotes and ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise PayloadError("bad_line", f"unterminated string in {text[:80]!r}")
    parts.append(text[start:])
    return parts


def _pair(item: str, line: str) -> tuple[str, str]:
    if "\\" in item or '"' in item:
        key, *rest = _split(item, "=", quotes=True)
        value = "=".join(rest)
    else:
        key, sep, value = item.partition("=")
        rest = [value] if sep else []
    if not rest or not key or not value:
        raise PayloadError("bad_line", f"{item[:60]!r} is not key=value in {line[:80]!r}")
    return _unescape(key), value


def parse_line(line: str) -> Point:
    """(measurement, tags, [(field, raw value)], raw timestamp or "") of one line."""
    if "\\" not in line and '"' not in line:
        sections = line.split(" ")
    else:
        sections = _split(line, " ", quotes=True)
    if len(sections) not in (2, 3) or not all(sections):
        raise PayloadError("bad_line", f"expected 'measurement,tags fields [time]': {line[:80]!r}")
    head = _split(sections[0], ",") if "\\" in sections[0] else sections[0].split(",")
    measurement = _unescape(head[0])
    if not measurement:
        raise PayloadError("bad_line", f"no measurement in {line[:80]!r}")
    tags = dict(_pair(t, line) for t in head[1:])
    body = sections[1]
    items = _split(body, ",", quotes=True) if "\\" in body or '"' in body else body.split(",")
    fields = [_pair(f, line) for f in items]
    return (
        measurement,
        {k: _unescape(v) for k, v in tags.items()},
        fields,
        (sections[2] if len(sections) == 3 else ""),
    )


def _value(channel: str, raw: str, rejected: list[tuple[str, str]]) -> float | None:
    v: float | None
    try:
        v = float(raw)  # the common case: a float field
    except ValueError:
        v = _other_value(raw)
        if v is None:
            rejected.append((channel, "bad_value"))
            return None
    if v - v != 0.0:  # NaN or ±inf
        rejected.append((channel, "non_finite"))
        return None
    return v


def _other_value(raw: str) -> float | None:
    """An integer field (``7i``, ``7u``) as a float; None for a string or boolean field."""
    digits = raw[:-1].lstrip("-")
    if raw[-1] in "iu" and digits.isascii() and digits.isdigit():
        try:
            return float(int(raw[:-1]))
        except (OverflowError, ValueError):  # beyond float range, or too many digits to read
            return math.inf
    if raw[0] == '"' or raw in _BOOLS:
        return None
    raise PayloadError("bad_line", f"field value {raw[:40]!r} is not a number")


def decode_line_protocol(
    c: InputConfig,
    fields: dict[str, str],
    per_channel: bool,
    payload: bytes,
    received_ms: int,
    *,
    limits: Limits,
    default_site: str,
) -> tuple[Reading, ...]:
    """The readings of a line-protocol payload (one per line, merged by device and time)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("not_utf8", str(exc)) from exc
    skip = set(c.exclude)
    batch = Batch()
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line[0] == "#":
            continue
        measurement, tags, items, raw_ts = parse_line(line)
        if raw_ts:
            try:
                ts_int = int(raw_ts)
            except ValueError as exc:
                raise PayloadError(
                    "bad_ts", f"timestamp {raw_ts[:40]!r} is not an integer"
                ) from exc
            ts_ms = stamp(ts_int, c.time_unit)
        else:
            ts_ms = received_ms
        site = fields.get("site", default_site)
        if c.site_key:
            site = ident(tags.get(c.site_key), f"tag {c.site_key!r}")
        device = (
            ident(tags.get(c.device_key), f"tag {c.device_key!r}")
            if c.device_key
            else fields["device"]
        )
        before, after = name_parts(c.channel_name, measurement)
        values, rejected = batch.group(site, device, ts_ms)
        for key, raw in items:
            if key in skip:
                continue
            channel = f"{before}{key}{after}"
            v = _value(channel, raw, rejected)
            if v is not None:
                values[channel] = v
    if not batch.groups:
        raise PayloadError("bad_line", "no line in the payload")
    return batch.readings(received_ms, limits)
