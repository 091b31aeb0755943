"""``gapwatch history export`` against a real InfluxDB 1.x: round trip, masking, chunks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge.schema import ScoredTick
from pipeline.cli import history as history_cli
from pipeline.errors import StorageError
from pipeline.history import HistoryQuery, find_time_range, read_history
from pipeline.influx import Influx1Client
from pipeline.lineproto import LineEncoder

pytestmark = pytest.mark.integration

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
MIN = 60_000


def make_tick(device: str, i: int, **over: object) -> ScoredTick:
    imputed = ("Temp",) if i % 5 == 0 else ()
    base: dict[str, object] = {
        "site": "plant",
        "device": device,
        "ts_ms": T0 + i * MIN,
        "values": {"Temp": 20.0 + i / 8, "Flow Rate": 3.0 + i / 16},
        "imputed": imputed,
        "sigma": {"Temp": 0.2} if imputed else {},
        "score": 0.3,
        "smoothed": 0.3,
        "threshold": 2.0,
        "anomaly": i == 17,
        "top_channels": ("Temp",) if i == 17 else (),
        "model": "m",
        "model_version": "v1",
    }
    base.update(over)
    return ScoredTick(**base)  # type: ignore[arg-type]


@pytest.fixture
def db(influx_url: str, unique_name: str) -> Iterator[Influx1Client]:
    client = Influx1Client(influx_url, unique_name.replace("-", "_"))
    client.create_database()
    try:
        yield client
    finally:
        with contextlib.suppress(StorageError):
            client.drop_database()
        client.close()


def fill(client: Influx1Client, n: int = 300) -> list[ScoredTick]:
    enc = LineEncoder()
    ticks = [make_tick(d, i) for i in range(n) for d in ("a-1", "b-2")]
    # A back-fill revision imputes a value the causal pass had left empty: still not observed.
    ticks.append(make_tick("a-1", 3, values={"Temp": None, "Flow Rate": 3.0}, imputed=()))
    ticks.append(
        make_tick("a-1", 3, values={"Temp": 99.0, "Flow Rate": 3.0}, imputed=("Temp",), revision=1)
    )
    for start in range(0, len(ticks), 200):
        client.write(b"".join(enc.encode(t) for t in ticks[start : start + 200]))
    return ticks


def cli(client: Influx1Client, *args: str) -> int:
    base = ["export", "--influx", client.url, "--db", client.database, "--quiet"]
    return history_cli.main([*base, *args])


def test_csv_round_trip_with_imputed_entries_missing(
    db: Influx1Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db)
    out = tmp_path / "hist.csv"
    assert cli(db, "--chunk", "1h", "--anomaly", "--to", "2024-05-02", "--out", str(out)) == 0
    assert "wrote 600 rows x 2 channels" in capsys.readouterr().out
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["timestamp", "site", "device", "Flow Rate", "Temp", "anomaly"]
    a = frame[frame["device"] == "a-1"].reset_index(drop=True)
    assert len(a) == 300
    assert a.loc[0, "timestamp"] == "2024-05-01T00:00:00.000Z"
    assert a.loc[299, "timestamp"] == "2024-05-01T04:59:00.000Z"
    for i in (1, 2, 4, 6, 299):
        assert a.loc[i, "Temp"] == 20.0 + i / 8
        assert a.loc[i, "Flow Rate"] == 3.0 + i / 16
    assert math.isnan(a.loc[0, "Temp"]) and math.isnan(a.loc[5, "Temp"])  # imputed
    assert math.isnan(a.loc[3, "Temp"])  # the revision's imputed 99.0 is not an observation
    assert a.loc[5, "Flow Rate"] == 3.0 + 5 / 16
    assert a["anomaly"].tolist() == [int(i == 17) for i in range(300)]
    assert set(frame["site"]) == {"plant"}


def test_parquet_export_of_one_device_loads_with_the_training_loader(
    db: Influx1Client, tmp_path: Path
) -> None:
    from training.data import LoadOptions, load_series

    fill(db)
    out = tmp_path / "b2.parquet"
    assert cli(db, "--device", "b-2", "--chunk", "30m", "--out", str(out)) == 0
    frame = pd.read_parquet(out)
    assert set(frame["device"]) == {"b-2"}
    assert len(frame) == 300
    series = load_series([out], LoadOptions(device_column="device"))
    assert len(series) == 1
    s = series[0]
    assert s.tick_seconds == 60.0
    assert s.channels == ("Flow Rate", "Temp")
    assert len(s) == 300
    assert int(np.isnan(s.values[:, 1]).sum()) == 60  # every 5th Temp was imputed


def test_chunks_read_the_same_as_one_query_and_range_is_found(db: Influx1Client) -> None:
    fill(db, n=120)
    assert find_time_range(db) == (T0, T0 + 119 * MIN + 1)
    assert find_time_range(db, device="nope") is None
    whole = pd.concat(f for f, _ in read_history(db, HistoryQuery(T0, T0 + 3 * 3_600_000)))
    chunked = pd.concat(
        f for f, _ in read_history(db, HistoryQuery(T0, T0 + 3 * 3_600_000, chunk_ms=7 * MIN))
    )
    chunked = chunked.sort_values(["site", "device", "timestamp"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), chunked)
    assert len(whole) == 240


def test_empty_database_is_refused_with_a_message(
    db: Influx1Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(db, "--out", str(tmp_path / "x.csv")) == 1
    assert "holds no readings" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
