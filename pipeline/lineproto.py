"""Scored ticks as InfluxDB line protocol (pure: values in, bytes out).

One :class:`~edge.schema.ScoredTick` becomes one point of measurement ``readings`` and, when it
raises or revises an alarm, one point of measurement ``anomalies``; both at the tick time in
milliseconds, so writing the same tick again (a replay, or a back-fill revision) overwrites the
same points instead of adding new ones. The schema is documented in ``docs/storage.md``.

``readings,site=<site>,device=<device>`` fields:

- ``<ch>`` (float): the value in original units, observed or imputed; absent when neither;
- ``<ch>_imputed`` (bool) for every channel of the tick; ``<ch>_sigma`` (float) when imputed;
- ``imputed_frac`` (float): imputed channels / channels of the tick;
- ``score``, ``smoothed`` (float, absent when nothing was observed), ``threshold`` (float),
  ``anomaly`` (bool), ``warmup`` (bool), ``revision`` (integer), ``model``, ``model_version``
  (string).

``anomalies,site=<site>,device=<device>`` is written for a tick whose ``anomaly`` is true and for
every revision > 0 (so a back-fill that clears an alarm overwrites it with ``active=false``):
``active`` (bool), ``score``, ``smoothed``, ``threshold`` (float), ``top_channels`` (string,
comma-separated), ``revision`` (integer), ``model_version`` (string).

:func:`parse_line` reads one line back (used by the in-memory fake and by tests).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from edge.errors import PayloadError, SchemaError
from edge.lineproto import parse_line as split_line
from edge.schema import ScoredTick, canonical_fields, unencodable
from pipeline.errors import LineProtocolError

READINGS = "readings"
ANOMALIES = "anomalies"
IMPUTED_SUFFIX = "_imputed"
SIGMA_SUFFIX = "_sigma"
RESERVED_FIELDS = frozenset(
    {
        "score",
        "smoothed",
        "threshold",
        "anomaly",
        "warmup",
        "revision",
        "model",
        "model_version",
        "imputed_frac",
    }
)
_FORBIDDEN_CHARS = frozenset(["\\", '"', "\x7f", *map(chr, range(32))])

__all__ = [
    "ANOMALIES",
    "IMPUTED_SUFFIX",
    "READINGS",
    "RESERVED_FIELDS",
    "SIGMA_SUFFIX",
    "Encoded",
    "LineEncoder",
    "Point",
    "format_floats",
    "parse_line",
]


def _escape_key(text: str) -> str:
    """Escape a tag key, tag value or field key: commas, equals signs and spaces."""
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _check_name(text: str, what: str) -> None:
    if not text:
        raise LineProtocolError(f"{what} is empty")
    bad = sorted(_FORBIDDEN_CHARS.intersection(text))
    if bad:
        raise LineProtocolError(
            f"{what} {text!r} contains {bad[0]!r}; names may not hold control characters, "
            "backslashes or double quotes"
        )
    if unencodable(text):
        raise LineProtocolError(f"{what} {text!r} is not encodable as UTF-8", "bad_name")


def _check_collisions(names: Iterable[str]) -> None:
    """Refuse channel ``x`` beside ``x_imputed`` / ``x_sigma``: one field would hold both."""
    known = set(names)
    for name in known:
        for suffix in (IMPUTED_SUFFIX, SIGMA_SUFFIX):
            if name.endswith(suffix) and name[: -len(suffix)] in known:
                raise LineProtocolError(
                    f"channel {name!r} collides with the {suffix} field of channel "
                    f"{name[: -len(suffix)]!r}; rename one of them",
                    "name_collision",
                )


def _string_field(text: str) -> bytes:
    try:
        return ('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"').encode()
    except UnicodeEncodeError as exc:
        raise LineProtocolError(f"string {text!r} is not encodable as UTF-8", "bad_name") from exc


def _tpl(text: bytes) -> bytes:
    """``text`` as a literal part of a ``%``-template."""
    return text.replace(b"%", b"%%")


_json_loads: Callable[[bytes], Any] = json.loads
_json_dumps: Callable[[Any], bytes] | None = None
try:  # orjson parses a record ~3x faster and formats floats ~9x faster than repr()
    import orjson

    _json_loads = orjson.loads
    _json_dumps = orjson.dumps
except ImportError:  # pragma: no cover - depends on the install
    pass


def format_floats(numbers: Sequence[float]) -> list[bytes]:
    """Finite floats as line-protocol float text: the shortest text that reads back exactly.

    (Ints come out as plain digits, as ``%d`` writes them.)

    orjson writes all of them in one C call (``0.00001``, ``1e+16``); without it, ``repr``
    (``1e-05``). Both read back as the same float, in Python and in InfluxDB.
    """
    if not numbers:
        return []
    if _json_dumps is not None:
        return _json_dumps(numbers)[1:-1].split(b",")
    return [repr(x).encode() for x in numbers]  # pragma: no cover - depends on the install


def _imputed_frac(n_channels: int, imputed: Sequence[str]) -> bytes:
    if not n_channels:
        return b"imputed_frac=0.0"
    return b"imputed_frac=" + format_floats([len(set(imputed)) / n_channels])[0]


class Encoded(NamedTuple):
    """A tick's line protocol, its point count and the identity the sink's revision check needs.

    (A named tuple rather than a frozen dataclass: one is built per record on the hot path.)
    """

    lines: bytes
    site: str
    device: str
    ts_ms: int
    revision: int
    points: int = 1


class LineEncoder:
    """Formats ticks as line protocol; caches escaped names and templates, one per sink.

    :meth:`encode` takes a decoded :class:`ScoredTick`. :meth:`encode_json` takes the raw
    record and is the sink's fast path: it formats straight from the JSON object when every
    field has exactly the type ``ScoredTick.to_dict`` writes, and otherwise returns None so the
    caller decodes with ``ScoredTick.decode`` (which accepts or rejects the record with the
    reason). Both paths produce identical bytes for the same tick.

    The fast path formats a tick's numbers in one call (:func:`format_floats`) and fills a
    ``%``-template of the whole line, cached per series, channel names, imputed channels and
    fixed fields (flags, revision, model): a few microseconds per record, a third of them
    JSON parsing.
    """

    def __init__(
        self, readings: str = READINGS, anomalies: str = ANOMALIES, max_cache: int = 100_000
    ) -> None:
        _check_name(readings, "measurement")
        _check_name(anomalies, "measurement")
        self._readings = readings.replace(",", r"\,").replace(" ", r"\ ").encode()
        self._anomalies = anomalies.replace(",", r"\,").replace(" ", r"\ ").encode()
        self._max_cache = max_cache
        self._heads: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._channels: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._lines: dict[tuple[Any, ...], bytes] = {}
        self._fixed: dict[tuple[bool, int, str, bool, str], tuple[bytes, bytes, bytes]] = {}

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self._max_cache:
            cache.clear()
        cache[key] = value

    def _series_heads(self, site: str, device: str) -> tuple[bytes, bytes]:
        """``readings,site=..,device=.. `` and the same for anomalies."""
        heads = self._heads.get((site, device))
        if heads is None:
            _check_name(site, "site")
            _check_name(device, "device")
            tags = f",site={_escape_key(site)},device={_escape_key(device)} ".encode()
            heads = (self._readings + tags, self._anomalies + tags)
            self._remember(self._heads, (site, device), heads)
        return heads

    def _channel_keys(self, name: str) -> tuple[bytes, bytes, bytes]:
        """``<ch>=``, ``<ch>_imputed=``, ``<ch>_sigma=``, escaped for a ``%``-template."""
        keys = self._channels.get(name)
        if keys is None:
            _check_name(name, "channel")
            if name in RESERVED_FIELDS or name == "time":
                raise LineProtocolError(
                    f"channel {name!r} collides with a reserved field of {READINGS!r}; "
                    "rename the channel in the agent config"
                )
            esc = _tpl(_escape_key(name).encode())
            keys = (
                esc + b"=",
                esc + IMPUTED_SUFFIX.encode() + b"=",
                esc + SIGMA_SUFFIX.encode() + b"=",
            )
            self._remember(self._channels, name, keys)
        return keys

    def _line_template(self, key: tuple[Any, ...]) -> bytes:
        """A whole ``readings`` line for ticks whose numbers are all present and finite.

        ``%s`` slots for every value, every imputed channel's sigma, score, smoothed and
        threshold (in that order), and the time. ``key``: site, device, channel names,
        imputed channels, anomaly, revision, model_version, warmup, model.
        """
        site, device, names, imputed, anomaly, revision, model_version, warmup, model = key
        _check_collisions(names)
        parts = []
        for name in names:
            k_value, k_imputed, _ = self._channel_keys(name)
            flag = b"true" if name in imputed else b"false"
            parts.append(k_value + b"%s," + k_imputed + flag)
        parts.append(_tpl(_imputed_frac(len(names), imputed)))
        parts.extend(self._channel_keys(name)[2] + b"%s" for name in imputed)
        head = _tpl(self._series_heads(site, device)[0])
        fixed = _tpl(self._fixed_fields(anomaly, revision, model_version, warmup, model)[2])
        tpl = head + b",".join(parts) + b",score=%s,smoothed=%s,threshold=%s," + fixed + b" %s\n"
        self._remember(self._lines, key, tpl)
        return tpl

    def _fixed_fields(
        self, anomaly: bool, revision: int, model_version: str, warmup: bool, model: str
    ) -> tuple[bytes, bytes, bytes]:
        """(``anomaly=..,revision=..i,model_version=".."``, ``,warmup=..,model=".."``, both)."""
        key = (anomaly, revision, model_version, warmup, model)
        fixed = self._fixed.get(key)
        if fixed is None:
            shared = b"anomaly=%s,revision=%di,model_version=%s" % (
                b"true" if anomaly else b"false",
                int(revision),
                _string_field(model_version),
            )
            tail = b",warmup=%s,model=%s" % (b"true" if warmup else b"false", _string_field(model))
            fixed = (shared, tail, shared + tail)
            self._remember(self._fixed, key, fixed)
        return fixed

    def encode(self, tick: ScoredTick) -> bytes:
        """The tick's line(s), newline-terminated; raise LineProtocolError if impossible."""
        return self._format_tick(tick)[0]

    def _format_tick(self, tick: ScoredTick) -> tuple[bytes, int]:
        return self._format(
            site=tick.site,
            device=tick.device,
            ts_ms=tick.ts_ms,
            values=tick.values,
            imputed=tick.imputed,
            sigma=tick.sigma,
            score=tick.score,
            smoothed=tick.smoothed,
            threshold=tick.threshold,
            anomaly=tick.anomaly,
            revision=tick.revision,
            model=tick.model,
            model_version=tick.model_version,
            warmup=tick.warmup,
            top_channels=tick.top_channels,
        )

    def encode_json(self, raw: bytes) -> Encoded | None:
        """Format a raw scored-tick record, or None when it needs ``ScoredTick.decode``.

        The record must be in the exact shape the agent writes (checked by the contract's own
        :func:`edge.schema.canonical_fields`); anything else returns None and takes the strict
        reader. Raise LineProtocolError when the record is a valid tick InfluxDB cannot hold.
        """
        try:
            d = _json_loads(raw)
        except ValueError:  # not JSON, not UTF-8, NaN tokens: decode() has the last word
            return None
        if type(d) is not dict:
            return None
        checked = canonical_fields(d)
        if checked is None:  # another shape (None values, no score, ...): the strict reader
            try:
                tick = ScoredTick.from_dict(d)
            except SchemaError:
                return None  # the caller's decode path dead-letters it, with the reason
            lines, points = self._format_tick(tick)
            return Encoded(lines, tick.site, tick.device, tick.ts_ms, tick.revision, points)
        fields, numbers = checked
        site, device, ts, values, imputed = fields[1], fields[2], fields[3], fields[4], fields[5]
        anomaly, top, revision = fields[10], fields[11], fields[14]
        key = (
            site,
            device,
            tuple(values),
            tuple(imputed),
            anomaly,
            revision,
            fields[13],  # model_version
            fields[15],  # warmup
            fields[12],  # model
        )
        tpl = self._lines.get(key)
        if tpl is None:
            tpl = self._line_template(key)
        numbers.append(ts)  # an int: written without a decimal point, as %d would
        text = _json_dumps(numbers)[1:-1].split(b",") if _json_dumps else format_floats(numbers)
        line = tpl % tuple(text)
        if not (anomaly or revision > 0):
            return Encoded(line, site, device, ts, revision, 1)
        shared = b"score=%s,smoothed=%s,threshold=%s," % (text[-4], text[-3], text[-2])
        fixed = self._fixed_fields(*key[4:])
        head = self._series_heads(site, device)[1]
        alarm = self._alarm(head, anomaly, shared + fixed[0], top, b" %s\n" % text[-1])
        return Encoded(line + alarm, site, device, ts, revision, 2)

    def _alarm(
        self, head: bytes, anomaly: bool, shared: bytes, top: Sequence[str], stamp: bytes
    ) -> bytes:
        active = b"active=true," if anomaly else b"active=false,"
        return head + active + shared + b",top_channels=" + _string_field(",".join(top)) + stamp

    def _format(
        self,
        *,
        site: str,
        device: str,
        ts_ms: int,
        values: Mapping[str, float | None],
        imputed: Sequence[str],
        sigma: Mapping[str, float],
        score: float | None,
        smoothed: float | None,
        threshold: float,
        anomaly: bool,
        revision: int,
        model: str,
        model_version: str,
        warmup: bool,
        top_channels: Sequence[str],
    ) -> tuple[bytes, int]:
        """Any tick: (lines, points). Non-finite and missing numbers are left out."""
        heads = self._series_heads(site, device)
        _check_collisions(values)
        parts: list[bytes] = []
        numbers: list[float] = []
        for name, value in values.items():
            k_value, k_imputed, _ = self._channel_keys(name)
            if value is not None and math.isfinite(value):
                parts.append(k_value + b"%s")
                numbers.append(float(value))
            parts.append(k_imputed + (b"true" if name in imputed else b"false"))
        parts.append(_tpl(_imputed_frac(len(values), imputed)))
        for name in imputed:
            s = sigma.get(name)
            if s is not None and math.isfinite(s):
                parts.append(self._channel_keys(name)[2] + b"%s")
                numbers.append(float(s))
        n_channel_numbers = len(numbers)
        shared_parts: list[bytes] = []
        for key, number in ((b"score=%s", score), (b"smoothed=%s", smoothed)):
            if number is not None and math.isfinite(number):
                shared_parts.append(key)
                numbers.append(float(number))
        if math.isfinite(threshold):
            shared_parts.append(b"threshold=%s")
            numbers.append(float(threshold))
        text = format_floats(numbers)
        body = b",".join(parts) % tuple(text[:n_channel_numbers])
        shared = b"".join(p + b"," for p in shared_parts) % tuple(text[n_channel_numbers:])
        fixed = self._fixed_fields(anomaly, revision, model_version, warmup, model)
        stamp = b" %d\n" % int(ts_ms)
        line = heads[0] + body + b"," + shared + fixed[0] + fixed[1] + stamp
        if not (anomaly or revision > 0):
            return line, 1
        return line + self._alarm(heads[1], anomaly, shared + fixed[0], top_channels, stamp), 2


@dataclass(frozen=True)
class Point:
    """One parsed line: measurement, tags, typed fields, time as written (ms here)."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | int | bool | str]
    time: int


def _field_value(raw: str) -> float | int | bool | str:
    if raw.startswith('"'):
        return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if raw in {"t", "T", "true", "True", "TRUE"}:
        return True
    if raw in {"f", "F", "false", "False", "FALSE"}:
        return False
    if raw.endswith("i"):
        return int(raw[:-1])
    return float(raw)


def parse_line(line: str) -> Point:
    """Parse one line of line protocol (with timestamp); raise LineProtocolError if malformed.

    The tokenizer is the agent's input parser (:func:`edge.lineproto.parse_line`); this adds
    typed field values and requires the timestamp InfluxDB writes always carry here.
    """
    try:
        measurement, tags, raw_fields, ts = split_line(line.rstrip("\n"))
        if not ts:
            raise ValueError("no timestamp")
        fields = {key: _field_value(value) for key, value in raw_fields}
        return Point(measurement, tags, fields, int(ts))
    except (PayloadError, ValueError) as exc:
        raise LineProtocolError(f"malformed line {line[:200]!r}: {exc}") from exc
