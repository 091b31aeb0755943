"""SKAB replayed through the simulator and the real agent (Mosquitto -> agent -> Kafka).

One tick per device per grid step comes out (revision 0), plus back-fill revisions; injected gaps
are marked imputed with a σ; imputed values beat last-observation-carried-forward on the
injected channel outages; alarms fall inside the labelled anomaly far more often than outside.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.schema import ScoredTick
from edge.simulate import main as simulate
from edge.simulate import read_series

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("GAPWATCH_DATA_DIR", REPO / ".." / "shared" / "data"))
SKAB = DATA / "skab" / "other" / "3.csv"
ROWS = 900
OUTAGES = {"Pressure": (460, 60), "Voltage": (480, 40)}  # seconds after the first row
DEVICE_OUTAGE = (530, 8)


def test_skab_replay_is_scored_imputed_and_flagged(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
) -> None:
    agent = agent_runner(agent_skab_bundles, align__lateness_ticks="2")
    agent.start()
    agent.wait_ready()
    truth_path = tmp_path / "truth.csv"
    args = [str(SKAB), "--mqtt", "{}:{}".format(*mqtt_addr), "--site", "lab"]
    args += ["--topic", agent.prefix + "/{site}/{device}", "--speed", "0", "--rows", str(ROWS)]
    for ch, (start, secs) in OUTAGES.items():
        args += ["--outage", f"{ch}:{start}:{secs}"]
    args += ["--device-outage", f"{DEVICE_OUTAGE[0]}:{DEVICE_OUTAGE[1]}"]
    args += ["--drop-rate", "0.02", "--seed", "3", "--truth", str(truth_path)]
    assert simulate(args) == 0

    series = read_series(SKAB, max_rows=ROWS)
    first, last = int(series.ts_ms[0]), int(series.ts_ms[-1])
    grid = set(range(first, last + 1, 1000))

    def complete(values: list[bytes]) -> bool:
        got = {t.ts_ms for t in map(ScoredTick.decode, values) if t.revision == 0}
        return grid <= got

    ticks = [ScoredTick.decode(v) for v in agent_kafka_reader(f"{agent.prefix}.scored", complete)]
    assert agent.stop() == 0, agent.log_text()
    keys = Counter((t.key, t.ts_ms, t.revision) for t in ticks)
    assert [k for k, n in keys.items() if n > 1] == []  # no duplicate (device, ts, revision)
    causal = {t.ts_ms: t for t in ticks if t.revision == 0}
    assert grid <= set(causal)  # one causal record per grid tick
    assert {t.key for t in ticks} == {"lab/skab-other-3"}
    assert {(t.model, t.model_version) for t in ticks} == {("skab", "1")}
    backfills = [t for t in ticks if t.revision == 1]
    assert len(backfills) > 50 and all(b.ts_ms in causal for b in backfills)

    truth = list(csv.DictReader(truth_path.open()))
    assert len(truth) > 100
    for row in truth:  # every withheld value is imputed, with a σ
        tick = causal[int(row["ts_ms"])]
        assert row["channel"] in tick.imputed, row
        assert tick.sigma[row["channel"]] > 0

    # imputation vs last observation carried forward, on the channel outages
    published = series.values.copy()
    withheld = {(int(r["ts_ms"]), r["channel"]) for r in truth}
    for i, ts in enumerate(series.ts_ms):
        for c, ch in enumerate(series.channels):
            if (int(ts), ch) in withheld:
                published[i, c] = np.nan
    errors: dict[str, list[float]] = {"vae": [], "locf": []}
    for ch, (start, secs) in OUTAGES.items():
        c = series.channels.index(ch)
        for r in (r for r in truth if r["channel"] == ch):
            ts = int(r["ts_ms"])
            if not first + start * 1000 <= ts < first + (start + secs) * 1000:
                continue
            before = published[(series.ts_ms < ts) & ~np.isnan(published[:, c]), c]
            errors["vae"].append(abs(causal[ts].values[ch] - float(r["value"])))  # type: ignore[operator]
            errors["locf"].append(abs(before[-1] - float(r["value"])))
    mae = {k: float(np.mean(v)) for k, v in errors.items()}
    assert len(errors["vae"]) > 60
    assert mae["vae"] < mae["locf"], mae

    # alarms: inside the labelled anomaly far more often than outside it
    labels = [float(r["anomaly"]) > 0 for r in csv.DictReader(SKAB.open(), delimiter=";")][:ROWS]
    flags = np.array([causal[int(ts)].anomaly for ts in series.ts_ms])
    inside = float(flags[np.array(labels)].mean())
    outside = float(flags[~np.array(labels)].mean())
    assert inside > 0.5 and inside > 3 * outside, (inside, outside)
    assert agent.log_events()  # structured JSON logs were written
