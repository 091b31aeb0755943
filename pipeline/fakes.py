"""In-memory test doubles of the pipeline's ports, for unit tests and demos.

They implement the same protocols as the real adapters and behave like them where it matters:

- :class:`FakeInflux` (``influx.InfluxPort``): InfluxDB's overwrite rule, scripted outages and
  400 "partial writes", and the few InfluxQL shapes ``pipeline`` issues;
- :class:`FakeRecordSource` (``sink.RecordSource``): partitions with offsets, commits recorded,
  scripted commit failures;
- :class:`FakeDeadLetters` (``sink.DeadLetterPort``), with scripted outages;
- :class:`FakeClock` (``edge.ports.Clock``): time moves only when the code under test waits.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from edge.schema import DeadLetter
from pipeline.errors import (
    CommitFailed,
    PointsRejected,
    StorageError,
    StorageUnavailable,
    TransportUnavailable,
)
from pipeline.influx import Series
from pipeline.lineproto import parse_line
from pipeline.sink import PartitionRecords, SourceRecord, TopicPartition

__all__ = ["FakeClock", "FakeDeadLetters", "FakeInflux", "FakeRecordSource"]

_SELECT_RE = re.compile(
    r'^SELECT (?P<cols>.+?) FROM "(?P<m>[^"]+)"(?: WHERE (?P<where>.+?))?'
    r'(?: GROUP BY "site", ?"device")?$'
)
_COND_RE = re.compile(
    r"^(?:time (?P<op>>=|<) (?P<ms>-?\d+)ms|\"(?P<tag>site|device)\" = '(?P<val>(?:[^'\\]|\\.)*)')$"
)
_SELECTOR_RE = re.compile(r'^(?P<fn>FIRST|LAST)\("(?P<field>[^"]+)"\)$')
_SHOW_FIELDS_RE = re.compile(r'^SHOW FIELD KEYS FROM "(?P<m>[^"]+)"$')


class FakeInflux:
    """In-memory InfluxDB for unit tests: same overwrite rules, scripted failures.

    Points with equal measurement, tags and time merge their fields, the later write winning,
    as in InfluxDB. ``outages`` makes the next writes raise :class:`StorageUnavailable`;
    ``reject`` marks lines InfluxDB would refuse: a write containing one stores the other lines
    and raises :class:`PointsRejected` (InfluxDB's "partial write").
    """

    def __init__(self, reject: Callable[[str], bool] | None = None) -> None:
        self.points: dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, Any]] = {}
        self.outages = 0
        self.reject = reject
        self.writes = 0
        self.failed_writes = 0
        self.closed = False

    def write(self, body: bytes) -> None:
        if self.outages > 0:
            self.outages -= 1
            self.failed_writes += 1
            raise StorageUnavailable("fake InfluxDB is down")
        self.writes += 1
        bad = []
        for line in body.decode().split("\n"):
            if not line:
                continue
            if self.reject is not None and self.reject(line):
                bad.append(line)
                continue
            p = parse_line(line)
            key = (p.measurement, tuple(sorted(p.tags.items())), p.time)
            self.points.setdefault(key, {}).update(p.fields)
        if bad:
            raise PointsRejected(f"partial write: {len(bad)} line(s) dropped: {bad[0][:100]}")

    def rows(self, measurement: str) -> list[tuple[dict[str, str], int, dict[str, Any]]]:
        """(tags, time, fields) of every stored point of ``measurement``, by time."""
        found = [(dict(k[1]), k[2], f) for k, f in self.points.items() if k[0] == measurement]
        return sorted(found, key=lambda r: (r[1], sorted(r[0].items())))

    def query(self, influxql: str) -> list[Series]:
        m = _SHOW_FIELDS_RE.match(influxql)
        if m:
            types: dict[str, str] = {}
            for _, _, fields in self.rows(m["m"]):
                for k, v in fields.items():
                    types[k] = {bool: "boolean", int: "integer", str: "string"}.get(
                        type(v), "float"
                    )
            return [
                Series(m["m"], ("fieldKey", "fieldType"), [[k, types[k]] for k in sorted(types)])
            ]
        m = _SELECT_RE.match(influxql)
        if m is None:
            raise StorageError(f"FakeInflux does not understand {influxql!r}")
        lo, hi, want = -(2**63), 2**63, {}
        for cond in (m["where"] or "").split(" AND ") if m["where"] else []:
            c = _COND_RE.match(cond)
            if c is None:
                raise StorageError(f"FakeInflux does not understand condition {cond!r}")
            if c["op"] == ">=":
                lo = int(c["ms"])
            elif c["op"] == "<":
                hi = int(c["ms"])
            else:
                want[c["tag"]] = re.sub(r"\\(.)", r"\1", c["val"])
        rows = [
            (tags, t, f)
            for tags, t, f in self.rows(m["m"])
            if lo <= t < hi and all(tags.get(k) == v for k, v in want.items())
        ]
        selector = _SELECTOR_RE.match(m["cols"])
        if selector is not None:
            name = selector["fn"].lower()
            hits = [(t, f[selector["field"]]) for _, t, f in rows if selector["field"] in f]
            if not hits:
                return []
            t, v = min(hits) if name == "first" else max(hits)
            return [Series(m["m"], ("time", name), [[t, v]])]
        cols = [c.strip().strip('"') for c in m["cols"].split(",")]
        groups: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
        for tags, t, fields in rows:
            if any(c in fields for c in cols):
                key = tuple(sorted(tags.items()))
                groups.setdefault(key, []).append([t, *[fields.get(c) for c in cols]])
        return [
            Series(m["m"], ("time", *cols), rows, dict(key)) for key, rows in sorted(groups.items())
        ]

    def close(self) -> None:
        self.closed = True


class FakeRecordSource:
    """Partitions of one topic filled by the test; ``poll`` hands records out in order."""

    def __init__(self, topic: str = "gapwatch.scored") -> None:
        self.topic = topic
        self._pending: deque[tuple[int, SourceRecord]] = deque()
        self._next_offset: dict[int, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.committed: dict[TopicPartition, int] = {}
        self.fail_commits = 0
        self.polls = 0
        self.on_empty: Callable[[], None] | None = None  # e.g. ``sink.request_stop``

    def add(self, value: bytes | None, partition: int = 0, key: bytes | None = None) -> int:
        """Append a record; return its offset."""
        offset = self._next_offset.get(partition, 0)
        self._next_offset[partition] = offset + 1
        self._pending.append((partition, SourceRecord(offset, key, value)))
        return offset

    def poll(self, timeout_s: float, max_records: int) -> list[PartitionRecords]:
        self.polls += 1
        if not self._pending:
            if self.on_empty is not None:
                self.on_empty()
            return []
        groups: dict[int, list[SourceRecord]] = {}
        for _ in range(min(max_records, len(self._pending))):
            partition, record = self._pending.popleft()
            groups.setdefault(partition, []).append(record)
        return [PartitionRecords(self.topic, p, recs) for p, recs in groups.items()]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            raise CommitFailed("fake: the group rebalanced")
        self.commits.append(dict(offsets))
        self.committed.update(offsets)


class FakeDeadLetters:
    """Collects dead letters; ``outages`` makes the next publishes fail."""

    def __init__(self) -> None:
        self.letters: list[tuple[DeadLetter, bytes | None]] = []
        self.outages = 0

    def publish(self, letters: list[tuple[DeadLetter, bytes | None]]) -> None:
        if self.outages > 0:
            self.outages -= 1
            raise TransportUnavailable("fake dead-letter topic is down")
        self.letters.extend(letters)


class FakeClock:
    """Monotonic and wall time that advance only when the code waits (or the test says so)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._wall = start
        self._mono = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time(self) -> float:
        with self._lock:
            return self._wall

    def now_ms(self) -> int:
        return round(self.time() * 1000)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._mono += seconds
            self._wall += seconds

    def wait(self, event: threading.Event, seconds: float) -> None:
        self.waits.append(seconds)
        self.advance(seconds)
