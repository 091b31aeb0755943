"""Fixtures of the edge agent's tests: tiny real ONNX bundles, and an agent wired to fakes.

The graph decodes ``mean = x * mask + shift`` and ``logvar = 0`` (so σ equals the channel
scale): missing entries are imputed at ``center + shift * scale``. ``shift`` lets a test tell
two bundle versions apart by their output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge.agent import Agent
from edge.bundle import (
    FORMAT_VERSION,
    INPUT_NAMES,
    OUTPUT_NAMES,
    Channel,
    Manifest,
    ThresholdSpec,
    write_bundle,
)
from edge.config import AgentConfig, load_config
from edge.fakes import FakeClock, FakeSink, FakeSource
from edge.forward import Forwarder
from edge.metrics import AgentMetrics
from edge.reload import BundleWatcher
from edge.schema import DeadLetter, ScoredTick
from edge.spool import Spool

AGENT_CHANNELS = ("a", "b", "c")


def tiny_onnx(window: int, channels: int, shift: float = 0.0) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", window, channels]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, shape)
    mean = helper.make_tensor_value_info("mean", TensorProto.FLOAT, shape)
    logvar = helper.make_tensor_value_info("logvar", TensorProto.FLOAT, shape)
    shift_t = helper.make_tensor("shift", TensorProto.FLOAT, [], [shift])
    nodes = [
        helper.make_node("Mul", ["x", "mask"], ["xm"]),
        helper.make_node("Add", ["xm", "shift"], ["mean"]),
        helper.make_node("Sub", ["mask", "mask"], ["logvar"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x, mask], [mean, logvar], initializer=[shift_t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def tiny_manifest(
    name: str = "tiny",
    version: str = "1",
    *,
    channels: tuple[str, ...] = AGENT_CHANNELS,
    window: int = 4,
    tick_seconds: float = 1.0,
    max_gap_ticks: int = 3,
    backfill_delay: int = 1,
    on: float = 50.0,
    off: float = 40.0,
) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        version=version,
        created_at="2026-01-01T00:00:00Z",
        channels=tuple(Channel(c, "u", 10.0, 2.0) for c in channels),
        tick_seconds=tick_seconds,
        window=window,
        max_gap_ticks=max_gap_ticks,
        backfill_delay=backfill_delay,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test: gaussian nll per observed entry",
        threshold=ThresholdSpec(on, off, 1.0, 0.01),
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer={},
    )


BundleFactory = Callable[..., Path]


@pytest.fixture
def agent_bundle_factory(tmp_path: Path) -> BundleFactory:
    """``make(root=None, name="tiny", version="1", shift=0.0, **manifest_kw) -> bundle dir``."""

    def make(
        root: Path | None = None,
        name: str = "tiny",
        version: str = "1",
        shift: float = 0.0,
        **kw: object,
    ) -> Path:
        manifest = tiny_manifest(name, version, **kw)  # type: ignore[arg-type]
        onnx_bytes = tiny_onnx(manifest.window, len(manifest.channels), shift)
        return write_bundle(root or tmp_path / "bundles", manifest, onnx_bytes)

    return make


# -- an agent wired to the in-package fakes, a real spool and a tiny bundle -----------------

AGENT_T0 = 1_700_000_000_000  # a whole second: tick k is at AGENT_T0 + k * 1000


@dataclass
class Harness:
    config: AgentConfig
    clock: FakeClock
    source: FakeSource
    sink: FakeSink
    spool: Spool
    forwarder: Forwarder
    agent: Agent
    metrics: AgentMetrics

    def publish(
        self, device: str, tick: int, values: dict[str, float | None], site: str = "lab"
    ) -> None:
        body = json.dumps({"ts": AGENT_T0 + tick * 1000, "values": values})
        self.source.push(f"sensors/{site}/{device}", body, self.clock.now_ms())

    def raw(self, topic: str, payload: bytes | str) -> None:
        self.source.push(topic, payload, self.clock.now_ms())

    def pump(self, steps: int = 3) -> None:
        for _ in range(steps):
            self.agent.step(0)

    def deliver(self) -> None:
        for _ in range(200):
            self.forwarder.step()
            self.clock.advance(50)
            if self.forwarder.idle:
                return
        raise AssertionError("the forwarder did not empty the spool")

    def scored(self) -> list[ScoredTick]:
        return [ScoredTick.decode(v) for v in self.sink.values(self.config.kafka.scored_topic)]

    def dead(self) -> list[DeadLetter]:
        return [DeadLetter.decode(v) for v in self.sink.values(self.config.kafka.deadletter_topic)]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def _make_agent(
    tmp_path: Path,
    bundle_root: Path,
    *sets: str,
    clock: FakeClock | None = None,
    sink: FakeSink | None = None,
    spool: Spool | None = None,
    alarms: Callable[..., None] | None = None,
) -> Harness:
    clock = clock or FakeClock(AGENT_T0 + 500)
    settings = [
        f'bundles.root="{bundle_root}"',
        'devices=[{match="lab/*", bundle="tiny"}]',
        "align.lateness_ticks=0",
        "inference.batch_max_ticks=4",
        f'state_dir="{tmp_path}"',
        *sets,
    ]
    config = load_config(None, env={}, sets=settings)
    sink = sink or FakeSink(clock)
    spool = spool or Spool(config.spool_path)
    metrics = AgentMetrics(CollectorRegistry())
    forwarder = Forwarder(
        spool,
        sink,
        clock,
        on_quarantined=lambda reason, n: metrics.kafka_quarantined.labels(reason).inc(n),
    )
    source = FakeSource(clock)
    watcher = BundleWatcher(config.bundles.root, [r.bundle for r in config.devices])
    agent = Agent(
        config,
        source=source,
        spool=spool,
        forwarder=forwarder,
        watcher=watcher,
        clock=clock,
        metrics=metrics,
        alarms=alarms,
    )
    return Harness(config, clock, source, sink, spool, forwarder, agent, metrics)


AgentFactory = Callable[..., Harness]


@pytest.fixture
def agent_harness() -> AgentFactory:
    """``make(tmp_path, bundle_root, *"key=value", clock=, sink=, spool=, alarms=) -> Harness``."""
    return _make_agent
