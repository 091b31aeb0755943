"""Versioned records the edge agent publishes, owned here and decoded by ``pipeline``.

``gapwatch.scored`` (key ``site/device``) carries :class:`ScoredTick` as UTF-8 JSON::

    {"schema": 1, "site": "lab", "device": "pump-3", "ts_ms": 1700000000000,
     "values": {"Pressure": 0.27, "Current": 1.9},   # original units, observed or imputed
     "imputed": ["Current"], "sigma": {"Current": 0.04},
     "score": 1.37, "smoothed": 1.10, "threshold": 2.5, "anomaly": false,
     "top_channels": ["Pressure"], "warmup": false,
     "model": "skab", "model_version": "20261125T120000", "revision": 0,
     "received_ms": 1700000000020}

``revision`` is 0 for the causal result emitted at once and 1 for the delayed back-fill of
the same tick (same ``ts_ms``), so storage keyed by tick time keeps the latest revision.

``gapwatch.deadletter`` carries :class:`DeadLetter`: the raw payload (text, or base64 when
it is not UTF-8), where it came from, and a stable ``reason``. The payload kept is at most
``max_raw_bytes`` (:data:`DEADLETTER_RAW_MAX_BYTES`, 16 KiB, by default) long, cut at a
character boundary; ``raw_len`` and ``raw_sha256`` always describe the *whole* payload, and
``raw_truncated`` says whether ``raw`` is only its beginning. So a dead letter stays far below
Kafka's record limit, whatever arrived (JSON escapes write a kept byte as at most 6, base64 as
4/3)::

    {"schema": 1, "reason": "oversized", "detail": "1500000 bytes > 65536",
     "source": "mqtt:sensors/lab/pump-3", "component": "agent", "received_ms": 1700000000020,
     "raw": "{\"ts\": ...", "raw_len": 1500000, "raw_sha256": "9f86...", "raw_truncated": true}

Names (site, device, channels, model) must be encodable as UTF-8: a lone surrogate such as
``"pump-\\ud800"`` is valid JSON but not a name, and :meth:`ScoredTick.decode` refuses it
(:class:`~edge.errors.SchemaError` whose text starts with ``bad_name``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.errors import SchemaError

SCHEMA_VERSION = 1
DEADLETTER_RAW_MAX_BYTES = 16 * 1024
SCORED_TOPIC = "gapwatch.scored"
DEADLETTER_TOPIC = "gapwatch.deadletter"

__all__ = [
    "DEADLETTER_RAW_MAX_BYTES",
    "DEADLETTER_TOPIC",
    "SCHEMA_VERSION",
    "SCORED_FIELDS",
    "SCORED_TOPIC",
    "DeadLetter",
    "ScoredTick",
    "canonical_fields",
    "encode_scored_dict",
    "unencodable",
]


# One encoder for every record: orjson (compact UTF-8, NaN written as null) when installed.
# What orjson refuses (a lone surrogate, e.g. in the topic a bad_name dead letter quotes) and
# installs without orjson go through the json module: every non-ASCII character escaped (so a
# surrogate becomes \\ud800), NaN written as null. Scored records never hold NaN (every float
# goes through _finite_or_none) nor a surrogate (decode and the agent refuse such names).
_ASCII = json.JSONEncoder(separators=(",", ":"))


def _null_nan(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _null_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_null_nan(v) for v in obj]
    return obj


def _encode_portable(obj: Any) -> bytes:
    return _ASCII.encode(_null_nan(obj)).encode("ascii")


try:
    import orjson

    def _encode(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj)
        except TypeError:  # "str is not valid UTF-8: surrogates not allowed"
            return _encode_portable(obj)

except ImportError:  # pragma: no cover - orjson is part of the edge extra
    _encode = _encode_portable


# The fields of a record as ScoredTick.to_dict writes them, and the types the agent writes:
# what canonical_fields takes without the strict reader's closer look.
SCORED_FIELDS = (
    "schema",
    "site",
    "device",
    "ts_ms",
    "values",
    "imputed",
    "sigma",
    "score",
    "smoothed",
    "threshold",
    "anomaly",
    "top_channels",
    "model",
    "model_version",
    "revision",
    "warmup",
    "received_ms",
)
_get_fields: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*SCORED_FIELDS)
_CANONICAL_TYPES = frozenset(
    (int, str, str, int, dict, list, dict, float, float, float, bool, list, str, str, int, bool, r)
    for r in (int, type(None))
)
_NUMBER = frozenset({float, int})
_FLOAT = frozenset({float})
_STR = frozenset({str})


def canonical_fields(d: dict[str, Any]) -> tuple[tuple[Any, ...], list[float]] | None:
    """A decoded record dict in exactly the shape the agent writes, checked cheaply.

    Returns its fields (in :data:`SCORED_FIELDS` order) and its numbers in line order
    (``values``, the ``sigma`` of each imputed channel, ``score``, ``smoothed``,
    ``threshold``), all finite floats; None for any other shape, which then needs
    :meth:`ScoredTick.decode`, the strict reader, to accept or refuse it. The sink's fast path
    (``pipeline.lineproto``) and the strict reader thus share one contract, here.
    """
    try:
        fields = _get_fields(d)
    except KeyError:
        return None
    if tuple(map(type, fields)) not in _CANONICAL_TYPES:
        return None
    schema, site, device, _, values, imputed, sigma, score, smoothed, threshold = fields[:10]
    if not (schema == SCHEMA_VERSION and site and device):
        return None
    if sigma and not _NUMBER.issuperset(map(type, sigma.values())):
        return None
    if imputed:
        if not (
            _STR.issuperset(map(type, imputed))
            and values.keys() >= set(imputed)
            and sigma.keys() >= set(imputed)
        ):
            return None
        numbers = [*values.values(), *[sigma[name] for name in imputed], score, smoothed]
    else:
        numbers = [*values.values(), score, smoothed]
    numbers.append(threshold)
    top = fields[11]
    if not (
        _FLOAT.issuperset(map(type, numbers))
        and math.isfinite(sum(numbers))
        and (not top or _STR.issuperset(map(type, top)))
    ):
        return None
    return fields, numbers


def encode_scored_dict(body: dict[str, Any]) -> bytes:
    """The wire bytes of a record dict shaped like :meth:`ScoredTick.to_dict` (same encoder).

    For producers that build that dict directly (``edge.records``), skipping the dataclass.
    """
    return _encode(body)


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class ScoredTick:
    """One device's tick after alignment, imputation and scoring."""

    site: str
    device: str
    ts_ms: int
    values: dict[str, float | None]
    imputed: tuple[str, ...]
    sigma: dict[str, float]
    score: float | None  # None when no entry of the tick was observed
    smoothed: float | None
    threshold: float
    anomaly: bool
    top_channels: tuple[str, ...]
    model: str
    model_version: str
    revision: int = 0
    warmup: bool = False
    received_ms: int | None = None
    schema: int = field(default=SCHEMA_VERSION)

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "site": self.site,
            "device": self.device,
            "ts_ms": int(self.ts_ms),
            "values": {k: _finite_or_none(v) for k, v in self.values.items()},
            "imputed": list(self.imputed),
            "sigma": {k: float(v) for k, v in self.sigma.items() if math.isfinite(v)},
            "score": _finite_or_none(self.score),
            "smoothed": _finite_or_none(self.smoothed),
            "threshold": float(self.threshold),
            "anomaly": bool(self.anomaly),
            "top_channels": list(self.top_channels),
            "model": self.model,
            "model_version": self.model_version,
            "revision": int(self.revision),
            "warmup": bool(self.warmup),
            "received_ms": None if self.received_ms is None else int(self.received_ms),
        }

    def encode(self) -> bytes:
        return _encode(self.to_dict())

    @classmethod
    def decode(cls, raw: bytes | str) -> ScoredTick:
        """Parse a record; raise SchemaError naming what is wrong."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise SchemaError(f"scored tick is not JSON: {exc}", "not_json") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> ScoredTick:
        """Build a tick from a decoded JSON value; raise SchemaError naming what is wrong."""
        if not isinstance(data, dict):
            raise SchemaError("scored tick is not a JSON object")
        version = data.get("schema")
        if version != SCHEMA_VERSION:
            raise SchemaError(f"unknown scored-tick schema {version!r}; this reader knows 1")
        try:
            values = {str(k): _finite(v, f"values.{k}") for k, v in data["values"].items()}
            tick = cls(
                site=_text(data["site"], "site"),
                device=_text(data["device"], "device"),
                ts_ms=_int(data["ts_ms"], "ts_ms"),
                values=values,
                imputed=tuple(str(c) for c in data["imputed"]),
                sigma={
                    str(k): _finite(v, f"sigma.{k}", none_ok=False)
                    for k, v in data["sigma"].items()
                },
                score=_finite(data["score"], "score"),
                smoothed=_finite(data.get("smoothed"), "smoothed"),
                threshold=_finite(data["threshold"], "threshold", none_ok=False),
                anomaly=bool(data["anomaly"]),
                top_channels=tuple(str(c) for c in data["top_channels"]),
                model=str(data["model"]),
                model_version=str(data["model_version"]),
                revision=_int(data.get("revision", 0), "revision"),
                warmup=bool(data.get("warmup", False)),
                received_ms=None
                if data.get("received_ms") is None
                else _int(data["received_ms"], "received_ms"),
            )
        except KeyError as exc:
            raise SchemaError(f"scored tick lacks field {exc.args[0]!r}") from exc
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise SchemaError(f"scored tick has a field of the wrong type: {exc}") from exc
        unknown = set(tick.imputed) - set(values)
        if unknown:
            raise SchemaError(f"imputed names channels without values: {sorted(unknown)}")
        _check_names(tick)
        return tick


def unencodable(text: str) -> bool:
    """True when ``text`` cannot be written as UTF-8: it holds a lone surrogate (``\\ud800``).

    JSON's ``\\uXXXX`` escapes can spell one, and Python's json reader accepts it, but no
    UTF-8 writer (Kafka key, line protocol, a log) can carry it.
    """
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_names(tick: ScoredTick) -> None:
    """Raise SchemaError (``bad_name: ...``) for a name that is not encodable as UTF-8."""
    named = {
        "site": (tick.site,),
        "device": (tick.device,),
        "model": (tick.model,),
        "model_version": (tick.model_version,),
        "values": tuple(tick.values),
        "imputed": tick.imputed,
        "sigma": tuple(tick.sigma),
        "top_channels": tick.top_channels,
    }
    for where, names in named.items():
        for name in names:
            if unencodable(name):
                raise SchemaError(
                    f"bad_name: {where} {name!r} is not encodable as UTF-8 (a lone surrogate)",
                    "bad_name",
                )


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _int(value: Any, name: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or value != int(value)
    ):
        raise SchemaError(f"{name} must be an integer, got {value!r:.40}")
    return int(value)


def _finite(value: Any, name: str, *, none_ok: bool = True) -> Any:
    """A finite float, or None where allowed; anything else is a SchemaError."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{name} must be a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError as exc:
        raise SchemaError(f"{name} is out of range") from exc
    if not math.isfinite(out):
        raise SchemaError(f"{name} must be finite, got {out}")
    return out


def _prefix(payload: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``payload``; a UTF-8 character cut in two is left out whole."""
    if len(payload) <= limit:
        return payload
    cut = payload[: max(0, limit)]
    try:
        cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.start >= len(cut) - 3:
            return cut[: exc.start]
    return cut


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, with (the beginning of) its raw bytes and the reason.

    Build one with :meth:`capture`, which keeps at most ``max_raw_bytes`` of the payload and
    records the whole payload's length and sha256. ``raw_len`` < 0 and ``raw_sha256`` ""
    (the direct constructor's defaults) mean "``raw`` is the whole payload": they are filled
    in from ``raw``.
    """

    reason: str  # stable label, e.g. "not_json", "unknown_device", "ts_future"
    detail: str
    source: str  # e.g. "mqtt:sensors/lab/pump-3" or "kafka:gapwatch.scored/2@1234"
    raw: bytes  # the payload, or its first max_raw_bytes when raw_truncated
    received_ms: int
    component: str = "agent"
    schema: int = SCHEMA_VERSION
    raw_len: int = -1  # length of the whole payload
    raw_sha256: str = ""  # hex sha256 of the whole payload

    def __post_init__(self) -> None:
        if self.raw_len < 0:
            object.__setattr__(self, "raw_len", len(self.raw))
        if not self.raw_sha256:
            object.__setattr__(self, "raw_sha256", hashlib.sha256(self.raw).hexdigest())

    @property
    def raw_truncated(self) -> bool:
        return self.raw_len > len(self.raw)

    @classmethod
    def capture(
        cls,
        reason: str,
        detail: str,
        source: str,
        payload: bytes,
        received_ms: int,
        *,
        component: str = "agent",
        max_raw_bytes: int = DEADLETTER_RAW_MAX_BYTES,
    ) -> DeadLetter:
        """A dead letter of ``payload`` keeping at most ``max_raw_bytes`` of it."""
        return cls(
            reason,
            detail,
            source,
            _prefix(payload, max_raw_bytes),
            received_ms,
            component,
            raw_len=len(payload),
            raw_sha256=hashlib.sha256(payload).hexdigest(),
        )

    def encode(self) -> bytes:
        try:
            text: str | None = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        body: dict[str, Any] = {
            "schema": self.schema,
            "reason": self.reason,
            "detail": self.detail,
            "source": self.source,
            "component": self.component,
            "received_ms": int(self.received_ms),
        }
        if text is not None:
            body["raw"] = text
        else:
            body["raw_b64"] = base64.b64encode(self.raw).decode("ascii")
        body["raw_len"] = self.raw_len
        body["raw_sha256"] = self.raw_sha256
        body["raw_truncated"] = self.raw_truncated
        return _encode(body)

    @classmethod
    def decode(cls, raw: bytes | str) -> DeadLetter:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise SchemaError("dead letter is not a JSON object")
            if not isinstance(data.get("raw", ""), str):
                raise SchemaError("dead letter raw must be a string")
            payload = (
                data["raw"].encode("utf-8")
                if "raw" in data
                else base64.b64decode(data["raw_b64"], validate=True)
            )
            sha = data.get("raw_sha256", "")
            if not isinstance(sha, str):
                raise SchemaError("dead letter raw_sha256 must be a string")
            return cls(
                reason=str(data["reason"]),
                detail=str(data["detail"]),
                source=str(data["source"]),
                raw=payload,
                received_ms=_int(data["received_ms"], "received_ms"),
                component=str(data.get("component", "agent")),
                schema=_int(data["schema"], "schema"),
                raw_len=_int(data.get("raw_len", -1), "raw_len"),
                raw_sha256=sha,
            )
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise SchemaError(f"dead letter does not decode: {type(exc).__name__}") from exc
