"""The agent's alarm webhook end to end: a real ``gapwatch agent`` on the shared Mosquitto and
Kafka, readings published over MQTT, alarm open/close events POSTed to a local HTTP receiver
(``http.server``) that refuses the first requests with 503 and then recovers.

The model is a hand-built ONNX graph (decoded mean 0, log-variance 0) so that a tick's score is
``0.92 + x² / 2`` for scaled readings ``x``: readings of 0 are normal, readings of 6 raise the
alarm (threshold on 5, off 3, no smoothing). No training, no torch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

CHANNELS = ("Current", "Pressure", "Temperature")


def write_alarm_bundle(root: Path) -> Path:
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
        "alarm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in INPUT_NAMES],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in OUTPUT_NAMES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name="skab",
        version="7",
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


@dataclass
class Receiver:
    fail_first: int
    requests: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver(fail_first=2)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.requests += 1
                ok = state.requests > state.fail_first
                if ok:
                    state.alerts.extend(json.loads(body))
                    state.auth.append(self.headers.get("Authorization"))
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/api/v2/alerts"
    server.shutdown()
    server.server_close()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_alarm_open_and_close_reach_a_receiver_that_fails_first(
    tmp_path: Path,
    mqtt_addr: tuple[str, int],
    agent_runner: Callable[..., Any],
    receiver: tuple[Receiver, str],
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pytest.importorskip("onnx")
    state, url = receiver
    bundles = tmp_path / "bundles"
    write_alarm_bundle(bundles)
    agent = agent_runner(
        bundles,
        alerts__url=json.dumps(url),
        alerts__retries="6",
        alerts__backoff_s="0.2",
        alerts__max_backoff_s="0.5",
        alerts__resend_s="0",
        alerts__auth_env='"GW_TEST_HOOK_AUTH"',
        alerts__severity='"critical"',
        alerts__generator_url='"http://grafana.local/d/gapwatch-fleet?var-device={device}"',
        align__lateness_ticks="0",
    )
    agent.env["GW_TEST_HOOK_AUTH"] = "Bearer hook-token"
    agent.start()
    agent.wait_ready()

    t0 = int(time.time()) - 60
    levels = [0.0] * 5 + [6.0] * 5 + [0.0] * 5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{agent.prefix}-pub")
    client.connect(*mqtt_addr)
    client.loop_start()
    try:
        for i, level in enumerate(levels):
            values = {c: level if c == "Pressure" else 0.0 for c in CHANNELS}
            body = json.dumps({"ts": t0 + i, "values": values})
            client.publish(f"{agent.prefix}/lab/pump-1", body, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()

    wait_for("open and close delivered", lambda: len(state.alerts) >= 2)
    opened, closed = state.alerts[:2]
    labels = {
        "alertname": "GapwatchAnomaly",
        "site": "lab",
        "device": "pump-1",
        "model": "skab",
        "severity": "critical",
    }
    assert opened["labels"] == labels and closed["labels"] == labels
    assert opened["startsAt"] == closed["startsAt"] == _rfc3339(t0 + 5)
    assert "endsAt" not in opened
    assert closed["endsAt"] == _rfc3339(t0 + 10)
    assert closed["annotations"]["top_channels"].split(",")[0] == "Pressure"
    assert opened["generatorURL"].endswith("var-device=pump-1")
    assert state.requests >= 3  # two refused, then the retries got through
    assert set(state.auth) == {"Bearer hook-token"}
    wait_for("metrics", lambda: agent.metric('gapwatch_agent_alerts_total{outcome="sent"}') >= 2)
    assert agent.metric('gapwatch_agent_alerts_total{outcome="dropped"}') == 0
    # scoring went on regardless: every tick was scored
    assert agent.metric('gapwatch_agent_ticks_total{revision="0"}') >= len(levels) - 1
    text = agent.metrics()
    for name in (
        "process_cpu_seconds_total",
        "gapwatch_agent_build_info{",
        "gapwatch_agent_mqtt_reconnects_total 0.0",
        "gapwatch_agent_last_message_age_seconds",
    ):
        assert name in text, name
    assert agent.stop() == 0
    events = {e["event"] for e in agent.log_events()}
    assert {"webhook.enabled", "webhook.retry", "webhook.recovered"} <= events


def _rfc3339(ts_s: int) -> str:
    from edge.alerts import rfc3339

    return rfc3339(ts_s * 1000)
