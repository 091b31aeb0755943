"""What the demo replays: files found, gaps planned by the simulator's rules, truth and labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from edge.simulate import messages
from gapwatch.demo.errors import DataNotFound
from gapwatch.demo.inputs import (
    DATA_ENV,
    KIND_CHANNEL,
    KIND_DEVICE,
    KIND_DROP,
    GapSettings,
    find_files,
    load_replays,
    skab_files,
)

CHANNELS = ("a", "b", "c")


def write_csv(path: Path, rows: int, *, labels: bool = True, start: int = 0) -> Path:
    """A SKAB-like file: ';'-separated, 1 s rows, optional anomaly column (rows 40-59)."""
    t0 = datetime(2020, 3, 1, tzinfo=UTC) + timedelta(seconds=start)
    header = ["datetime", *CHANNELS] + (["anomaly", "changepoint"] if labels else [])
    lines = [";".join(header)]
    for i in range(rows):
        stamp = (t0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        cells = [stamp, f"{i:.1f}", f"{10 + i % 7:.1f}", f"{-i:.1f}"]
        if labels:
            cells += ["1.0" if 40 <= i < 60 else "0.0", "1.0" if i == 40 else "0.0"]
        lines.append(";".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gaps_follow_the_settings_and_are_classified(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "dev1.csv", 200)
    settings = GapSettings(
        drop_rate=0.1,
        channel_outage_s=20,
        channel_outage_at=0.25,
        device_outage_s=10,
        device_outage_at=0.5,
    )
    (r,) = load_replays([f], settings)
    assert r.device == "dev1"
    # the first file's silent channel is its first channel, from 25 % of 199 s for 20 s
    chan = r.kinds[:, 0] == KIND_CHANNEL
    assert np.flatnonzero(chan).tolist() == list(range(50, 70))
    dev = np.flatnonzero(r.gaps.silent)
    assert dev.tolist() == list(range(100, 110))
    assert np.all(r.kinds[r.gaps.silent] == KIND_DEVICE)
    drops = r.kinds == KIND_DROP
    assert 0.05 < drops.mean() < 0.15
    assert np.array_equal(r.kinds > 0, r.gaps.withheld)
    assert r.labels is not None and r.labels.sum() == 20


def test_counts_match_the_simulator_messages(tmp_path: Path) -> None:
    (r,) = load_replays([write_csv(tmp_path / "d.csv", 120)], GapSettings(drop_rate=0.3))
    sent = list(messages(r.series, r.gaps))
    assert r.messages == len(sent)
    values = [cast(dict[str, float | None], body["values"]) for _, body in sent]
    assert r.readings == sum(sum(v is not None for v in vals.values()) for vals in values)


def test_same_seed_same_gaps_other_seed_other_gaps(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "d.csv", 300)
    a = load_replays([f], GapSettings(seed=1))[0].gaps.withheld
    b = load_replays([f], GapSettings(seed=1))[0].gaps.withheld
    c = load_replays([f], GapSettings(seed=2))[0].gaps.withheld
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_on_ticks_maps_truth_kinds_and_labels_onto_given_ticks(tmp_path: Path) -> None:
    (r,) = load_replays([write_csv(tmp_path / "d.csv", 100)], GapSettings(drop_rate=0.2))
    t0 = int(r.series.ts_ms[0])
    ticks = t0 + np.array([-1000, 0, 45_000, 99_000, 150_000], dtype=np.int64)
    truth, kinds, labels = r.on_ticks(ticks, 1000, ("c", "a"))
    assert truth.shape == (5, 2) and kinds.shape == (5, 2)
    assert np.isnan(truth[0]).all() and np.isnan(truth[-1]).all()  # outside the file
    row = 45
    for j, name in enumerate(("c", "a")):
        c = CHANNELS.index(name)
        if r.gaps.withheld[row, c]:
            assert truth[2, j] == r.series.values[row, c]
            assert kinds[2, j] == r.kinds[row, c]
        else:
            assert np.isnan(truth[2, j]) and kinds[2, j] == 0
    assert labels is not None
    assert labels[2] == 1.0 and labels[3] == 0.0 and np.isnan(labels[0])


def test_on_ticks_names_a_channel_the_file_lacks(tmp_path: Path) -> None:
    (r,) = load_replays([write_csv(tmp_path / "d.csv", 10)], GapSettings())
    with pytest.raises(DataNotFound, match="no column \\['zz'\\]"):
        r.on_ticks(r.series.ts_ms, 1000, ("a", "zz"))


def test_file_without_labels_has_none(tmp_path: Path) -> None:
    (r,) = load_replays([write_csv(tmp_path / "d.csv", 50, labels=False)], GapSettings())
    assert r.labels is None


def test_rows_limit_cuts_series_and_labels(tmp_path: Path) -> None:
    (r,) = load_replays([write_csv(tmp_path / "d.csv", 100)], GapSettings(), max_rows=45)
    assert len(r.series.ts_ms) == 45
    assert r.labels is not None and len(r.labels) == 45 and r.labels.sum() == 5


def test_two_files_with_one_device_name_are_refused(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "x" / "d.csv", 10)
    b = write_csv(tmp_path / "y" / "d.csv", 10)
    with pytest.raises(DataNotFound, match="device name 'd'"):
        load_replays([a, b], GapSettings())


def test_find_files_walks_folders_in_numeric_order(tmp_path: Path) -> None:
    for name in ("10", "2", "1"):
        write_csv(tmp_path / "set" / f"{name}.csv", 5)
    found = find_files([str(tmp_path / "set")])
    assert [p.stem for p in found] == ["1", "2", "10"]
    with pytest.raises(DataNotFound, match="no such file"):
        find_files([str(tmp_path / "missing.csv")])


def test_missing_shared_data_says_how_to_bring_your_own(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound) as err:
        skab_files(tmp_path)
    text = str(err.value)
    assert DATA_ENV in text and "--data" in text and "GAPWATCH_DATA_DIR" in text


def test_skab_files_order(tmp_path: Path) -> None:
    skab = tmp_path / "skab"
    write_csv(skab / "anomaly-free" / "anomaly-free.csv", 5, labels=False)
    for n in (0, 1, 10, 2):
        write_csv(skab / "valve1" / f"{n}.csv", 5)
    write_csv(skab / "other" / "1.csv", 5)
    names = [f"{p.parent.name}/{p.stem}" for p in skab_files(tmp_path)]
    assert names == [
        "anomaly-free/anomaly-free",
        "valve1/0",
        "valve1/1",
        "valve1/2",
        "valve1/10",
        "other/1",
    ]
