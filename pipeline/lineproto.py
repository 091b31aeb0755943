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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from edge.schema import SCHEMA_VERSION, ScoredTick
from pipeline.errors import PipelineError

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
    "LineProtocolError",
    "Point",
    "parse_line",
]


class LineProtocolError(PipelineError):
    """A tick cannot be expressed as line protocol (a name InfluxDB cannot hold)."""


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


def _string_field(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _imputed_frac(n_channels: int, imputed: Sequence[str]) -> str:
    if not n_channels:
        return "imputed_frac=0.0"
    return f"imputed_frac={len(set(imputed)) / n_channels!r}"


class Encoded(NamedTuple):
    """A tick's line protocol and the identity the sink needs for its revision check.

    (A named tuple rather than a frozen dataclass: one is built per record on the hot path.)
    """

    lines: bytes
    site: str
    device: str
    ts_ms: int
    revision: int

    @property
    def points(self) -> int:
        return self.lines.count(b"\n")


_NUM = frozenset({float, int})
_NUM_OR_NONE = frozenset({float, int, type(None)})
_FLOAT = frozenset({float})
_STR = frozenset({str})

_json_loads: Callable[[bytes], Any] = json.loads
try:  # orjson parses a record ~3x faster; the standard library is the fallback
    import orjson

    _json_loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the install
    pass


def _is_num(v: object) -> bool:
    return type(v) is float or type(v) is int


def _is_str_list(v: object) -> bool:
    return type(v) is list and _STR.issuperset(map(type, v))


class LineEncoder:
    """Formats ticks as line protocol; caches escaped names and templates, one per sink.

    :meth:`encode` takes a decoded :class:`ScoredTick`. :meth:`encode_json` takes the raw
    record and is the sink's fast path: it formats straight from the JSON object when every
    field has exactly the type ``ScoredTick.to_dict`` writes, and otherwise returns None so the
    caller decodes with ``ScoredTick.decode`` (which accepts or rejects the record with the
    reason). Both paths produce identical bytes for the same tick.
    """

    def __init__(
        self, readings: str = READINGS, anomalies: str = ANOMALIES, max_cache: int = 100_000
    ) -> None:
        _check_name(readings, "measurement")
        _check_name(anomalies, "measurement")
        self._readings = readings.replace(",", r"\,").replace(" ", r"\ ")
        self._anomalies = anomalies.replace(",", r"\,").replace(" ", r"\ ")
        self._max_cache = max_cache
        self._series: dict[tuple[str, str], str] = {}
        self._channels: dict[str, tuple[str, str, str]] = {}
        self._templates: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        self._fixed: dict[tuple[bool, int, str, bool, str], tuple[str, str]] = {}

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self._max_cache:
            cache.clear()
        cache[key] = value

    def _series_tags(self, site: str, device: str) -> str:
        tags = self._series.get((site, device))
        if tags is None:
            _check_name(site, "site")
            _check_name(device, "device")
            tags = f",site={_escape_key(site)},device={_escape_key(device)} "
            self._remember(self._series, (site, device), tags)
        return tags

    def _channel_keys(self, name: str) -> tuple[str, str, str]:
        keys = self._channels.get(name)
        if keys is None:
            _check_name(name, "channel")
            if name in RESERVED_FIELDS or name == "time":
                raise LineProtocolError(
                    f"channel {name!r} collides with a reserved field of {READINGS!r}; "
                    "rename the channel in the agent config"
                )
            esc = _escape_key(name)
            keys = (f"{esc}=", f"{esc}{IMPUTED_SUFFIX}=", f"{esc}{SIGMA_SUFFIX}=")
            self._remember(self._channels, name, keys)
        return keys

    def _template(self, names: tuple[str, ...], imputed: tuple[str, ...]) -> str:
        """``%r`` slots for every channel value, in order, with the imputed flags."""
        key = (names, imputed)
        tpl = self._templates.get(key)
        if tpl is None:
            parts = []
            for name in names:
                k_value, k_imputed, _ = self._channel_keys(name)
                flag = "true" if name in imputed else "false"
                parts.append(f"{k_value.replace('%', '%%')}%r,{k_imputed.replace('%', '%%')}{flag}")
            tpl = ",".join(parts) + "," + _imputed_frac(len(names), imputed)
            self._remember(self._templates, key, tpl)
        return tpl

    def encode(self, tick: ScoredTick) -> bytes:
        """The tick's line(s), newline-terminated; raise LineProtocolError if impossible."""
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

        Raise LineProtocolError when the record is a valid tick InfluxDB cannot hold.
        """
        try:
            d = _json_loads(raw)
        except ValueError:  # not JSON, not UTF-8, NaN tokens: decode() has the last word
            return None
        if type(d) is not dict:
            return None
        get: Callable[..., Any] = d.get
        schema, site, device, ts = get("schema"), get("site"), get("device"), get("ts_ms")
        values, imputed, sigma = get("values"), get("imputed"), get("sigma")
        score, smoothed, threshold = get("score"), get("smoothed"), get("threshold")
        anomaly, top, model, version = (
            get("anomaly"),
            get("top_channels"),
            get("model"),
            get("model_version"),
        )
        revision, warmup, received = get("revision", 0), get("warmup", False), get("received_ms")
        if not (
            type(schema) is int
            and schema == SCHEMA_VERSION
            and type(site) is str
            and site
            and type(device) is str
            and device
            and type(ts) is int
            and type(values) is dict
            and _NUM_OR_NONE.issuperset(map(type, values.values()))
            and _is_str_list(imputed)
            and (not imputed or values.keys() >= set(imputed))
            and type(sigma) is dict
            and _NUM.issuperset(map(type, sigma.values()))
            and (score is None or _is_num(score))
            and (smoothed is None or _is_num(smoothed))
            and _is_num(threshold)
            and type(anomaly) is bool
            and _is_str_list(top)
            and type(model) is str
            and type(version) is str
            and type(revision) is int
            and type(warmup) is bool
            and (received is None or type(received) is int)
            and "score" in d
        ):
            return None
        lines = self._format(
            site=site,
            device=device,
            ts_ms=ts,
            values=values,
            imputed=imputed,
            sigma=sigma,
            score=score,
            smoothed=smoothed,
            threshold=threshold,
            anomaly=anomaly,
            revision=revision,
            model=model,
            model_version=version,
            warmup=warmup,
            top_channels=top,
        )
        return Encoded(lines, site, device, ts, revision)

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
    ) -> bytes:
        tags = self._series.get((site, device)) or self._series_tags(site, device)
        vals = tuple(values.values())
        if vals and _FLOAT.issuperset(map(type, vals)) and math.isfinite(sum(vals)):  # type: ignore[arg-type]
            body = self._template(tuple(values), tuple(imputed)) % vals
        else:
            parts = []
            for name, value in values.items():
                k_value, k_imputed, _ = self._channel_keys(name)
                if value is not None and math.isfinite(value):
                    parts.append(k_value + repr(float(value)))
                parts.append(k_imputed + ("true" if name in imputed else "false"))
            parts.append(_imputed_frac(len(values), imputed))
            body = ",".join(parts)
        for name in imputed:
            s = sigma.get(name)
            if s is not None and math.isfinite(s):
                body += f",{self._channel_keys(name)[2]}{float(s)!r}"
        shared = ""
        if score is not None and math.isfinite(score):
            shared = f"score={float(score)!r},"
        if smoothed is not None and math.isfinite(smoothed):
            shared += f"smoothed={float(smoothed)!r},"
        if math.isfinite(threshold):
            shared += f"threshold={float(threshold)!r},"
        key = (anomaly, revision, model_version, warmup, model)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = (
                f"anomaly={'true' if anomaly else 'false'},revision={int(revision)}i,"
                f"model_version={_string_field(model_version)}",
                f",warmup={'true' if warmup else 'false'},model={_string_field(model)}",
            )
            self._remember(self._fixed, key, fixed)
        shared += fixed[0]
        ts = f" {int(ts_ms)}\n"
        line = f"{self._readings}{tags}{body},{shared}{fixed[1]}{ts}"
        if not (anomaly or revision > 0):
            return line.encode()
        top = _string_field(",".join(top_channels))
        alarm = f"active={'true' if anomaly else 'false'},{shared},top_channels={top}"
        return (line + self._anomalies + tags + alarm + ts).encode()


@dataclass(frozen=True)
class Point:
    """One parsed line: measurement, tags, typed fields, time as written (ms here)."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | int | bool | str]
    time: int


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i, in_str = [], [], 0, False
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == '"':
            in_str = not in_str
        if ch == sep and not in_str:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return text.replace(r"\,", ",").replace(r"\=", "=").replace(r"\ ", " ")


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
    """Parse one line of line protocol (with timestamp); raise LineProtocolError if malformed."""
    try:
        head, fields_text, ts = _split_unescaped(line.rstrip("\n"), " ")
        series = _split_unescaped(head, ",")
        tags = {}
        for pair in series[1:]:
            key, value = _split_unescaped(pair, "=")
            tags[_unescape(key)] = _unescape(value)
        fields: dict[str, float | int | bool | str] = {}
        for pair in _split_unescaped(fields_text, ","):
            key, value = _split_unescaped(pair, "=")
            fields[_unescape(key)] = _field_value(value)
        return Point(series[0].replace(r"\,", ",").replace(r"\ ", " "), tags, fields, int(ts))
    except ValueError as exc:
        raise LineProtocolError(f"malformed line {line[:200]!r}: {exc}") from exc
