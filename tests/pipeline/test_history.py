"""History export against the in-memory InfluxDB: observed values only, chunked, loadable."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge.schema import ScoredTick
from pipeline.errors import ConfigError
from pipeline.fakes import FakeInflux
from pipeline.history import (
    HistoryQuery,
    build_select,
    channels_from_field_keys,
    chunks,
    export_history,
    find_channels,
    find_time_range,
    parse_duration,
    parse_time,
)
from pipeline.lineproto import LineEncoder

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
HOUR = 3_600_000


def tick(device: str, ts_ms: int, **over: object) -> ScoredTick:
    base: dict[str, object] = {
        "site": "lab",
        "device": device,
        "ts_ms": ts_ms,
        "values": {"Pressure": 1.0, "Current": 2.0},
        "imputed": (),
        "sigma": {},
        "score": 0.5,
        "smoothed": 0.5,
        "threshold": 2.0,
        "anomaly": False,
        "top_channels": (),
        "model": "m",
        "model_version": "v1",
    }
    base.update(over)
    return ScoredTick(**base)  # type: ignore[arg-type]


def store(ticks: list[ScoredTick]) -> FakeInflux:
    influx, enc = FakeInflux(), LineEncoder()
    influx.write(b"".join(enc.encode(t) for t in ticks))
    return influx


def sample() -> FakeInflux:
    ticks = []
    for h in range(48):
        for device in ("pump-1", "pump-2"):
            imputed = ("Current",) if h % 4 == 0 else ()
            ticks.append(
                tick(
                    device,
                    T0 + h * HOUR,
                    values={"Pressure": float(h), "Current": 100.0 + h},
                    imputed=imputed,
                    sigma={"Current": 0.5} if imputed else {},
                    anomaly=h == 7,
                )
            )
    return store(ticks)


def test_durations_and_times_parse() -> None:
    assert parse_duration("1d") == 86_400_000
    assert parse_duration("6h") == 6 * HOUR
    assert parse_duration("1.5s") == 1500
    assert parse_time("2024-05-01") == T0
    assert parse_time("2024-05-01T02:00:00Z") == T0 + 2 * HOUR
    assert parse_time("2024-05-01T04:00:00+02:00") == T0 + 2 * HOUR
    assert parse_time(str(T0)) == T0
    with pytest.raises(ConfigError, match="duration"):
        parse_duration("fortnight")
    with pytest.raises(ConfigError, match="RFC 3339"):
        parse_time("yesterday")
    with pytest.raises(ConfigError, match="not after"):
        HistoryQuery(T0, T0)


def test_chunks_cover_the_range_without_overlap() -> None:
    assert list(chunks(0, 25, 10)) == [(0, 10), (10, 20), (20, 25)]


def test_channels_are_the_fields_with_an_imputed_flag() -> None:
    keys = ["a", "a_imputed", "b_imputed", "b_sigma", "score", "anomaly", "revision", "x"]
    assert channels_from_field_keys(keys) == ("a", "b")
    assert find_channels(sample()) == ("Current", "Pressure")


def test_select_is_exact_influxql() -> None:
    q = HistoryQuery(T0, T0 + HOUR, site="lab", device="it's", with_anomaly=True)
    assert build_select(q, ["Flow rate"], T0, T0 + HOUR) == (
        'SELECT "Flow rate", "Flow rate_imputed", "anomaly" FROM "readings" '
        f"WHERE time >= {T0}ms AND time < {T0 + HOUR}ms AND \"site\" = 'lab' "
        'AND "device" = \'it\\\'s\' GROUP BY "site", "device"'
    )


def test_csv_export_masks_imputed_values_and_is_chunked(tmp_path: Path) -> None:
    influx = sample()
    seen: list[tuple[int, int]] = []
    q = HistoryQuery(T0, T0 + 48 * HOUR, chunk_ms=12 * HOUR, with_anomaly=True)
    out = tmp_path / "h.csv"
    stats = export_history(influx, q, out, on_chunk=lambda a, b: seen.append((a, b)))
    assert len(seen) == 4
    assert stats.rows == 96
    assert stats.masked == 24  # every 4th hour of 2 devices had Current imputed
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["timestamp", "site", "device", "Current", "Pressure", "anomaly"]
    assert frame["timestamp"].iloc[0] == "2024-05-01T00:00:00.000Z"
    assert list(frame["device"].iloc[:2]) == ["pump-1", "pump-1"]
    pump1 = frame[frame["device"] == "pump-1"].reset_index(drop=True)
    assert math.isnan(pump1.loc[0, "Current"])  # hour 0 was imputed
    assert pump1.loc[1, "Current"] == 101.0
    assert pump1.loc[4, "Pressure"] == 4.0  # observed channel of an imputed tick stays
    assert math.isnan(pump1.loc[4, "Current"])
    assert pump1["anomaly"].tolist() == [int(h == 7) for h in range(48)]


def test_parquet_export_has_typed_columns_and_filters(tmp_path: Path) -> None:
    out = tmp_path / "h.parquet"
    q = HistoryQuery(T0 + HOUR, T0 + 3 * HOUR, device="pump-2", chunk_ms=HOUR)
    stats = export_history(sample(), q, out)
    frame = pd.read_parquet(out)
    assert stats.rows == 2
    assert str(frame["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-05-01T01:00:00Z")
    assert frame["device"].tolist() == ["pump-2", "pump-2"]
    assert frame["Current"].tolist() == [101.0, 102.0]


def test_empty_first_chunk_keeps_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "h.parquet"
    q = HistoryQuery(T0 - 10 * HOUR, T0 + 2 * HOUR, chunk_ms=5 * HOUR)
    export_history(sample(), q, out)
    frame = pd.read_parquet(out)
    assert len(frame) == 4
    assert frame["site"].tolist() == ["lab"] * 4


def test_time_range_and_refusal_of_odd_outputs(tmp_path: Path) -> None:
    assert find_time_range(sample()) == (T0, T0 + 47 * HOUR + 1)
    assert find_time_range(FakeInflux()) is None
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        export_history(sample(), HistoryQuery(T0, T0 + HOUR), tmp_path / "h.xlsx")
    assert not list(tmp_path.iterdir())


def test_export_loads_with_the_training_loader(tmp_path: Path) -> None:
    from training.data import LoadOptions, load_series

    out = tmp_path / "h.csv"
    export_history(sample(), HistoryQuery(T0, T0 + 48 * HOUR, with_anomaly=True), out)
    series = load_series([out], LoadOptions(device_column="device"))
    assert [s.name for s in series] == ["h/pump-1", "h/pump-2"]
    first = series[0]
    assert first.channels == ("Current", "Pressure")
    assert first.tick_seconds == 3600.0
    assert len(first) == 48
    assert int(np.isnan(first.values[:, 0]).sum()) == 12
    assert first.anomalous.tolist() == [h == 7 for h in range(48)]
