"""Seeded hostile inputs for the end-to-end fuzz tests (``test_*_e2e_fuzz.py``).

An MQTT input carries the outcome it must have: ``reasons`` is the set of dead-letter reasons
allowed for it, ``frozenset()`` meaning "no dead letter" (a valid tick, or a tick of values all
reported as not measured). Inputs are unique (by their bytes), so each of the agent's dead
letters names exactly one input through the sha256 of its raw payload. Kafka inputs carry their
category; ``test_sink_e2e_fuzz`` says which outcomes each category allows.

Loaded with ``importlib`` by ``tests/fuzz/conftest.py`` (tests are not a package); pure, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DECODE_REASONS",
    "LATE_OK",
    "KafkaInput",
    "MqttInput",
    "agent_inputs",
    "scored_body",
    "sink_inputs",
]

DECODE_REASONS = frozenset(
    {"not_utf8", "not_json", "bad_shape", "bad_ts", "ts_future", "ts_past", "bad_value"}
    | {"non_finite", "oversized", "unknown_device", "unknown_channel"}
)
HUGE_MIN, HUGE_MAX = 65_537, 262_144  # over the agent's max_payload_bytes, far under Kafka's 1 MB
SURROGATE_BYTES = b"\xed\xa0\x80"  # U+D800 encoded as if it were a character: invalid UTF-8


@dataclass(frozen=True)
class MqttInput:
    category: str
    device: str  # topic levels below the prefix: "site/device"
    payload: bytes
    reasons: frozenset[str]  # allowed dead-letter reasons; empty: no dead letter at all
    ts_ms: int | None = None  # set for valid ticks: the tick that must be observed
    values: dict[str, float] | None = None

    @property
    def may_be_late(self) -> bool:
        """Some of its values reach the aligner, so a second dead letter ``too_late`` is right
        when the agent's wall clock closed that tick first: a hostile device's accepted
        readings are sparse, so its event time can fall behind the wall clock."""
        return self.category in LATE_OK

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True)
class KafkaInput:
    category: str
    value: bytes | None  # None: a tombstone
    key: tuple[str, str, int] | None = None  # (site, device, ts_ms) of a valid tick


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


class _Agent:
    """One generator per category; each returns (device, payload, allowed reasons)."""

    def __init__(self, rng: random.Random, channels: tuple[str, ...], t0_ms: int) -> None:
        self.rng, self.channels = rng, channels
        self.hostile_ts = [t0_ms] * 4  # per hostile device, one tick further each time:
        self._k = 0  # an accepted-shaped hostile message is never too_late

    def pick_device(self) -> None:
        """Choose the hostile device of the next input (before its generator runs)."""
        self._k = self.rng.randrange(4)

    def _dev(self) -> str:
        return f"lab/hostile-{self._k}"

    def _next_ts(self) -> int:
        self.hostile_ts[self._k] += 1000
        return self.hostile_ts[self._k]

    def _good_values(self, k: int | None = None) -> dict[str, float]:
        pick = self.channels if k is None else self.rng.sample(self.channels, k)
        return {c: round(self.rng.uniform(-1e3, 1e3), 6) for c in pick}

    def _junk(self, n: int) -> bytes:
        return bytes(self.rng.randrange(256) for _ in range(n))

    def binary(self) -> tuple[str, bytes, frozenset[str]]:
        # a continuation byte first: never valid UTF-8
        head = bytes([self.rng.randrange(0x80, 0xC0)])
        return self._dev(), head + self._junk(self.rng.randrange(0, 300)), frozenset({"not_utf8"})

    def garbage(self) -> tuple[str, bytes, frozenset[str]]:
        allowed = frozenset({"not_utf8", "not_json", "bad_shape"})
        return self._dev(), self._junk(self.rng.randrange(1, 300)), allowed

    def surrogate_bytes(self) -> tuple[str, bytes, frozenset[str]]:
        body = _dumps({"ts": self._next_ts(), "values": self._good_values()})
        cut = self.rng.randrange(len(body))
        return self._dev(), body[:cut] + SURROGATE_BYTES + body[cut:], frozenset({"not_utf8"})

    def surrogate_escapes(self) -> tuple[str, bytes, frozenset[str]]:
        """Lone surrogates written as JSON escapes, in values and timestamps (not in names)."""
        sur = self.rng.choice(["\\ud800", "\\udfff", "\\udbff\\u0041", "\\ud83d"])
        if self.rng.random() < 0.5:
            vals = ", ".join(f'"{c}": "{sur}"' for c in self.channels)
            text = f'{{"ts": {self._next_ts()}, "values": {{{vals}}}}}'
            return self._dev(), text.encode(), frozenset({"bad_value"})
        text = f'{{"ts": "{sur}", "values": {json.dumps(self._good_values())}}}'
        return self._dev(), text.encode(), frozenset({"bad_ts"})

    def not_json(self) -> tuple[str, bytes, frozenset[str]]:
        body = _dumps({"ts": self._next_ts(), "values": self._good_values()})
        choice = self.rng.randrange(3)
        if choice == 0:
            text = body[: self.rng.randrange(1, len(body) - 1)]  # truncated
        elif choice == 1:
            text = body.replace(b'"', b"'")  # single quotes
        else:
            alphabet = "{}[]:,\"'abc019 -+.eE\\ntrufalsn"
            text = "".join(self.rng.choice(alphabet) for _ in range(self.rng.randrange(1, 80)))
            text = text.encode()  # type: ignore[assignment]
        return self._dev(), bytes(text), frozenset({"not_json", "bad_shape", "bad_ts", "bad_value"})

    def deep(self) -> tuple[str, bytes, frozenset[str]]:
        depth = self.rng.randrange(1_100, 30_000)
        kind = self.rng.randrange(4)
        if kind == 0:
            text = "[" * depth + "]" * depth
        elif kind == 1:
            text = '{"a":' * min(depth, 10_000) + "1" + "}" * min(depth, 10_000)
        elif kind == 2:
            text = "[" * depth  # never closed
        else:
            inner = "[" * depth + "1" + "]" * depth
            text = f'{{"ts": {self._next_ts()}, "values": {{"{self.channels[0]}": {inner}}}}}'
        return self._dev(), text.encode(), frozenset({"not_json"})

    def shallow_nest(self) -> tuple[str, bytes, frozenset[str]]:
        depth = self.rng.randrange(2, 200)
        nested: object = 1.0
        for _ in range(depth):
            nested = [nested]
        vals = {c: nested for c in self.channels}
        body = _dumps({"ts": self._next_ts(), "values": vals})
        return self._dev(), body, frozenset({"bad_value"})

    def wrong_types(self) -> tuple[str, bytes, frozenset[str]]:
        odd: list[object] = [None, True, False, [], {}, "x", 1, 1.5, [1, 2], {"a": 1}, ""]
        kind = self.rng.randrange(4)
        if kind == 0:  # not an object at all
            top = self.rng.choice([v for v in odd if not isinstance(v, dict)] + [[{"ts": 1}]])
            return self._dev(), _dumps(top), frozenset({"bad_shape"})
        if kind == 1:  # values of the wrong type, or empty
            vals = self.rng.choice([None, [], {}, "values", 3, [1.0, 2.0], True])
            body = _dumps({"ts": self._next_ts(), "values": vals})
            return self._dev(), body, frozenset({"bad_shape"})
        if kind == 2:  # ts of the wrong type, or missing
            ts = self.rng.choice([None, True, [], {}, [1700000000], {"s": 1}, "yesterday", ""])
            body = {"values": self._good_values()}
            if self.rng.random() < 0.9:
                body["ts"] = ts  # type: ignore[assignment]
            return self._dev(), _dumps(body), frozenset({"bad_ts"})
        bad = [v for v in odd if not isinstance(v, int | float) or isinstance(v, bool)]
        vals = {c: self.rng.choice([v for v in bad if v is not None]) for c in self.channels}
        body = _dumps({"ts": self._next_ts(), "values": vals})
        return self._dev(), body, frozenset({"bad_value"})

    def non_finite(self) -> tuple[str, bytes, frozenset[str]]:
        lit = self.rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "9" * 400])
        vals = self._good_values(self.rng.randrange(0, len(self.channels)))
        body = ", ".join(
            [f'"{c}": {v!r}' for c, v in vals.items()]
            + [f'"{c}": {lit}' for c in self.channels if c not in vals]
        )
        text = f'{{"ts": {self._next_ts()}, "values": {{{body}}}}}'
        return self._dev(), text.encode(), frozenset({"non_finite"})

    def extreme_ts(self) -> tuple[str, bytes, frozenset[str]]:
        cases: list[tuple[str, frozenset[str]]] = [
            ("1e400", frozenset({"bad_ts"})),
            ("-1e400", frozenset({"bad_ts"})),
            ("9" * 400, frozenset({"bad_ts"})),
            ("NaN", frozenset({"bad_ts"})),
            ("Infinity", frozenset({"bad_ts"})),
            ("0", frozenset({"ts_past"})),
            ("-1", frozenset({"ts_past"})),
            ("-99999999999999999", frozenset({"ts_past"})),
            ("1e300", frozenset({"ts_future"})),
            ("9223372036854775807", frozenset({"ts_future"})),
            ("18446744073709551616", frozenset({"ts_future"})),
            ("4102444800000", frozenset({"ts_future"})),  # 2100, in ms
            ('"9999-12-31T23:59:59Z"', frozenset({"ts_future"})),
            ('"0001-01-01T00:00:00+00:00"', frozenset({"ts_past"})),
            ('"1969-07-20T20:17:40Z"', frozenset({"ts_past"})),
            ('"2026-01-01T00:00:00"', frozenset({"bad_ts"})),  # no zone
            ('"+99999-01-01T00:00:00Z"', frozenset({"bad_ts"})),
            ('"2026-02-30T00:00:00Z"', frozenset({"bad_ts"})),
        ]
        lit, allowed = self.rng.choice(cases)
        text = f'{{"ts": {lit}, "values": {json.dumps(self._good_values())}}}'
        return self._dev(), text.encode(), allowed

    def huge(self) -> tuple[str, bytes, frozenset[str]]:
        size = self.rng.randrange(HUGE_MIN, HUGE_MAX)
        head = _dumps({"ts": self._next_ts(), "values": self._good_values()})[:-1]
        pad = b', "pad": "' + b"x" * size + b'"}'
        return self._dev(), head + pad, frozenset({"oversized"})

    def unknown_device(self) -> tuple[str, bytes, frozenset[str]]:
        body = _dumps({"ts": self._next_ts(), "values": self._good_values()})
        dev = f"yard/stranger-{self.rng.randrange(10)}"
        return dev, body, frozenset({"unknown_device"})

    def unknown_channel(self) -> tuple[str, bytes, frozenset[str]]:
        vals = self._good_values(self.rng.randrange(0, 3))
        for i in range(self.rng.randrange(1, 4)):
            vals[f"no-such-{i}-{self.rng.randrange(10**6)}"] = 1.0
        body = _dumps({"ts": self._next_ts(), "values": vals})
        return self._dev(), body, frozenset({"unknown_channel"})

    def partial(self) -> tuple[str, bytes, frozenset[str]]:
        vals: dict[str, object] = dict(self._good_values(self.rng.randrange(1, len(self.channels))))
        missing = [c for c in self.channels if c not in vals]
        vals[self.rng.choice(missing)] = self.rng.choice(["high", True, [1], {"v": 1}])
        body = _dumps({"ts": self._next_ts(), "values": vals})
        return self._dev(), body, frozenset({"bad_value"})

    def not_measured(self) -> tuple[str, bytes, frozenset[str]]:
        """Every value null: a tick of values "not measured", consumed without a dead letter."""
        vals = {c: None for c in self.rng.sample(self.channels, self.rng.randrange(1, 4))}
        return self._dev(), _dumps({"ts": self._next_ts(), "values": vals}), frozenset()


LATE_OK = frozenset({"partial", "unknown_channel", "non_finite", "not_measured"})
AGENT_WEIGHTS = {
    "binary": 8, "garbage": 8, "surrogate_bytes": 6, "surrogate_escapes": 6, "not_json": 10,
    "deep": 3, "shallow_nest": 4, "wrong_types": 14, "non_finite": 10, "extreme_ts": 12,
    "huge": 1, "unknown_device": 5, "unknown_channel": 6, "partial": 6, "not_measured": 3,
}  # fmt: skip


def agent_inputs(
    seed: int,
    hostile: int,
    channels: tuple[str, ...],
    t0_ms: int,
    *,
    valid_every: int = 10,
    good_devices: int = 4,
) -> list[MqttInput]:
    """``hostile`` hostile payloads with a valid tick of ``good_devices`` devices after every
    ``valid_every`` of them, all payloads distinct; ticks are 1 s apart from ``t0_ms``."""
    rng = random.Random(seed)
    gen = _Agent(rng, channels, t0_ms)
    names = list(AGENT_WEIGHTS)
    makers: dict[str, Callable[[], tuple[str, bytes, frozenset[str]]]] = {
        n: getattr(gen, n) for n in names
    }
    weights = [AGENT_WEIGHTS[n] for n in names]
    seen: set[bytes] = set()
    out: list[MqttInput] = []
    good_ts = [t0_ms] * good_devices
    made = 0
    while made < hostile:
        category = rng.choices(names, weights)[0]
        gen.pick_device()
        device, payload, reasons = makers[category]()
        digest = hashlib.sha256(payload).digest()
        if digest in seen:
            continue
        seen.add(digest)
        out.append(MqttInput(category, device, payload, reasons))
        made += 1
        if made % valid_every == 0:
            k = (made // valid_every) % good_devices
            good_ts[k] += 1000
            vals = gen._good_values()
            body = _dumps({"ts": good_ts[k], "values": vals})
            out.append(MqttInput("valid", f"lab/good-{k}", body, frozenset(), good_ts[k], vals))
    return out


# -- the sink --------------------------------------------------------------------------------


def scored_body(site: str, device: str, ts_ms: int, values: dict[str, float]) -> dict[str, object]:
    """A valid scored-tick record as ``edge.schema.ScoredTick.to_dict`` writes it."""
    return {
        "schema": 1, "site": site, "device": device, "ts_ms": ts_ms,
        "values": values, "imputed": [], "sigma": {}, "score": 0.5, "smoothed": 0.4,
        "threshold": 2.5, "anomaly": False, "top_channels": [], "warmup": False,
        "model": "skab", "model_version": "1", "revision": 0, "received_ms": ts_ms + 20,
    }  # fmt: skip


class _Sink:
    """Hostile scored-topic records; each returns (value, allowed reasons or None = a point)."""

    def __init__(self, rng: random.Random, t0_ms: int) -> None:
        self.rng = rng
        self.ts = t0_ms

    def _next_ts(self) -> int:
        self.ts += 1000
        return self.ts

    def _body(self) -> dict[str, object]:
        vals = {f"c{i}": round(self.rng.uniform(-10, 10), 4) for i in range(3)}
        return scored_body("fz", f"hostile-{self.rng.randrange(4)}", self._next_ts(), vals)

    def binary(self) -> bytes:
        return bytes([self.rng.randrange(0x80, 0xC0)]) + bytes(
            self.rng.randrange(256) for _ in range(self.rng.randrange(0, 200))
        )

    def not_json(self) -> bytes:
        body = json.dumps(self._body()).encode()
        return body[: self.rng.randrange(1, len(body) - 1)]

    def surrogate_bytes(self) -> bytes:
        body = json.dumps(self._body()).encode()
        cut = self.rng.randrange(len(body))
        return body[:cut] + SURROGATE_BYTES + body[cut:]

    def not_object(self) -> bytes:
        return _dumps(self.rng.choice([[], [1, 2], "tick", 3, None, True, [self._body()]]))

    def bad_schema_version(self) -> bytes:
        body = self._body()
        body["schema"] = self.rng.choice([0, 2, "1", None, 1.5, [1], 10**30])
        return _dumps(body)

    def missing_field(self) -> bytes:
        body = self._body()
        del body[self.rng.choice(["site", "device", "ts_ms", "values", "imputed", "sigma",
                                  "score", "threshold", "anomaly", "top_channels", "model",
                                  "model_version"])]  # fmt: skip
        return _dumps(body)

    def wrong_types(self) -> bytes:
        body = self._body()
        field = self.rng.choice(["site", "device", "ts_ms", "values", "sigma", "score",
                                 "threshold", "revision", "received_ms", "imputed"])  # fmt: skip
        body[field] = self.rng.choice(
            [None, "", [], {"a": "b"}, "x", True, [1, 2], {"a": [1]}, 1.5]
            if field != "imputed"
            else [["nope"], 5, "c0x"]
        )
        if field in {"score", "received_ms"} and body[field] is None:
            body[field] = "null"  # None is allowed there
        return _dumps(body)

    def non_finite(self) -> bytes:
        lit = self.rng.choice(["NaN", "Infinity", "-Infinity", "1e400"])
        field = self.rng.choice(["values.c0", "sigma.c0", "threshold", "score", "ts_ms"])
        body = self._body()
        if field.startswith("sigma"):
            body["imputed"] = ["c0"]
        text = json.dumps(body)
        if "." in field:
            top, sub = field.split(".")
            text = text.replace(f'"{top}": {{', f'"{top}": {{"{sub}": {lit}, ', 1)
            text = text.replace(f'"{top}": {{"{sub}": {lit}, }}', f'"{top}": {{"{sub}": {lit}}}')
            if top == "values":  # drop the original c0 so the literal is the one read
                text = text.replace(f'"{sub}": {lit}, "c0": ', f'"{sub}": {lit}, "cX": ', 1)
        else:
            text = text.replace(f'"{field}": ', f'"{field}": {lit}, "{field}_orig": ', 1)
        return text.encode()

    def extreme_ts(self) -> bytes:
        body = self._body()
        text = json.dumps(body)
        lit = self.rng.choice(
            ["1e400", "9" * 400, "1e30", "-1e30", "9223372036854775807", "-9223372036854775808",
             "1.5", "9300000000000000", "-9300000000000000", "true", '"2026-01-01"']
        )  # fmt: skip
        return text.replace(f'"ts_ms": {body["ts_ms"]}', f'"ts_ms": {lit}', 1).encode()

    def deep(self) -> bytes:
        depth = self.rng.randrange(1_100, 50_000)
        if self.rng.random() < 0.5:
            return ("[" * depth + "]" * depth).encode()
        body = json.dumps(self._body())
        inner = "[" * depth + "1" + "]" * depth
        return body.replace('"values": {', f'"values": {{"deep": {inner}, ', 1).encode()

    def huge(self) -> bytes:
        body = self._body()
        body["values"] = {f"c{i}": float(i) for i in range(self.rng.randrange(2_000, 8_000))}
        if self.rng.random() < 0.5:
            body["model"] = "m" * self.rng.randrange(10_000, 200_000)
        return _dumps(body)

    def tombstone(self) -> None:
        return None


SINK_WEIGHTS = {
    "binary": 8, "not_json": 10, "not_object": 6,
    "bad_schema_version": 8, "missing_field": 12, "wrong_types": 16, "non_finite": 12,
    "extreme_ts": 3, "deep": 3, "huge": 1, "tombstone": 2,
}  # fmt: skip
# Raw surrogate bytes in a record reach the names through json.loads (it decodes bytes with
# surrogatepass): test_sink_e2e_fuzz tests them on their own until issue-16a lands.


def sink_inputs(seed: int, hostile: int, t0_ms: int, *, valid_every: int = 10) -> list[KafkaInput]:
    """``hostile`` hostile records with a valid tick (site ``fz``, devices ``good-*``) after
    every ``valid_every`` of them; every record's tick time is distinct."""
    rng = random.Random(seed)
    gen = _Sink(rng, t0_ms)
    names = list(SINK_WEIGHTS)
    weights = [SINK_WEIGHTS[n] for n in names]
    out: list[KafkaInput] = []
    seen: set[bytes] = set()
    made = 0
    while made < hostile:
        category = rng.choices(names, weights)[0]
        value = getattr(gen, category)()
        if value is not None:
            digest = hashlib.sha256(value).digest()
            if digest in seen:
                continue
            seen.add(digest)
        out.append(KafkaInput(category, value))
        made += 1
        if made % valid_every == 0:
            dev = f"good-{(made // valid_every) % 4}"
            ts = gen._next_ts()
            vals = {f"c{i}": round(rng.uniform(-10, 10), 4) for i in range(3)}
            body = _dumps(scored_body("fz", dev, ts, vals))
            out.append(KafkaInput("valid", body, ("fz", dev, ts)))
    return out
