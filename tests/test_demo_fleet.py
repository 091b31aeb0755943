"""The demo on a bare clone: no shared data, no --data -> the embedded simulated fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge.bundle import load_bundle
from edge.fleet import CHANNELS
from edge.simulate import read_series
from gapwatch.demo.bundle import FLEET_NAME, packaged_dir, resolve_offline
from gapwatch.demo.fleet import REPLAY_START_MS, FleetSettings, fleet_history, fleet_replay
from gapwatch.demo.inputs import GapSettings, load_replays
from gapwatch.demo.publish import rebase

REPO = Path(__file__).resolve().parents[1]
SMALL = FleetSettings(devices=2, minutes=15.0, history_hours=0.25)


def test_fleet_files_are_written_once_and_deterministic(tmp_path: Path) -> None:
    files = fleet_replay(tmp_path, SMALL)
    assert [f.name for f in files] == ["pump-01.csv", "pump-02.csv"]
    first = files[0].read_bytes()
    stamp = files[0].stat().st_mtime_ns
    assert fleet_replay(tmp_path, SMALL) == files and files[0].stat().st_mtime_ns == stamp
    other = tmp_path / "other"
    assert fleet_replay(other, SMALL)[0].read_bytes() == first
    # other settings: rewritten
    more = fleet_replay(tmp_path, FleetSettings(devices=3, minutes=15.0))
    assert len(more) == 3
    s = read_series(files[0])
    assert s.channels == CHANNELS and s.ts_ms[0] == REPLAY_START_MS and len(s.ts_ms) == 900


def test_history_is_fault_free_and_ends_where_the_replay_starts(tmp_path: Path) -> None:
    hist = fleet_history(tmp_path, SMALL)
    s = read_series(hist[0])
    assert int(s.ts_ms[-1]) + 1000 == REPLAY_START_MS and len(s.ts_ms) == 900
    meta = json.loads((hist[0].parent / "fleet.json").read_text())
    assert all(not d["faults"] for d in meta["devices"])
    assert not (tmp_path / "fleet" / "run").exists()  # history alone writes no replay


def test_the_shipped_fleet_bundle_reads_the_fleet_and_says_where_it_came_from(
    tmp_path: Path,
) -> None:
    path = packaged_dir(FLEET_NAME)
    assert path is not None, "gapwatch/demo/model/fleet/<version>/ is missing"
    m = load_bundle(path).manifest
    assert m.name == FLEET_NAME and m.channel_names == CHANNELS
    assert "edge.fleet" in m.training["source"]
    assert "no third-party data" in m.training["data_license"]
    # the fleet's replay picks it; a trained bundle for other channels is passed over
    got, origin = resolve_offline(None, tmp_path, packaged=FLEET_NAME, channels=CHANNELS)
    assert got == path and origin == "shipped with the package"


def test_rebase_moves_stamps_to_the_present_and_never_ahead_of_sending(tmp_path: Path) -> None:
    files = fleet_replay(tmp_path, SMALL)
    reps = load_replays(files, GapSettings(seed=1))
    now = 1_800_000_000_123
    span = int(reps[0].series.ts_ms[-1] - reps[0].series.ts_ms[0])
    for speed in (0.0, 10.0, 0.5):
        moved = rebase(reps, [speed] * len(reps), now, 1000)
        for before, after in zip(reps, moved, strict=True):
            shift = after.series.ts_ms - before.series.ts_ms
            assert np.all(shift == shift[0]) and shift[0] % 1000 == 0
            offset = (after.series.ts_ms - after.series.ts_ms[0]) / 1000.0
            sent_ms = now + (1000 * offset / speed if speed else 0 * offset)
            assert np.all(after.series.ts_ms <= sent_ms)
            assert np.array_equal(after.gaps.withheld, before.gaps.withheld)
        if speed == 10.0:
            assert now - 1000 < moved[0].series.ts_ms[-1] - span / 10 <= now


def test_offline_demo_without_any_data_runs_the_fleet(tmp_path: Path) -> None:
    """The bare-clone run: the shared data hidden, no --data; summary from the fleet's labels."""
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    state = tmp_path / "state"
    env = {**os.environ, "GAPWATCH_DATA_DIR": str(empty), "GAPWATCH_DEMO_DATA": ""}
    args = ["--offline", "--state-dir", str(state), "--fleet-devices", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "gapwatch", "demo", *args, "--fleet-minutes", "25", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "simulated fleet" in result.stderr and "shipped with the package" in result.stderr
    summary = json.loads((state / "offline" / "summary.json").read_text())
    assert summary["devices"] == 3 and summary["model"].startswith(f"{FLEET_NAME}/")
    det = summary["detection"]
    assert det is not None and det["segments"] >= 3 and det["labelled_ticks"] > 0
    kinds = {row["kind"]: row for row in summary["imputation"]}
    for kind in ("all", "random drops", "channel silent", "device silent"):
        row = kinds[kind]
        assert row["entries"] > 0 and np.isfinite([row["vae"], row["locf"], row["linear"]]).all()
    assert "F1" in result.stdout and "LOCF" in result.stdout
    assert (state / "fleet" / "run" / "pump-03.csv").is_file()
