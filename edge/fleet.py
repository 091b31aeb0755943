"""A deterministic fleet of simulated pump rigs: the default data when no history is at hand.

Original code, pure numpy (the ``edge`` extra only). Each device is a water-circulation rig: a
centrifugal pump on a variable-speed drive pushing water through a valve into a closed loop.
Channels, one reading per tick (1 s by default)::

    flow        m3/h   where the pump curve meets the system curve
    pressure    bar    discharge head: static head + resistance x flow^2 (so ~ flow^2)
    current     A      shaft power (hydraulic power / efficiency + losses) over the voltage
    voltage     V      mains, with a slow daily drift and a sag under load
    vib_pump    mm/s   RMS vibration of the pump, ~ speed^2, worse away from the best point
    vib_motor   mm/s   RMS vibration of the motor bearings, ~ speed^2
    temp_motor  degC   winding temperature, lagging current^2 (time constant ~10 min)
    temp_fluid  degC   water temperature, lagging ambient and pump heat (~30 min)

Operating points change (three drive speeds, three valve positions) at random times with a
short ramp; ambient temperature and mains voltage drift over the day. Two kinds of noise: process
noise (drive speed ripple, turbulence at the valve, mains flicker) that moves every coupled
channel together, and each sensor's own white noise. Faults, each a labelled segment
(``anomaly`` 1, ``fault`` its kind):

- ``cavitation``: the pump loses head, pressure and flow fluctuate, pump vibration jumps;
- ``bearing_wear``: motor vibration grows, friction makes the motor draw more current;
- ``sticking_valve``: the valve sticks and slips around its set point (a saw-tooth in flow
  and pressure);
- ``leak``: water leaves before the flow meter: less flow metered, lower pressure, the pump
  working harder;
- ``sensor_drift``: one sensor's reading walks away from the truth;
- ``stuck_at``: one sensor freezes at its last value while the process moves on;
- ``spikes``: a burst of single-tick spikes on the readings (a loose connector).

Everything is a function of ``(seed, device index, stream)`` and the start time, so the same
call gives the same numbers on every machine. :func:`simulate_device` returns arrays;
:func:`write_history` writes one CSV per device (``timestamp`` in ISO 8601 UTC, the channels,
``anomaly``) plus ``fleet.json`` with the fault segments: the shape ``gapwatch train``,
``gapwatch simulate`` and ``gapwatch demo --data`` read.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CHANNELS",
    "FAULT_KINDS",
    "HISTORY_FILE",
    "UNITS",
    "DeviceRun",
    "Fault",
    "FleetConfig",
    "Rig",
    "device_names",
    "operating_point",
    "rig_of",
    "simulate_device",
    "simulate_fleet",
    "write_history",
]

CHANNELS = (
    "flow",
    "pressure",
    "current",
    "voltage",
    "vib_pump",
    "vib_motor",
    "temp_motor",
    "temp_fluid",
)
UNITS = {
    "flow": "m3/h",
    "pressure": "bar",
    "current": "A",
    "voltage": "V",
    "vib_pump": "mm/s",
    "vib_motor": "mm/s",
    "temp_motor": "degC",
    "temp_fluid": "degC",
}
FAULT_KINDS = (
    "cavitation",
    "bearing_wear",
    "sticking_valve",
    "leak",
    "sensor_drift",
    "stuck_at",
    "spikes",
)
# Sensor noise (one standard deviation) per channel, in the channel's unit.
NOISE = np.array([0.12, 0.004, 0.03, 0.3, 0.04, 0.03, 0.08, 0.05])
# The rig's operating points: drive speed (fraction of full) and valve opening set points.
SPEEDS = (0.8, 0.9, 1.0)
VALVES = (0.7, 0.85, 1.0)
# Channels a sensor fault (drift, stuck-at) can hit.
SENSOR_FAULT_CHANNELS = ("flow", "pressure", "current", "temp_fluid")
HISTORY_FILE = "fleet.json"
DAY_S = 86_400.0


@dataclass(frozen=True)
class FleetConfig:
    """What a fleet run is made of; the seed and these fields fix every number."""

    devices: int = 8
    seed: int = 0
    tick_seconds: float = 1.0
    clean_ticks: int = 600  # no fault in a device's first ticks (the agent's warm-up)
    fault_ticks: tuple[int, int] = (150, 360)  # length of a fault segment, min and max
    normal_ticks: tuple[int, int] = (240, 480)  # normal ticks between faults, min and max
    change_every_s: float = 600.0  # mean time between operating-point changes


@dataclass(frozen=True)
class Fault:
    device: str
    kind: str  # one of FAULT_KINDS
    start: int  # first tick of the segment
    stop: int  # one past its last tick
    channel: str | None = None  # the sensor a drift or stuck-at hits


@dataclass(frozen=True)
class DeviceRun:
    device: str
    ts_ms: NDArray[np.int64]  # [T] epoch ms, UTC, one per tick
    values: NDArray[np.float64]  # [T, C] readings in CHANNELS order
    anomaly: NDArray[np.int8]  # [T] 1 inside a fault segment
    fault: NDArray[np.int8]  # [T] 1 + index into FAULT_KINDS, 0 when normal
    faults: tuple[Fault, ...]
    channels: tuple[str, ...] = CHANNELS


@dataclass(frozen=True)
class Rig:
    """One device's physical constants (drawn once per seed and device)."""

    shutoff_head_m: float  # pump head at zero flow, full speed
    pump_k: float  # head lost per (m3/h)^2 inside the pump
    static_head_m: float  # lift the loop needs before anything flows
    resistance: float  # system head per (m3/h)^2 with the valve fully open
    best_flow: float  # flow at the best efficiency point, full speed
    best_eff: float  # pump efficiency there
    motor_eff: float
    mains_v: float
    loss_kw: float
    vib_pump: float  # mm/s at full speed
    vib_motor: float
    temp_rise: float  # degC per A^2 of winding heating
    phase: float  # of the daily ambient cycle


def device_names(n: int) -> list[str]:
    """``pump-01`` ... in fleet order."""
    return [f"pump-{k + 1:02d}" for k in range(n)]


def rig_of(seed: int, index: int) -> Rig:
    """Device ``index``'s physical constants under ``seed``."""
    r = np.random.default_rng([seed, index, 0])
    u = r.uniform
    shutoff = u(42.0, 55.0)
    best = u(38.0, 55.0)
    static = u(4.0, 9.0)
    # the design point: at full speed, fully open, the rig runs near its best flow
    design_head = shutoff * u(0.72, 0.8)
    pump_k = (shutoff - design_head) / best**2
    resistance = (design_head - static) / best**2
    return Rig(
        shutoff_head_m=shutoff,
        pump_k=pump_k,
        static_head_m=static,
        resistance=resistance,
        best_flow=best,
        best_eff=u(0.68, 0.8),
        motor_eff=u(0.88, 0.93),
        mains_v=u(395.0, 405.0),
        loss_kw=u(0.3, 0.6),
        vib_pump=u(1.6, 2.6),
        vib_motor=u(0.9, 1.5),
        temp_rise=u(0.012, 0.02),
        phase=u(0.0, 2 * math.pi),
    )


def _lag(x: NDArray[np.float64], tau_ticks: float, start: float) -> NDArray[np.float64]:
    """First-order lag (exponential smoothing) of ``x`` with time constant ``tau_ticks``."""
    a = 1.0 - math.exp(-1.0 / max(tau_ticks, 1e-9))
    out = np.empty_like(x)
    y = start
    for i, v in enumerate(x.tolist()):
        y += a * (v - y)
        out[i] = y
    return out


def _wobble(r: np.random.Generator, n: int, tau_ticks: float, sd: float) -> NDArray[np.float64]:
    """Stationary AR(1) noise: standard deviation ``sd``, correlation time ``tau_ticks``."""
    a = math.exp(-1.0 / max(tau_ticks, 1e-9))
    e = r.standard_normal(n) * sd * math.sqrt(1.0 - a * a)
    out = np.empty(n)
    y = float(r.standard_normal()) * sd
    for i, v in enumerate(e.tolist()):
        y = a * y + v
        out[i] = y
    return out


def _other(r: np.random.Generator, levels: Sequence[float], current: float) -> float:
    return float(r.choice([v for v in levels if v != current]))


def _steps(
    r: np.random.Generator, n: int, every: float, levels: Sequence[float]
) -> NDArray[np.float64]:
    """A set point: one of ``levels``, another at Poisson times, each held until the next."""
    level = np.empty(n)
    i, value = 0, float(r.choice(levels))
    while i < n:
        hold = max(60, round(r.exponential(every)))
        level[i : i + hold] = value
        i += hold
        value = _other(r, levels, value)
    return level


def _schedule(
    config: FleetConfig, r: np.random.Generator, device: str, index: int, n: int
) -> list[Fault]:
    """Fault segments after the clean start; kinds cycle so the fleet shows every kind."""
    faults: list[Fault] = []
    t = config.clean_ticks + int(r.integers(*config.normal_ticks)) // 2
    k = index
    while True:
        length = int(r.integers(config.fault_ticks[0], config.fault_ticks[1] + 1))
        if t + length > n:
            break
        kind = FAULT_KINDS[k % len(FAULT_KINDS)]
        channel = None
        if kind in {"sensor_drift", "stuck_at"}:
            channel = SENSOR_FAULT_CHANNELS[int(r.integers(len(SENSOR_FAULT_CHANNELS)))]
        faults.append(Fault(device, kind, t, t + length, channel))
        t += length + int(r.integers(config.normal_ticks[0], config.normal_ticks[1] + 1))
        k += 1
    return faults


def operating_point(
    rig: Rig,
    speed: NDArray[np.float64],
    valve: NDArray[np.float64],
    *,
    head_loss: NDArray[np.float64] | float = 0.0,
    leak: NDArray[np.float64] | float = 0.0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(pumped flow m3/h, head m)`` where the pump curve meets the system curve.

    Pump: ``H = H0 (1 - head_loss) s^2 - k Q^2``; system: ``H = Hs + R / v^2 (Q (1 - leak))^2``
    (a leak before the meter takes a fraction of the pumped flow out of the loop).
    """
    h0 = rig.shutoff_head_m * speed**2 * (1.0 - head_loss)
    system = rig.resistance / valve**2 * (1.0 - leak) ** 2
    q = np.sqrt(np.maximum(h0 - rig.static_head_m, 0.1) / (rig.pump_k + system))
    return q, rig.static_head_m + system * q**2


def simulate_device(
    config: FleetConfig,
    index: int,
    start_ms: int,
    ticks: int,
    *,
    faults: bool = True,
    stream: int = 1,
) -> DeviceRun:
    """One device's readings for ``ticks`` ticks from ``start_ms`` (pure, seeded).

    ``stream`` picks an independent realisation of the same rig (history and a live run of
    one device differ in noise and set points but not in physics).
    """
    device = device_names(index + 1)[index]
    rig = rig_of(config.seed, index)
    r = np.random.default_rng([config.seed, index, stream])
    rf = np.random.default_rng([config.seed, index, stream, 1])  # faults only: same process
    n = ticks
    dt = config.tick_seconds
    t_s = start_ms / 1000.0 + dt * np.arange(n)
    every = config.change_every_s / dt
    schedule = _schedule(config, rf, device, index, n) if faults else []
    speed, valve, flicker = _drive(r, rf, n=n, every=every, dt=dt, schedule=schedule)
    ambient = (
        20.0
        + 4.0 * np.sin(2 * math.pi * t_s / DAY_S + rig.phase)
        + np.cumsum(r.normal(0.0, 0.002 * math.sqrt(dt), n))
    )
    sev = _severities(schedule, n)

    # valve sticking: the opening holds, then slips, a saw-tooth of period ~40 s
    period = 40.0 / dt
    saw = (np.arange(n) % period) / period
    valve = valve * (1.0 - 0.35 * sev["sticking_valve"] * (saw - 0.5))

    # hydraulics: pump curve H = H0 s^2 - k Q^2 meets system curve H = Hs + R/v^2 Q^2
    cav = sev["cavitation"]
    churn = r.standard_normal((2, n))  # the turbulence of cavitation, drawn in every run
    head_loss = 0.18 * cav * (1.0 + 0.6 * churn[0])
    leak = 0.25 * sev["leak"]  # fraction of the pumped water lost before the meter
    q_pump, head = operating_point(rig, speed, valve, head_loss=head_loss, leak=leak)
    flow = (1.0 - leak) * q_pump
    pressure = 0.0981 * head
    # power: hydraulic / pump efficiency (best at speed-scaled best flow) + losses
    rel = q_pump / (rig.best_flow * speed)
    eff = rig.best_eff * np.clip(1.0 - 0.6 * (rel - 1.0) ** 2, 0.3, 1.0)
    p_hyd = 2.725e-3 * q_pump * head  # kW
    wear = sev["bearing_wear"]
    p_shaft = p_hyd / eff + rig.loss_kw * speed**3 + 0.35 * wear
    voltage_true = (
        rig.mains_v
        + 3.0 * np.sin(2 * math.pi * t_s / DAY_S + rig.phase + 1.0)
        + np.cumsum(r.normal(0.0, 0.01 * math.sqrt(dt), n))
        + flicker
    )
    current = p_shaft * 1000.0 / (math.sqrt(3) * voltage_true * 0.86 * rig.motor_eff)
    voltage = voltage_true - 0.12 * current
    vib_pump, vib_motor = _vibration(rig, speed, rel, cav * (1.2 + 0.5 * np.abs(churn[1])), wear)
    temp_motor, temp_fluid = _temperatures(rig, ambient, current, p_shaft, dt)

    true = np.stack(
        [flow, pressure, current, voltage, vib_pump, vib_motor, temp_motor, temp_fluid], axis=1
    )
    noise = NOISE * r.standard_normal((n, len(CHANNELS)))
    noise[:, 1] *= 1.0 + 4.0 * cav  # cavitation: pressure fluctuates
    values = true + noise
    label, kind_of = _apply_sensor_faults(values, true, schedule, rf)
    ts = start_ms + np.round(1000.0 * dt * np.arange(n)).astype(np.int64)
    return DeviceRun(device, ts, values, label, kind_of, tuple(schedule))


def _drive(
    r: np.random.Generator,
    rf: np.random.Generator,
    *,
    n: int,
    every: float,
    dt: float,
    schedule: Sequence[Fault],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Drive speed and valve opening as the actuators follow their set points; mains flicker."""
    # set points: drive speed (fraction of full) and valve opening, ramped by the actuators
    speed_sp = _steps(r, n, every, SPEEDS)
    valve_sp = _steps(r, n, 2.5 * every, VALVES)
    for f in schedule:  # a stuck sensor only shows when the process moves: move it mid-way
        if f.kind == "stuck_at":
            mid = (f.start + f.stop) // 2
            speed_sp[mid : f.stop] = _other(rf, SPEEDS, float(speed_sp[mid]))
    # process noise, shared by every channel the physics couples: drive speed ripple,
    # turbulence at the valve, mains flicker (each a first-order autoregressive wobble)
    ripple = _wobble(r, n, 4.0 / dt, 0.006)
    turbulence = _wobble(r, n, 2.0 / dt, 0.015)
    flicker = _wobble(r, n, 3.0 / dt, 0.8)
    speed = _lag(speed_sp, 15.0 / dt, float(speed_sp[0])) * (1.0 + ripple)
    valve = _lag(valve_sp, 8.0 / dt, float(valve_sp[0])) * (1.0 + turbulence)
    return speed, valve, flicker


def _vibration(
    rig: Rig,
    speed: NDArray[np.float64],
    rel: NDArray[np.float64],
    cavitation: NDArray[np.float64],
    wear: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Vibration RMS ~ speed², the pump worse off its best point, cavitation and wear on top."""
    vib_pump = rig.vib_pump * speed**2 * (1.0 + 0.8 * (rel - 1.0) ** 2)
    vib_pump = vib_pump * (1.0 + cavitation)
    vib_motor = rig.vib_motor * speed**2 * (1.0 + 1.8 * wear)
    return vib_pump, vib_motor


def _temperatures(
    rig: Rig,
    ambient: NDArray[np.float64],
    current: NDArray[np.float64],
    p_shaft: NDArray[np.float64],
    dt: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Motor and fluid temperatures, lagging their causes (copper losses, shaft power)."""
    drive = ambient + 25.0 + rig.temp_rise * current**2
    temp_motor = _lag(drive, 600.0 / dt, float(drive[0]))
    heat = 0.8 * p_shaft
    temp_fluid = _lag(ambient + 4.0 + heat, 1800.0 / dt, float(ambient[0] + 4.0 + heat[0]))
    return temp_motor, temp_fluid


def _severities(schedule: Sequence[Fault], n: int) -> dict[str, NDArray[np.float64]]:
    """Per fault kind, 0..1 over the ticks: each fault ramps up over its first fifth."""
    sev = {kind: np.zeros(n) for kind in FAULT_KINDS}
    for f in schedule:
        length = f.stop - f.start
        ramp = np.minimum(1.0, np.arange(1, length + 1) / max(1.0, 0.2 * length))
        sev[f.kind][f.start : f.stop] = ramp
    return sev


def _apply_sensor_faults(
    values: NDArray[np.float64],
    true: NDArray[np.float64],
    schedule: Sequence[Fault],
    rf: np.random.Generator,
) -> tuple[NDArray[np.int8], NDArray[np.int8]]:
    """Sensor faults (drift, stuck-at, spikes) on ``values`` in place; (labels, kinds)."""
    n = values.shape[0]
    label = np.zeros(n, dtype=np.int8)
    kind_of = np.zeros(n, dtype=np.int8)
    for f in schedule:
        seg = slice(f.start, f.stop)
        label[seg] = 1
        kind_of[seg] = FAULT_KINDS.index(f.kind) + 1
        length = f.stop - f.start
        if f.kind == "sensor_drift" and f.channel is not None:
            c = CHANNELS.index(f.channel)
            span = float(np.std(true[: f.start, c])) if f.start > 1 else 1.0
            growth = np.minimum(1.0, np.arange(1, length + 1) / (0.25 * length))
            sign = 1.0 if rf.random() < 0.5 else -1.0
            values[seg, c] += sign * growth * max(2.5 * span, 12.0 * NOISE[c])
        elif f.kind == "stuck_at" and f.channel is not None:
            c = CHANNELS.index(f.channel)
            values[seg, c] = values[f.start, c]
        elif f.kind == "spikes":
            hit = rf.random(length) < 0.25
            chans = rf.integers(0, len(CHANNELS), length)
            rows = np.arange(f.start, f.stop)[hit]
            cols = chans[hit]
            scale = np.abs(true[rows, cols]) * rf.uniform(0.25, 0.6, rows.size) + 20 * NOISE[cols]
            values[rows, cols] += np.where(rf.random(rows.size) < 0.5, -1.0, 1.0) * scale
    return label, kind_of


def simulate_fleet(
    config: FleetConfig, start_ms: int, ticks: int, *, faults: bool = True, stream: int = 1
) -> list[DeviceRun]:
    """Every device of the fleet over the same ticks."""
    return [
        simulate_device(config, k, start_ms, ticks, faults=faults, stream=stream)
        for k in range(config.devices)
    ]


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000.0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_history(
    out: Path, runs: Sequence[DeviceRun], config: FleetConfig, *, digits: int = 5
) -> list[Path]:
    """One ``<device>.csv`` per run (``timestamp``, channels, ``anomaly``) and ``fleet.json``.

    Files are written to a temporary name and renamed, so a reader never sees half a file.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for run in runs:
        path = out / f"{run.device}.csv"
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["timestamp", *run.channels, "anomaly"])
            for i in range(len(run.ts_ms)):
                w.writerow(
                    [
                        _iso(int(run.ts_ms[i])),
                        *(f"{v:.{digits}g}" for v in run.values[i]),
                        int(run.anomaly[i]),
                    ]
                )
        tmp.replace(path)
        paths.append(path)
    meta = {
        "generator": "edge.fleet",
        "config": asdict(config),
        "channels": list(CHANNELS),
        "units": UNITS,
        "devices": [
            {
                "device": run.device,
                "file": f"{run.device}.csv",
                "start": _iso(int(run.ts_ms[0])) if len(run.ts_ms) else None,
                "ticks": len(run.ts_ms),
                "faults": [
                    {**asdict(f), "start_time": _iso(int(run.ts_ms[f.start]))} for f in run.faults
                ],
            }
            for run in runs
        ],
    }
    tmp = out / (HISTORY_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / HISTORY_FILE)
    return paths
