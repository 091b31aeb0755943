"""The simulated fleet: deterministic, physically coupled, faults where and only where labelled."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edge.fleet import (
    CHANNELS,
    FAULT_KINDS,
    NOISE,
    DeviceRun,
    FleetConfig,
    operating_point,
    rig_of,
    simulate_device,
    simulate_fleet,
    write_history,
)
from edge.simulate import read_series

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TICKS = 3600
CONFIG = FleetConfig()
CH = {c: i for i, c in enumerate(CHANNELS)}


@pytest.fixture(scope="module")
def pairs() -> list[tuple[DeviceRun, DeviceRun]]:
    """Every device with faults, and the same process (same stream) without them."""
    return [
        (
            simulate_device(CONFIG, k, START, TICKS, faults=True),
            simulate_device(CONFIG, k, START, TICKS, faults=False),
        )
        for k in range(CONFIG.devices)
    ]


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    a = simulate_fleet(CONFIG, START, 600)
    b = simulate_fleet(CONFIG, START, 600)
    c = simulate_fleet(FleetConfig(seed=1), START, 600)
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x.values, y.values) and np.array_equal(x.ts_ms, y.ts_ms)
        assert not np.allclose(x.values, z.values)
    assert len({r.device for r in a}) == CONFIG.devices
    # another stream is another realisation of the same rig: close, not equal
    d = simulate_device(CONFIG, 0, START, 600, stream=2)
    assert not np.array_equal(d.values, a[0].values)


def test_ticks_are_regular_and_readings_plausible(
    pairs: list[tuple[DeviceRun, DeviceRun]],
) -> None:
    for run, _ in pairs:
        assert run.values.shape == (TICKS, len(CHANNELS))
        assert np.all(np.diff(run.ts_ms) == 1000) and run.ts_ms[0] == START
        assert np.isfinite(run.values).all()
        v = run.values
        assert 10 < np.median(v[:, CH["flow"]]) < 80
        assert 0.5 < np.median(v[:, CH["pressure"]]) < 6
        assert 370 < np.median(v[:, CH["voltage"]]) < 420
        assert 15 < np.median(v[:, CH["temp_fluid"]]) < np.median(v[:, CH["temp_motor"]])


def test_channels_are_coupled_by_the_physics(pairs: list[tuple[DeviceRun, DeviceRun]]) -> None:
    for _, normal in pairs:
        v = normal.values
        flow, pressure, current = v[:, CH["flow"]], v[:, CH["pressure"]], v[:, CH["current"]]
        # current follows hydraulic power
        assert np.corrcoef(current, flow * pressure)[0, 1] > 0.9
        # both vibrations follow the drive speed
        assert np.corrcoef(v[:, CH["vib_motor"]], v[:, CH["vib_pump"]])[0, 1] > 0.5
        # the winding temperature lags current^2: it matches the smoothed past better
        i2 = current**2
        smooth = np.convolve(i2, np.ones(600) / 600)[: len(i2)]
        ok = slice(600, None)
        lagged = np.corrcoef(v[ok, CH["temp_motor"]], smooth[ok])[0, 1]
        assert lagged > np.corrcoef(v[ok, CH["temp_motor"]], i2[ok])[0, 1]


def test_operating_point_sits_on_both_curves() -> None:
    rig = rig_of(0, 3)
    speed = np.linspace(0.7, 1.0, 7)
    q, head = operating_point(rig, speed, np.ones(7))
    pump = rig.shutoff_head_m * speed**2 - rig.pump_k * q**2
    system = rig.static_head_m + rig.resistance * q**2
    assert np.allclose(head, pump) and np.allclose(head, system)
    # one valve, faster pump: along the system curve, pressure ~ flow^2 above the static head
    assert np.allclose((head - rig.static_head_m) / q**2, rig.resistance)
    # one speed, the valve closing: along the pump curve, less flow at more head
    q2, head2 = operating_point(rig, np.ones(5), np.linspace(1.0, 0.6, 5))
    assert np.all(np.diff(q2) < 0) and np.all(np.diff(head2) > 0)
    # a leak before the meter: the pump pushes more at less head
    q3, head3 = operating_point(rig, np.ones(1), np.ones(1), leak=0.2)
    assert q3[0] > q2[0] and head3[0] < head2[0]


def test_labels_match_the_fault_segments(pairs: list[tuple[DeviceRun, DeviceRun]]) -> None:
    kinds = set()
    for run, normal in pairs:
        assert not normal.anomaly.any() and not normal.faults
        assert not run.anomaly[: CONFIG.clean_ticks].any()  # the warm-up is clean
        expect = np.zeros(TICKS, dtype=np.int8)
        for f in run.faults:
            assert CONFIG.fault_ticks[0] <= f.stop - f.start <= CONFIG.fault_ticks[1]
            expect[f.start : f.stop] = FAULT_KINDS.index(f.kind) + 1
            kinds.add(f.kind)
        assert np.array_equal(run.fault, expect)
        assert np.array_equal(run.anomaly, (expect > 0).astype(np.int8))
        assert 0.15 < run.anomaly.mean() < 0.5
        # before the first fault the faulty run is the normal run, tick for tick
        first = run.faults[0].start
        assert np.array_equal(run.values[:first], normal.values[:first])
    assert kinds == set(FAULT_KINDS)  # the fleet shows every kind in an hour


def _effect(run: DeviceRun, normal: DeviceRun, start: int, stop: int) -> dict[str, float]:
    seg = slice(start, stop)
    diff = run.values[seg] - normal.values[seg]
    return {c: float(np.mean(diff[:, i]) / NOISE[i]) for c, i in CH.items()}


def test_each_fault_shows_in_its_segment(pairs: list[tuple[DeviceRun, DeviceRun]]) -> None:
    for run, normal in pairs:
        for f in run.faults:
            seg = slice(f.start, f.stop)
            mean = _effect(run, normal, f.start, f.stop)
            if f.kind == "cavitation":
                assert mean["vib_pump"] > 10 and mean["pressure"] < -10 and mean["flow"] < -5
            elif f.kind == "bearing_wear":
                assert mean["vib_motor"] > 10 and mean["current"] > 2
            elif f.kind == "sticking_valve":
                wobble = (run.values[seg] - normal.values[seg]).std(axis=0) / NOISE
                assert wobble[CH["flow"]] > 3 and wobble[CH["pressure"]] > 3
            elif f.kind == "leak":
                assert mean["flow"] < -3 and mean["pressure"] < -10 and mean["current"] > 2
            elif f.kind == "sensor_drift":
                assert f.channel is not None
                assert abs(mean[f.channel]) > 5
                others = [c for c in ("voltage", "vib_motor") if c != f.channel]
                assert all(abs(mean[c]) < 1 for c in others)
            elif f.kind == "stuck_at":
                assert f.channel is not None
                assert np.ptp(run.values[seg, CH[f.channel]]) == 0
                assert np.ptp(run.values[seg, CH["voltage"]]) > 0
            elif f.kind == "spikes":
                jumps = np.abs(run.values[seg] - normal.values[seg]) / NOISE
                assert (jumps > 15).sum() > 0.1 * (f.stop - f.start)
            else:  # pragma: no cover - a new kind needs its check here
                raise AssertionError(f.kind)
        # outside every segment (and the thermal tail after it) nothing differs
        quiet = np.ones(TICKS, dtype=bool)
        for f in run.faults:
            quiet[f.start : f.stop + 3600] = False
        assert np.array_equal(run.values[quiet], normal.values[quiet])


def test_history_files_read_back_as_series_and_labels(tmp_path: Path) -> None:
    runs = simulate_fleet(FleetConfig(devices=2), START, 900)
    paths = write_history(tmp_path, runs, FleetConfig(devices=2))
    assert [p.name for p in paths] == ["pump-01.csv", "pump-02.csv"]
    s = read_series(paths[0])
    assert s.device == "pump-01" and s.channels == CHANNELS
    assert np.array_equal(s.ts_ms, runs[0].ts_ms)
    assert np.allclose(s.values, runs[0].values, rtol=1e-4)
    with paths[0].open() as fh:
        labels = [int(row["anomaly"]) for row in csv.DictReader(fh)]
    assert labels == runs[0].anomaly.tolist()
    meta = json.loads((tmp_path / "fleet.json").read_text())
    assert meta["config"]["devices"] == 2 and meta["channels"] == list(CHANNELS)
    assert [f["kind"] for f in meta["devices"][0]["faults"]] == [f.kind for f in runs[0].faults]
    assert not list(tmp_path.glob("*.tmp"))
