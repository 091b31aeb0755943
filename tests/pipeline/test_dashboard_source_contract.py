"""Contract of ReadingsSource: the in-memory double and InfluxDB answer the same.

Every test runs against ``MemorySource`` (unit) and ``InfluxSource`` on the local InfluxDB 1.x
(integration, a fresh database per test), both loaded with the same line protocol written by the
sink's encoder. Names that need quoting (quotes, spaces, commas, dots, markup) are part of it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from statistics import fmean

import pytest

from edge.schema import ScoredTick
from pipeline.dashboard.influx_source import InfluxSource, parse_results
from pipeline.dashboard.memory_source import MemorySource
from pipeline.dashboard.queries import Window
from pipeline.dashboard.source import ReadingsSource
from pipeline.errors import StorageError
from pipeline.lineproto import LineEncoder

T0 = int(datetime(2023, 1, 2, tzinfo=UTC).timestamp() * 1000)
HOSTILE = "x' OR 'a'='a"
DEVICES = (("lab", HOSTILE), ("site, 2", "<b>pump</b> ü"))
CHANNELS = ("Volume Flow", "PM2.5")


def ticks() -> list[ScoredTick]:
    out = []
    for d, (site, device) in enumerate(DEVICES):
        for i in range(40):
            silent = ("PM2.5",) if 5 <= i < 9 else ()
            flagged = d == 0 and (20 <= i < 24 or i == 30)
            out.append(
                ScoredTick(
                    site=site,
                    device=device,
                    ts_ms=T0 + i * 2000,
                    values={"Volume Flow": 10.0 + i, "PM2.5": None if i == 12 else 3.5 * d},
                    imputed=silent,
                    sigma=dict.fromkeys(silent, 0.25),
                    score=None if i == 12 else 1.0 + (4.0 if flagged else 0.0) + i / 100,
                    smoothed=1.0,
                    threshold=2.0 + d,
                    anomaly=flagged,
                    top_channels=("PM2.5", "Volume Flow") if flagged else (),
                    model="m",
                    model_version=f"v{d}",
                )
            )
    # a back-fill revision of tick 30 clears that alarm
    cleared = replace(out[30], anomaly=False, revision=1, top_channels=())
    return [*out, cleared]


def lines() -> bytes:
    encoder = LineEncoder()
    return b"".join(encoder.encode(t) for t in ticks())


def _influx(url: str, path: str, data: bytes) -> None:
    with urllib.request.urlopen(urllib.request.Request(f"{url}{path}", data=data), timeout=30):
        pass


def _write_new_database(url: str, db: str, body: bytes) -> None:
    """Write to a database just created: InfluxDB 1.x may answer 404 (database not found)
    for a moment after CREATE DATABASE returned, so a 404 is retried for up to 5 s."""
    path = f"/write?{urllib.parse.urlencode({'db': db, 'precision': 'ms'})}"
    deadline = time.monotonic() + 5.0
    while True:
        try:
            _influx(url, path, body)
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(params=["memory", pytest.param("influx", marks=pytest.mark.integration)])
def source(request: pytest.FixtureRequest) -> Iterator[ReadingsSource]:
    if request.param == "memory":
        memory = MemorySource()
        memory.write_lines(lines())
        yield memory
        return
    url: str = request.getfixturevalue("influx_url")
    db: str = request.getfixturevalue("unique_name")
    _influx(url, "/query", urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode())
    try:
        _write_new_database(url, db, lines())
        yield InfluxSource(url, db)
    finally:
        _influx(url, "/query", urllib.parse.urlencode({"q": f'DROP DATABASE "{db}"'}).encode())


def test_summaries(source: ReadingsSource) -> None:
    first, second = source.summaries(Window())
    assert (first.site, first.device) == ("lab", HOSTILE)
    assert (second.site, second.device) == DEVICES[1]
    assert first.ticks == second.ticks == 40
    assert first.last_seen_ms == T0 + 39 * 2000
    assert (first.model_version, second.model_version) == ("v0", "v1")
    assert first.flagged == 4  # tick 30 was cleared by its revision
    assert first.imputation_rate == pytest.approx(4 * 0.5 / 40)
    assert first.extent is not None and first.extent.period_ms == 2000
    inside = source.summaries(Window(T0 + 10 * 2000, T0 + 19 * 2000))
    assert [s.ticks for s in inside] == [10, 10]
    assert [s.flagged for s in inside] == [0, 0]
    assert inside[0].last_seen_ms == T0 + 39 * 2000  # last seen ignores the window


def test_extent(source: ReadingsSource) -> None:
    extent = source.extent("lab", HOSTILE, Window(T0 + 1, None))
    assert extent is not None
    assert (extent.first_ms, extent.last_ms, extent.ticks) == (T0 + 2000, T0 + 78_000, 39)
    assert source.extent("lab", "nobody", Window()) is None
    assert source.extent("lab", HOSTILE, Window(0, T0 - 1)) is None


def test_raw_series(source: ReadingsSource) -> None:
    series = source.series("lab", HOSTILE, Window(T0, T0 + 39 * 2000), 0)
    assert series.interval_ms == 0
    assert len(series.times) == 40 and series.times[0] == T0
    names = [c.name for c in series.channels]
    assert names == sorted(CHANNELS)
    pm = series.channels[names.index("PM2.5")]
    assert pm.imputed[5:9] == (1.0,) * 4 and pm.imputed[9] == 0.0
    assert pm.sigma[5] == 0.25 and pm.sigma[4] is None
    assert pm.values[12] is None  # neither observed nor imputed
    assert series.score[12] is None
    assert series.flagged[20:24] == (True,) * 4 and not series.flagged[30]
    assert series.threshold[0] == 2.0


def test_bucketed_series(source: ReadingsSource) -> None:
    series = source.series(DEVICES[1][0], DEVICES[1][1], Window(T0, T0 + 79_000), 20_000)
    assert series.interval_ms == 20_000
    assert series.times == (T0, T0 + 20_000, T0 + 40_000, T0 + 60_000)
    flow = next(c for c in series.channels if c.name == "Volume Flow")
    assert flow.values[0] == pytest.approx(fmean(10.0 + i for i in range(10)))
    pm = next(c for c in series.channels if c.name == "PM2.5")
    assert pm.imputed[0] == pytest.approx(4 / 10)
    assert pm.sigma[0] == pytest.approx(0.25)
    assert pm.imputed[1] == 0.0 and pm.sigma[1] is None
    assert series.score[1] == pytest.approx(1.19)  # bucket max of ticks 10..19
    assert series.threshold[0] == pytest.approx(3.0)


def test_anomaly_points(source: ReadingsSource) -> None:
    found = source.anomalies(Window(), None, None, 100)
    assert [p.ts_ms for p in found] == [T0 + i * 2000 for i in (23, 22, 21, 20)]
    assert {(p.site, p.device) for p in found} == {("lab", HOSTILE)}
    assert found[0].top_channels == ("PM2.5", "Volume Flow")
    assert found[0].score == pytest.approx(5.23)
    assert len(source.anomalies(Window(), "lab", HOSTILE, 2)) == 2
    assert source.anomalies(Window(), *DEVICES[1], 10) == []


def test_parse_results_reports_statement_errors() -> None:
    payload = {"results": [{"statement_id": 0, "series": []}, {"statement_id": 1, "error": "x"}]}
    results, errors = parse_results(payload, ["a", "b"])
    assert results == [[], []]
    assert errors == ["x (query: b)"]
    with pytest.raises(StorageError, match="rejected"):
        parse_results({"error": "bad"}, ["a"])
    with pytest.raises(StorageError, match="unexpected JSON"):
        parse_results([1], ["a"])


def test_unreachable_influx_retries_with_backoff_then_raises() -> None:
    import socket

    with socket.socket() as sock:  # a port that refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    slept: list[float] = []
    source = InfluxSource(
        f"http://127.0.0.1:{port}", "db", attempts=3, backoff_s=0.5, sleep=slept.append
    )
    with pytest.raises(StorageError, match="unreachable"):
        source.summaries(Window())
    assert slept == [0.5, 1.0]
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        source.ping()


@pytest.mark.integration
def test_missing_database_reads_as_empty(influx_url: str, unique_name: str) -> None:
    source = InfluxSource(influx_url, unique_name)
    assert source.summaries(Window()) == []
    assert source.extent("a", "b", Window()) is None
    assert source.anomalies(Window(), None, None, 10) == []
    source.ping()


@pytest.mark.integration
def test_an_invalid_query_surfaces_influxdb_s_message(influx_url: str) -> None:
    source = InfluxSource(influx_url, "_internal")
    with pytest.raises(StorageError, match="error parsing query"):
        source._post(["SELEC nonsense"])
