"""Loading files onto the tick grid: separators, time columns, gaps, labels, and DataErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import LoadOptions, Series, check_channels, frame_to_series, load_series
from training.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_semicolon_file_with_labels(tmp_path: Path) -> None:
    f = write(
        tmp_path / "pump.csv",
        "datetime;flow;temp;anomaly;changepoint\n"
        "2020-02-08 13:30:47;1.0;20.0;0;0\n"
        "2020-02-08 13:30:48;2.0;21.0;1;1\n"
        "2020-02-08 13:30:49;3.0;22.0;1;0\n",
    )
    (s,) = load_series([f])
    assert s.name == "pump" and s.channels == ("flow", "temp")
    assert s.tick_seconds == 1.0
    assert s.ts_ms[0] == pd.Timestamp("2020-02-08 13:30:47", tz="UTC").value // 10**6
    np.testing.assert_array_equal(s.values[:, 0], [1.0, 2.0, 3.0])
    assert s.labels is not None and s.labels.tolist() == [0, 1, 1]
    assert s.anomalous.tolist() == [False, True, True]
    assert set(s.label_columns) == {"anomaly", "changepoint"}


@pytest.mark.parametrize("name", ["timestamp", "Time", "ts", "DATETIME"])
def test_time_column_found_by_name(tmp_path: Path, name: str) -> None:
    f = write(tmp_path / "a.csv", f"x,{name}\n1,2024-01-01T00:00:00Z\n2,2024-01-01T00:00:10Z\n")
    (s,) = load_series([f])
    assert s.channels == ("x",) and s.tick_seconds == 10.0


def test_explicit_time_column_and_epoch_seconds(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "when,x\n1699999980,1\n1700000040,2\n1700000100,3\n")
    (s,) = load_series([f], LoadOptions(time_column="when"))
    assert s.ts_ms.tolist() == [1699999980000, 1700000040000, 1700000100000]
    assert s.channels == ("x",)


def test_grid_is_epoch_aligned_like_the_agents(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "ts,x\n1700000000,1\n1700000060,2\n")  # 20 s past a minute
    (s,) = load_series([f], LoadOptions(tick_seconds=60.0))
    assert s.ts_ms.tolist() == [1699999980000, 1700000040000]  # nearest whole minutes


def test_resampling_makes_missing_ticks_and_takes_the_latest_reading(tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.csv",
        "timestamp,x,y\n"
        "2024-01-01T00:00:00Z,1,10\n"
        "2024-01-01T00:00:01Z,2,\n"
        "2024-01-01T00:00:01.200Z,3,\n"  # same tick, later: wins for x
        "2024-01-01T00:00:04Z,4,40\n"  # ticks 2 and 3 have no row
        "2024-01-01T00:00:00.900Z,,5\n",  # late row for tick 1 (rounded), y only
    )
    (s,) = load_series([f], LoadOptions(tick_seconds=1.0))
    assert len(s) == 5
    np.testing.assert_array_equal(s.values[:, 0], [1, 3, np.nan, np.nan, 4])
    np.testing.assert_array_equal(s.values[:, 1], [10, 5, np.nan, np.nan, 40])


def test_tick_defaults_to_median_spacing(tmp_path: Path) -> None:
    rows = "\n".join(f"2024-01-01T00:{m:02d}:00,{m}" for m in (0, 5, 10, 20, 25))
    (s,) = load_series([write(tmp_path / "a.csv", "time,x\n" + rows + "\n")])
    assert s.tick_seconds == 300.0 and len(s) == 6 and np.isnan(s.values[3, 0])


def test_device_column_splits_streams(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "ts": ["2024-01-01T00:00:00", "2024-01-01T00:00:00", "2024-01-01T00:00:01"],
            "device": ["a", "b", "a"],
            "x": [1.0, 2.0, 3.0],
        }
    )
    out = frame_to_series(frame, name="site", options=LoadOptions(device_column="device"))
    assert [s.name for s in out] == ["site/a", "site/b"]
    assert out[0].values[:, 0].tolist() == [1.0, 3.0] and out[0].channels == ("x",)


def test_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"timestamp": pd.date_range("2024-01-01", periods=4, freq="h"), "x": [1.0, 2, 3, 4]}
    )
    frame.to_parquet(tmp_path / "a.parquet")
    (s,) = load_series([tmp_path / "a.parquet"])
    assert s.tick_seconds == 3600.0 and s.values[:, 0].tolist() == [1, 2, 3, 4]


def test_no_time_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no time column.*--time-column"):
        load_series([write(tmp_path / "a.csv", "x,y\n1,2\n")])


def test_no_numeric_channel(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "timestamp,name,anomaly\n2024-01-01,a,0\n2024-01-02,b,1\n")
    with pytest.raises(DataError, match="no numeric channel"):
        load_series([f])


def test_unparseable_timestamp_names_value_and_row(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "timestamp,x\n2024-01-01,1\nyesterday,2\n")
    with pytest.raises(DataError, match=r"'yesterday'.*row 1"):
        load_series([f])


def test_channels_differing_name_missing_and_extra(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"\['temp'\] are missing.*extra columns present: \['tmp'\]"
    ):
        check_channels(["flow", "tmp"], ["flow", "temp"], where="a.csv")
    f = write(tmp_path / "a.csv", "timestamp,flow,tmp\n2024-01-01,1,2\n2024-01-02,1,2\n")
    with pytest.raises(DataError, match="temp"):
        load_series([f], LoadOptions(channels=("flow", "temp")))


def test_second_file_must_have_the_first_files_channels(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "timestamp,x,y\n2024-01-01,1,2\n2024-01-02,1,2\n")
    b = write(tmp_path / "b.csv", "timestamp,x\n2024-01-01,1\n2024-01-02,1\n")
    with pytest.raises(DataError, match=r"\['y'\] are missing"):
        load_series([a, b])


def test_missing_file() -> None:
    with pytest.raises(DataError, match="no such file"):
        load_series(["/nonexistent/x.csv"])


def test_real_skab_file(skab_dir: Path) -> None:
    (s,) = load_series([skab_dir / "other" / "1.csv"])
    assert len(s.channels) == 8 and "anomaly" not in s.channels
    assert s.tick_seconds == 1.0
    missing = np.isnan(s.values).all(axis=1).mean()
    assert 0.01 < missing < 0.10  # the 2 s steps become missing ticks
    assert s.anomalous.sum() > 0


def test_slice_and_select_keep_labels(skab_dir: Path) -> None:
    (s,) = load_series([skab_dir / "other" / "1.csv"])
    part: Series = s.slice(10, 20).select(["Pressure", "Current"])
    assert part.values.shape == (10, 2) and part.channels == ("Pressure", "Current")
    assert part.labels is not None and len(part.labels) == 10
