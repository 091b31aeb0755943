"""Faults around the real agent: SIGKILL, a Kafka outage, malformed payloads, model reloads.

Every test replays part of SKAB other/3 with ``gapwatch simulate`` into its own MQTT prefix and
reads its own Kafka topics. The Kafka outage uses a private broker started with
``deploy/local/stack`` in a temporary state dir, so the shared broker is never stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.bundle import MODEL_FILE, read_manifest, write_bundle
from edge.schema import DeadLetter, ScoredTick
from edge.simulate import read_series

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("GAPWATCH_DATA_DIR", REPO / ".." / "shared" / "data"))
SKAB = DATA / "skab" / "other" / "3.csv"
STACK = REPO / "deploy" / "local" / "stack"


def simulate(
    agent: Any, mqtt_addr: tuple[str, int], *extra: str, site: str = "lab"
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gapwatch", "simulate", str(SKAB), "--site", site]
    cmd += ["--mqtt", "{}:{}".format(*mqtt_addr), "--topic", agent.prefix + "/{site}/{device}"]
    return subprocess.Popen([*cmd, *extra], cwd=REPO, stdout=subprocess.DEVNULL)


def grid(skip: int, rows: int) -> set[int]:
    s = read_series(SKAB, max_rows=skip + rows)
    return set(range(int(s.ts_ms[skip]), int(s.ts_ms[-1]) + 1, 1000))


def published(skip: int, rows: int) -> dict[int, dict[str, float]]:
    """``ts_ms -> channel values`` of the rows ``gapwatch simulate`` publishes.

    SKAB other/3 has 2 s gaps (33 in its first 600 rows): those grid ticks have no message and
    are imputed by design, so they are not in this map.
    """
    s = read_series(SKAB, max_rows=skip + rows)
    return {
        int(s.ts_ms[i]): {c: float(s.values[i, j]) for j, c in enumerate(s.channels)}
        for i in range(skip, len(s.ts_ms))
    }


def _same_values(got: dict[str, float | None], want: dict[str, float]) -> bool:
    return all(
        (g := got.get(c)) is not None and math.isclose(g, v, rel_tol=1e-6, abs_tol=1e-9)
        for c, v in want.items()
    )


def has_ticks(expected: set[int]) -> Callable[[list[bytes]], bool]:
    def check(values: list[bytes]) -> bool:
        return expected <= {t.ts_ms for t in map(ScoredTick.decode, values) if t.revision == 0}

    return check


def assert_once_each(values: list[bytes], sent: dict[int, dict[str, float]]) -> list[ScoredTick]:
    """No ``(device, ts, revision)`` twice, and every published message *observed* in its tick.

    A tick whose values were all imputed (its message never reached the model) is lost, not
    delivered: each published row must come back in its revision-0 tick with no imputed
    channel and the values it was published with.
    """
    ticks = [ScoredTick.decode(v) for v in values]
    keys = Counter((t.key, t.ts_ms, t.revision) for t in ticks)
    assert [k for k, n in keys.items() if n > 1] == [], "duplicated (device, ts, revision)"
    first = {t.ts_ms: t for t in ticks if t.revision == 0}
    absent = sorted(set(sent) - set(first))
    assert absent == [], f"{len(absent)} published ticks missing, e.g. {absent[:5]}"
    imputed = sorted(ts for ts in sent if first[ts].imputed)
    assert imputed == [], (
        f"{len(imputed)} published ticks came back imputed (their message was lost), "
        f"e.g. {[(ts, first[ts].imputed) for ts in imputed[:3]]}"
    )
    wrong = [ts for ts, row in sent.items() if not _same_values(first[ts].values, row)]
    assert wrong == [], f"{len(wrong)} ticks do not hold their published values, e.g. {wrong[:5]}"
    return ticks


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_replay_loses_nothing_and_duplicates_nothing(
    mqtt_addr: tuple[str, int],
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
) -> None:
    agent = agent_runner(agent_skab_bundles, align__lateness_ticks="2")
    agent.start()
    agent.wait_ready()
    sim = simulate(agent, mqtt_addr, "--rows", "400", "--speed", "80")
    wait_until("records reach Kafka", lambda: agent.metric("gapwatch_agent_kafka_acked_total") > 30)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(1.0)  # the simulator keeps publishing; the broker queues for our session
    agent.start()
    agent.wait_ready()
    assert sim.wait(60) == 0
    sent = published(0, 400)
    values = agent_kafka_reader(f"{agent.prefix}.scored", has_ticks(grid(0, 400)))
    assert agent.stop() == 0, agent.log_text()
    assert_once_each(values, sent)
    restart_events = {"agent.recovered", "forward.reconciled"}
    recovered = [e for e in agent.log_events() if e["event"] in restart_events]
    assert recovered, "the restarted agent neither replayed its journal nor reconciled"


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """A Kafka broker of our own (same stack script, own state dir and ports): ``ctl("stop")``."""
    ports = []
    for _ in range(5):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = dict(os.environ)
    env.update(
        GAPWATCH_STATE_DIR=str(tmp_path / "private-stack"),
        GAPWATCH_KAFKA_PORT=str(ports[0]),
        GAPWATCH_KAFKA_CONTROLLER_PORT=str(ports[1]),
        GAPWATCH_MQTT_PORT=str(ports[2]),
        GAPWATCH_INFLUX_PORT=str(ports[3]),
        GAPWATCH_INFLUX_RPC_PORT=str(ports[4]),
    )

    def ctl(action: str) -> None:
        subprocess.run(
            [str(STACK), action, "kafka"], env=env, check=True, capture_output=True, timeout=180
        )

    try:
        ctl("start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot start a private Kafka: {exc}")
    ctl.bootstrap = f"127.0.0.1:{ports[0]}"  # type: ignore[attr-defined]
    try:
        yield ctl
    finally:
        subprocess.run(
            [str(STACK), "stop", "kafka"], env=env, check=False, capture_output=True, timeout=180
        )


def test_kafka_outage_mid_replay_loses_nothing_and_duplicates_nothing(
    mqtt_addr: tuple[str, int],
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
    private_kafka: Any,
) -> None:
    bootstrap = private_kafka.bootstrap
    agent = agent_runner(
        agent_skab_bundles,
        kafka__bootstrap=f'"{bootstrap}"',
        kafka__request_timeout_ms="3000",
        kafka__delivery_timeout_ms="6000",
    )
    agent.start()
    agent.wait_ready()
    sim = simulate(agent, mqtt_addr, "--rows", "600", "--speed", "60")
    wait_until("records reach Kafka", lambda: agent.metric("gapwatch_agent_kafka_acked_total") > 30)
    private_kafka("stop")
    wait_until(
        "records waiting in the spool",
        lambda: agent.metric("gapwatch_agent_spool_records") > 100,
        timeout_s=30,
    )
    time.sleep(8.0)  # longer than the delivery timeout: in-flight sends fail, then reconcile
    private_kafka("start")
    assert sim.wait(60) == 0
    sent = published(0, 600)
    values = agent_kafka_reader(f"{agent.prefix}.scored", has_ticks(grid(0, 600)), 120.0, bootstrap)
    assert agent.stop() == 0, agent.log_text()
    assert_once_each(values, sent)
    assert agent.log_events()
    noticed = {"forward.kafka_unavailable", "forward.delivery_failed", "forward.stalled"}
    assert noticed & {e["event"] for e in agent.log_events()}, "the outage was not noticed"


def test_malformed_payloads_are_dead_lettered_and_the_agent_keeps_going(
    mqtt_addr: tuple[str, int],
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    agent = agent_runner(
        agent_skab_bundles,
        devices='[{match = "lab/*", bundle = "skab"}]',
        mqtt__max_payload_bytes="2000",
        align__lateness_ticks="0",
    )
    agent.start()
    agent.wait_ready()
    channels = read_manifest(agent_skab_bundles / "skab" / "1").channel_names
    now_s = int(time.time()) - 60
    good = {c: 1.0 for c in channels}
    topic = f"{agent.prefix}/lab/pump-1"

    def body(ts: object, values: object) -> str:
        return json.dumps({"ts": ts, "values": values})

    sends: list[tuple[str, bytes | str, str | None]] = [
        (topic, body(now_s, good), None),
        (topic, "{not json", "not_json"),
        (topic, b"\xff\xfe\x00", "not_utf8"),
        (topic, "[1, 2, 3]", "bad_shape"),
        (topic, body("yesterday", good), "bad_ts"),
        (topic, body(now_s + 1, {**good, channels[0]: "high"}), "bad_value"),
        (topic, f'{{"ts": {now_s + 1}, "values": {{"{channels[0]}": NaN}}}}', "non_finite"),
        (topic, body(now_s + 10**6, good), "ts_future"),
        (topic, body(12, good), "ts_past"),
        (f"{agent.prefix}/yard/fan-1", body(now_s, good), "unknown_device"),
        (topic, body(now_s + 2, {**good, "nope": 1.0}), "unknown_channel"),
        (topic, body(now_s + 3, {**good, "pad": "x" * 3000}), "oversized"),
        (topic, body(now_s + 4, good), None),
        (topic, body(now_s, good), "too_late"),
        (topic, body(now_s + 5, good), None),
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{agent.prefix}-bad")
    client.connect(*mqtt_addr)
    client.loop_start()
    try:
        for t, payload, _ in sends:
            client.publish(t, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    wanted = Counter(r for _, _, r in sends if r)
    letters = agent_kafka_reader(
        f"{agent.prefix}.deadletter",
        lambda vs: Counter(DeadLetter.decode(v).reason for v in vs) == wanted,
        60.0,
    )
    got = [DeadLetter.decode(v) for v in letters]
    assert Counter(d.reason for d in got) == wanted
    by_reason = {d.reason: d for d in got}
    assert by_reason["not_utf8"].raw == b"\xff\xfe\x00"
    assert by_reason["not_json"].raw == b"{not json"
    assert by_reason["unknown_device"].source == f"mqtt:{agent.prefix}/yard/fan-1"
    assert agent.proc.poll() is None  # still running
    assert agent.health()["status"] == "ok"
    assert agent.metric('gapwatch_agent_bad_input_total{reason="not_json"}') == 1
    assert agent.stop() == 0, agent.log_text()
    scored = {
        t.ts_ms: t
        for t in map(
            ScoredTick.decode,
            agent_kafka_reader(f"{agent.prefix}.scored", lambda vs: len(vs) >= 6, 30.0),
        )
        if t.revision == 0
    }
    good_ticks = [now_s * 1000, (now_s + 4) * 1000, (now_s + 5) * 1000]
    assert set(good_ticks) <= set(scored)
    # the good messages between the bad ones are observed, not imputed
    assert [scored[ts].imputed for ts in good_ticks] == [(), (), ()]
    assert all(scored[ts].values == good for ts in good_ticks)


def test_a_new_bundle_is_picked_up_while_streaming_and_a_corrupt_one_refused(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    agent_skab_bundles: Path,
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(agent_skab_bundles, root)
    v1 = root / "skab" / "1"
    manifest = read_manifest(v1)
    onnx_bytes = (v1 / MODEL_FILE).read_bytes()
    agent = agent_runner(root, align__lateness_ticks="1")
    agent.start()
    agent.wait_ready()
    scored = f"{agent.prefix}.scored"

    # each part is replayed as its own device (site p1, p2, p3), so parts do not overlap in time
    def part(site: str, skip: int) -> list[ScoredTick]:
        args = ["--skip", str(skip), "--rows", "150", "--speed", "0"]
        assert simulate(agent, mqtt_addr, *args, site=site).wait(60) == 0
        expected = grid(skip, 140)

        def done(values: list[bytes]) -> bool:
            ticks = [ScoredTick.decode(v) for v in values]
            return expected <= {t.ts_ms for t in ticks if t.revision == 0 and t.site == site}

        values = agent_kafka_reader(scored, done)
        ticks = [t for t in map(ScoredTick.decode, values) if t.site == site]
        return [t for t in ticks if t.ts_ms in expected]

    first = part("p1", 0)
    assert {t.model_version for t in first} == {"1"}
    write_bundle(root, replace(manifest, version="2"), onnx_bytes)
    wait_until("version 2 in use", lambda: agent.health()["models"] == {"skab": "2"})
    second = part("p2", 150)
    assert {t.model_version for t in second} == {"2"}

    bad_tmp = root / "skab" / ".3.tmp"
    shutil.copytree(root / "skab" / "2", bad_tmp)
    data = json.loads((bad_tmp / "manifest.json").read_text())
    data["version"] = "3"
    (bad_tmp / "manifest.json").write_text(json.dumps(data))
    (bad_tmp / MODEL_FILE).write_bytes(onnx_bytes + b"corrupted")
    bad_tmp.rename(root / "skab" / "3")
    wait_until(
        "the corrupt bundle refused",
        lambda: agent.metric('gapwatch_agent_model_reloads_total{result="refused"}') == 1,
    )
    third = part("p3", 300)
    assert {t.model_version for t in third} == {"2"}
    assert agent.health()["models"] == {"skab": "2"}
    assert agent.proc.poll() is None
    assert agent.stop() == 0, agent.log_text()
    events = [e["event"] for e in agent.log_events()]
    assert events.count("reload.accepted") == 1 and events.count("reload.refused") == 1
