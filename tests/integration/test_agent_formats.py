"""Input formats end to end: real publishers on the shared Mosquitto, a real ``gapwatch agent``,
scored ticks and dead letters read back from Kafka.

One agent subscribes to four templates, each with its own format ([[mqtt.inputs]] given through
``GAPWATCH_AGENT__MQTT__INPUTS``): Telegraf's JSON serializer, InfluxDB line protocol (the device
from the ``host`` tag, several devices in one message), SenML packs, and a per-channel topic whose
payloads carry their own timestamp. Each publisher sends 12 seconds of readings stamped a minute
in the past; each device must come out as one causal scored tick per second at exactly those
times (so the payload's time was used, not the arrival time), with every channel observed. Bad
payloads of every format are dead-lettered with their reason and raw bytes.

The model is a hand-built ONNX graph (mean 0, log-variance 0): no training, no torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.schema import DeadLetter, ScoredTick

pytestmark = pytest.mark.integration

CHANNELS = ("Current", "Pressure", "Temperature")
SECONDS = 12


def write_zero_bundle(root: Path) -> Path:
    """``<root>/skab/1/``: decoded mean 0 and log-variance 0 for any window of 3 channels."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edge.bundle import (
        FORMAT_VERSION,
        INPUT_NAMES,
        OUTPUT_NAMES,
        Channel,
        Manifest,
        ThresholdSpec,
        write_bundle,
    )

    shape = ["batch", 4, len(CHANNELS)]
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["x", "x"], ["mean"]),
            helper.make_node("Sub", ["x", "x"], ["logvar"]),
        ],
        "zero",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in INPUT_NAMES],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in OUTPUT_NAMES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name="skab",
        version="1",
        created_at="2026-12-01T00:00:00Z",
        channels=tuple(Channel(c, "", 0.0, 1.0) for c in CHANNELS),
        tick_seconds=1.0,
        window=4,
        max_gap_ticks=60,
        backfill_delay=1,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test model: score = 0.92 + x^2/2",
        threshold=ThresholdSpec(5.0, 3.0, 1.0, 0.01),
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer={"numpy": np.__version__, "onnx": onnx.__version__},
    )
    return write_bundle(root, manifest, bytes(model.SerializeToString()))


def _values(i: int) -> dict[str, float]:
    return {c: round(0.1 * ((i + k) % 5), 3) for k, c in enumerate(CHANNELS)}


def messages(p: str, t0: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of the four publishers, second by second from ``t0`` (epoch s)."""
    out: list[tuple[str, bytes]] = []
    for i in range(SECONDS):
        ts, vals = t0 + i, _values(i)
        telegraf = {"fields": vals, "name": "pump", "tags": {"host": "gw1"}, "timestamp": ts}
        out.append((f"{p}/telegraf/lab/tg-1", json.dumps(telegraf).encode()))
        fields = ",".join(f"{c}={v}" for c, v in vals.items())
        lines = [f"pump,host=lp-{n},rack=r1 {fields} {ts * 10**9}" for n in (1, 2)]
        out.append((f"{p}/line/lab", "\n".join(lines).encode()))
        pack: list[dict[str, Any]] = [{"bn": "sm-1:", "bt": ts}]  # device "sm-1" from bn
        pack += [{"n": c, "v": v, "u": "A"} for c, v in vals.items()]
        out.append((f"{p}/senml/lab", json.dumps(pack).encode()))
        for c, v in vals.items():
            body = json.dumps({"ts": f"{time.strftime('%FT%T', time.gmtime(ts))}Z", "value": v})
            out.append((f"{p}/gw/lab/ch-1/{c}", body.encode()))
    return out


BAD = [  # (topic suffix, payload, reason)
    (
        "telegraf/lab/tg-9",
        b'{"fields": {"Current": 1}, "name": "x", "timestamp": "soon"}',
        "bad_ts",
    ),
    ("telegraf/lab/tg-9", b'{"fields": {}, "name": "x", "timestamp": 1}', "bad_shape"),
    ("line/lab", b"pump,host=lp-9 Current", "bad_line"),
    ("line/lab", b"pump,rack=r1 Current=1", "no_device"),
    ("senml/lab", b'{"bn": "sm-9:", "n": "Current", "v": 1}', "bad_shape"),
    ("senml/lab", b'[{"bn": "sm-9:", "n": "Current", "vs": "high"}]', "bad_value"),
    ("senml/lab", b'[{"n": "Current", "v": 1}]', "no_device"),
    ("gw/lab/ch-9/Current", b'{"ts": "yesterday", "value": 1}', "bad_ts"),
    ("gw/lab/ch-9/Current", b"not json", "not_json"),
]


def test_each_format_is_scored_from_its_own_timestamps_and_bad_input_dead_lettered(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    agent_runner: Callable[..., Any],
    agent_kafka_reader: Callable[..., list[bytes]],
    unique_name: str,
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pytest.importorskip("onnx")
    bundles = tmp_path / "bundles"
    write_zero_bundle(bundles)
    p = unique_name
    inputs = (
        f'[{{topic = "{p}/telegraf/{{site}}/{{device}}", preset = "telegraf"}}, '
        f'{{topic = "{p}/line/{{site}}", format = "influx_line", device_key = "host"}}, '
        f'{{topic = "{p}/senml/{{site}}", format = "senml", device_key = "bn"}}]'
    )
    agent = agent_runner(
        bundles,
        mqtt__topics=f'["{p}/gw/{{site}}/{{device}}/{{channel}}"]',
        mqtt__inputs=inputs,
        align__lateness_ticks="1",
    )
    agent.start()
    agent.wait_ready()

    t0 = int(time.time()) - 60
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{p}-pub")
    client.connect(*mqtt_addr)
    client.loop_start()
    try:
        for topic, body in messages(p, t0):
            client.publish(topic, body, qos=1).wait_for_publish(10)
        for suffix, body, _ in BAD:
            client.publish(f"{p}/{suffix}", body, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()

    devices = {"lab/tg-1", "lab/lp-1", "lab/lp-2", "lab/sm-1", "lab/ch-1"}
    grid = {(t0 + i) * 1000 for i in range(SECONDS)}

    def complete(values: list[bytes]) -> bool:
        got = {(t.key, t.ts_ms) for t in map(ScoredTick.decode, values) if t.revision == 0}
        return all((d, ts) in got for d in devices for ts in grid)

    ticks = [ScoredTick.decode(v) for v in agent_kafka_reader(f"{p}.scored", complete)]
    causal = [t for t in ticks if t.revision == 0]
    assert {t.key for t in causal} == devices
    for dev in devices:
        mine = {t.ts_ms: t for t in causal if t.key == dev}
        assert set(mine) == grid, (dev, sorted(set(mine) ^ grid))  # the payloads' own times
        for i, ts in enumerate(sorted(grid)):
            tick = mine[ts]
            assert tick.imputed == (), (dev, ts, tick.imputed)
            assert tick.values == pytest.approx(_values(i)), (dev, ts)
            assert tick.score is not None

    def all_dead(values: list[bytes]) -> bool:
        return len(values) >= len(BAD)

    letters = [DeadLetter.decode(v) for v in agent_kafka_reader(f"{p}.deadletter", all_dead)]
    got = sorted((d.source, d.reason, d.raw) for d in letters)
    assert got == sorted((f"mqtt:{p}/{s}", r, b) for s, b, r in BAD)
    assert agent.metric('gapwatch_agent_bad_input_total{reason="bad_line"}') == 1
    assert agent.stop() == 0, agent.log_text()
