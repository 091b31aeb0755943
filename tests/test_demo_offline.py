"""``gapwatch demo --offline``: the replay through alignment and scoring, its files, its CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from edge.bundle import Bundle, load_bundle
from edge.series import score_series
from edge.simulate import messages
from edge.window import to_grid
from gapwatch.demo.bundle import packaged_dir
from gapwatch.demo.inputs import GapSettings, Replay, default_data_dir, load_replays
from gapwatch.demo.offline import replay_device, run_offline, write_csv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    path = packaged_dir()
    assert path is not None, "the shipped demo bundle is missing"
    return load_bundle(path)


def write_device(path: Path, bundle: Bundle, rows: int, seed: int, step_s: int = 1) -> Path:
    """A SKAB-like file around the bundle's scaling, with a labelled shift in rows 200-259."""
    m = bundle.manifest
    rng = np.random.default_rng(seed)
    t0 = datetime(2020, 3, 1, tzinfo=UTC) + timedelta(hours=seed)
    lines = [";".join(["datetime", *m.channel_names, "anomaly", "changepoint"])]
    for i in range(rows):
        label = 1 if 200 <= i < 260 else 0
        z = 0.3 * np.sin(i / 15 + np.arange(len(m.channels))) + 0.1 * rng.normal(size=8)
        z = z + 4.0 * label
        vals = m.center + m.scale * z
        stamp = (t0 + timedelta(seconds=i * step_s)).strftime("%Y-%m-%d %H:%M:%S")
        cells = [stamp, *(f"{v:.5f}" for v in vals), str(label), str(int(i == 200))]
        lines.append(";".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def replays(tmp_path: Path, bundle: Bundle, settings: GapSettings) -> list[Replay]:
    files = [write_device(tmp_path / f"dev{k}.csv", bundle, 400, seed=k) for k in range(2)]
    return load_replays(files, settings)


def test_offline_counts_are_the_traces_counts(tmp_path: Path, bundle: Bundle) -> None:
    reps = replays(tmp_path, bundle, GapSettings(drop_rate=0.05, seed=3))
    result = run_offline(reps, bundle, clock=time.perf_counter)
    s, traces = result.summary, [o.trace for o in result.outcomes]
    assert s.devices == 2 and s.mode == "offline"
    # 1 s rows: one tick each, then max_gap silent ticks imputed before the device is offline
    gap = bundle.manifest.max_gap_ticks
    assert s.ticks == sum(len(t.ts_ms) for t in traces) == 2 * (400 + gap)
    assert s.imputed_entries == sum(int(t.imputed.sum()) for t in traces) > 0
    assert s.anomaly_ticks == sum(int(t.anomaly.sum()) for t in traces)
    assert s.messages == sum(r.messages for r in reps)
    every = s.imputation[0]
    assert every.kind == "all" and every.entries > 0
    for kind in s.imputation[1:]:
        assert kind.entries > 0, kind  # drops, a silent channel and a silent device
    assert s.detection is not None and s.detection.segments == 2


def test_withheld_values_are_imputed_and_observed_values_pass_through(
    tmp_path: Path, bundle: Bundle
) -> None:
    (rep,) = replays(tmp_path, bundle, GapSettings(drop_rate=0.1, seed=1))[:1]
    tr = replay_device(rep, bundle).trace
    assert tr.truth is not None
    withheld = np.isfinite(tr.truth)
    assert withheld.sum() > 50
    assert np.all(tr.imputed[withheld])
    assert np.all(np.isfinite(tr.sigma[tr.imputed])) and np.all(tr.sigma[tr.imputed] > 0)
    m = bundle.manifest
    order = [rep.series.channels.index(c) for c in m.channel_names]
    _, file_grid = to_grid(rep.series.ts_ms, rep.series.values[:, order], 1000)
    rows = len(file_grid)
    kept = ~tr.imputed[:rows]
    np.testing.assert_allclose(tr.values[:rows][kept], file_grid[kept])
    assert tr.imputed[rows:].all()  # after the file: silent ticks, imputed until offline
    assert len(tr.ts_ms) == rows + m.max_gap_ticks


def test_alignment_then_scoring_matches_the_batch_scorer_on_the_same_grid(
    tmp_path: Path, bundle: Bundle
) -> None:
    (rep,) = replays(tmp_path, bundle, GapSettings(drop_rate=0.1, seed=2))[:1]
    tr = replay_device(rep, bundle, warmup=50).trace
    m = bundle.manifest
    idx = {c: i for i, c in enumerate(m.channel_names)}
    ts, rows = [], []
    for t, body in messages(rep.series, rep.gaps):
        row = np.full(len(idx), np.nan)
        for c, v in cast(dict[str, float | None], body["values"]).items():
            row[idx[c]] = np.nan if v is None else v
        ts.append(t)
        rows.append(row)
    grid_ts, grid = to_grid(np.array(ts), np.array(rows), 1000)
    tail = m.max_gap_ticks  # the silent ticks after the file, until the device is offline
    grid_ts = np.concatenate([grid_ts, grid_ts[-1] + 1000 * np.arange(1, tail + 1)])
    grid = np.vstack([grid, np.full((tail, len(idx)), np.nan)])
    direct = score_series(bundle, grid, grid_ts, mode="backfill", warmup=50)
    np.testing.assert_array_equal(tr.ts_ms, direct.ts_ms)
    np.testing.assert_allclose(tr.values, direct.values)
    np.testing.assert_array_equal(tr.anomaly, direct.anomaly)


def test_a_device_silent_longer_than_max_gap_is_not_imputed(tmp_path: Path, bundle: Bundle) -> None:
    gap = bundle.manifest.max_gap_ticks
    settings = GapSettings(drop_rate=0.0, channel_outage_s=0, device_outage_s=gap + 40)
    (rep,) = replays(tmp_path, bundle, settings)[:1]
    tr = replay_device(rep, bundle).trace
    silent = int(rep.gaps.silent.sum())
    assert silent == gap + 40
    # the first max_gap silent ticks are imputed, the rest are not stored at all (and the
    # same again after the file ends)
    assert len(tr.ts_ms) == 400 - (silent - gap) + gap
    assert int(tr.imputed.all(axis=1).sum()) == 2 * gap


def test_csv_has_a_row_per_tick_with_truth_and_labels(tmp_path: Path, bundle: Bundle) -> None:
    reps = replays(tmp_path, bundle, GapSettings(seed=4))
    result = run_offline(reps, bundle, clock=time.perf_counter)
    out = tmp_path / "out" / "scored.csv"
    assert write_csv(out, result.outcomes) == result.summary.ticks
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result.summary.ticks
    first = rows[0]
    for col in ("ts_ms", "device", "Current", "Current_imputed", "Current_truth", "label"):
        assert col in first
    assert sum(r["anomaly"] == "1" for r in rows) == result.summary.anomaly_ticks
    imputed = sum(int(r[f"{c}_imputed"]) for r in rows for c in bundle.manifest.channel_names)
    assert imputed == result.summary.imputed_entries


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gapwatch", "demo", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_offline_writes_report_csv_and_summary(tmp_path: Path, bundle: Bundle) -> None:
    files = [write_device(tmp_path / f"d{k}.csv", bundle, 300, seed=k) for k in range(2)]
    state = tmp_path / "state"
    result = run_cli(
        "--offline", "--data", str(files[0]), "--data", str(files[1]), "--state-dir", str(state)
    )
    assert result.returncode == 0, result.stderr
    out = state / "offline"
    summary = json.loads((out / "summary.json").read_text())
    gap = bundle.manifest.max_gap_ticks
    assert summary["ticks"] == 2 * (300 + gap) and summary["mode"] == "offline"
    assert f"{summary['imputed_entries']:,} entries" in result.stdout
    assert "shipped with the package" in result.stderr
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # histogram + one plot per device
    assert "Imputation error on withheld values" in html
    assert (out / "scored.csv").stat().st_size > 0


def test_cli_with_missing_data_says_how_to_point_at_a_csv(tmp_path: Path) -> None:
    # no data at all runs the simulated fleet (tests/test_demo_fleet.py); a wrong --data does not
    result = run_cli(
        "--offline",
        "--state-dir",
        str(tmp_path),
        "--data",
        str(tmp_path / "missing.csv"),
        env={"GAPWATCH_DATA_DIR": str(tmp_path / "none"), "GAPWATCH_DEMO_DATA": ""},
    )
    assert result.returncode == 2
    assert "GAPWATCH_DEMO_DATA" in result.stderr and "--data" in result.stderr
    assert not (tmp_path / "fleet").exists()


def test_cli_help_teaches_both_modes() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for text in ("--offline", "--down", "GAPWATCH_DEMO_DATA", "make demo", "--duration", "fleet"):
        assert text in result.stdout


def test_cli_down_with_nothing_running(tmp_path: Path) -> None:
    result = run_cli("--down", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert "nothing" in result.stdout


@pytest.mark.skipif(
    not (default_data_dir() / "skab" / "valve1" / "0.csv").exists(), reason="no shared data"
)
def test_real_skab_files_offline(tmp_path: Path, bundle: Bundle) -> None:
    skab = default_data_dir() / "skab"
    reps = load_replays([skab / "valve1" / "0.csv", skab / "other" / "1.csv"], GapSettings())
    result = run_offline(reps, bundle, clock=time.perf_counter, warmup=400)
    s = result.summary
    assert s.ticks > 1800 and s.detection is not None and s.detection.segments == 2
    every = s.imputation[0]
    assert every.entries > 100 and np.isfinite(every.vae) and np.isfinite(every.locf)
