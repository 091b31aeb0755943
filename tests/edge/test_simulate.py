"""The CSV replayer: reading SKAB and Beijing files, planning gaps, truth, payloads, CLI errors."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from edge.simulate import (
    Outage,
    device_name,
    main,
    messages,
    parse_outage,
    plan_gaps,
    read_series,
    write_truth,
)

DATA = Path(
    os.environ.get(
        "GAPWATCH_DATA_DIR", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
SKAB = DATA / "skab" / "valve1" / "0.csv"
BEIJING = DATA / "beijing" / "Aotizhongxin.csv"
needs_data = pytest.mark.skipif(not SKAB.exists(), reason=f"shared data not found at {DATA}")


@needs_data
def test_reads_skab_without_labels_in_utc_ms() -> None:
    s = read_series(SKAB, max_rows=50)
    assert s.device == "skab-valve1-0"
    assert "anomaly" not in s.channels and "changepoint" not in s.channels
    assert s.channels[0] == "Accelerometer1RMS" and len(s.channels) == 8
    assert s.values.shape == (50, 8)
    assert s.ts_ms[0] == 1583748873000  # 2020-03-09 10:14:33 read as UTC
    assert np.all(np.diff(s.ts_ms) > 0)


@needs_data
def test_reads_beijing_with_empty_cells_as_nan() -> None:
    s = read_series(BEIJING, utc_offset_h=8.0, max_rows=2000)
    assert s.device == "Aotizhongxin" and s.channels[0] == "PM2.5"
    assert s.ts_ms[0] == 1362096000000 - 8 * 3_600_000  # 2013-03-01 00:00 at UTC+8
    assert np.isnan(s.values).any()


def series(tmp_path: Path, rows: int = 20) -> Path:
    path = tmp_path / "3.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["datetime", "p", "q", "anomaly"])
        for i in range(rows):
            w.writerow([f"2021-01-01 00:00:{i:02d}", i, "" if i == 5 else 100 + i, 0])
    return path


def test_device_names_from_paths() -> None:
    assert device_name(Path("/d/skab/valve1/12.csv")) == "skab-valve1-12"
    assert device_name(Path("/d/beijing/Dongsi.csv")) == "Dongsi"
    assert device_name(Path("weird name!.csv")) == "weird-name"


def test_gaps_withhold_cells_and_silence_rows(tmp_path: Path) -> None:
    s = read_series(series(tmp_path))
    outages = [parse_outage("q:3:4", True), parse_outage("10:2", False)]
    gaps = plan_gaps(s, 0.0, outages, np.random.default_rng(0))
    assert gaps.withheld[:, 1].nonzero()[0].tolist() == [3, 4, 6, 10, 11]  # row 5 is empty
    assert gaps.silent.nonzero()[0].tolist() == [10, 11]
    assert gaps.withheld[10].tolist() == [True, True]
    sent = list(messages(s, gaps))
    assert len(sent) == 18
    by_ts = {ts: p for ts, p in sent}
    t0 = int(s.ts_ms[0])
    assert by_ts[t0 + 3000]["values"] == {"p": 3.0}
    assert by_ts[t0 + 5000]["values"] == {"p": 5.0, "q": None}  # empty in the file: null
    assert by_ts[t0]["ts"] == t0


def test_truth_lists_exactly_the_withheld_values(tmp_path: Path) -> None:
    s = read_series(series(tmp_path))
    gaps = plan_gaps(s, 0.3, [Outage("p", 0.0, 2.0)], np.random.default_rng(7))
    out = tmp_path / "truth.csv"
    n = write_truth(out, [s], [gaps])
    rows = list(csv.DictReader(out.open()))
    assert n == len(rows) == int(gaps.withheld.sum())
    for r in rows:
        i = int((int(r["ts_ms"]) - s.ts_ms[0]) // 1000)
        c = s.channels.index(r["channel"])
        assert gaps.withheld[i, c] and float(r["value"]) == s.values[i, c]
        assert r["device"] == "3" or r["device"].endswith("-3")


def test_the_same_seed_gives_the_same_gaps(tmp_path: Path) -> None:
    s = read_series(series(tmp_path))
    a = plan_gaps(s, 0.5, [], np.random.default_rng(3)).withheld
    b = plan_gaps(s, 0.5, [], np.random.default_rng(3)).withheld
    c = plan_gaps(s, 0.5, [], np.random.default_rng(4)).withheld
    assert (a == b).all() and not (a == c).all()
    assert 0.2 < a.mean() < 0.8


def test_outage_syntax_errors() -> None:
    assert parse_outage("Pressure:2020-03-09T10:20:00:30", True) == Outage(
        "Pressure", "2020-03-09T10:20:00", 30.0
    )
    for bad in ("Pressure:10", "Pressure:10:0", ":1:2"):
        with pytest.raises(ValueError, match="CHANNEL:START:SECONDS"):
            parse_outage(bad, True)
    with pytest.raises(ValueError, match="START:SECONDS"):
        parse_outage("10", False)


def test_unknown_outage_channel_is_an_error(tmp_path: Path) -> None:
    s = read_series(series(tmp_path))
    with pytest.raises(ValueError, match="'nope' is not in"):
        plan_gaps(s, 0.0, [Outage("nope", 0.0, 1.0)], np.random.default_rng(0))


def test_cli_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = series(tmp_path)
    assert main([str(path), "--mqtt", "nohost"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main([str(path), "--outage", "q:1"]) == 2
    assert main([str(path), "--drop-rate", "1.5"]) == 2
    assert main([str(tmp_path / "missing.csv")]) == 2


def test_payloads_are_plain_json_numbers(tmp_path: Path) -> None:
    s = read_series(series(tmp_path))
    gaps = plan_gaps(s, 0.0, [], np.random.default_rng(0))
    for _, payload in messages(s, gaps):
        text = json.dumps(payload)
        assert "NaN" not in text
        assert all(v is None or math.isfinite(v) for v in payload["values"].values())  # type: ignore[union-attr]
