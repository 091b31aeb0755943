"""Fixtures of the pipeline tests: tiny real ONNX bundles for the registry and retrain loop.

The graph decodes ``mean = x * mask + shift`` and ``logvar = 0`` (σ = the channel scale):
a missing entry is imputed at ``center + shift * scale``, so ``shift`` makes one version
measurably worse than another at gap filling.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.bundle import (
    FORMAT_VERSION,
    INPUT_NAMES,
    OUTPUT_NAMES,
    Channel,
    Manifest,
    ThresholdSpec,
    write_bundle,
)

PipelineBundleFactory = Callable[..., Path]


def _tiny_onnx(window: int, channels: int, shift: float) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", window, channels]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in INPUT_NAMES]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in OUTPUT_NAMES]
    nodes = [
        helper.make_node("Mul", ["x", "mask"], ["xm"]),
        helper.make_node("Add", ["xm", "shift"], ["mean"]),
        helper.make_node("Sub", ["mask", "mask"], ["logvar"]),
    ]
    shift_t = helper.make_tensor("shift", TensorProto.FLOAT, [], [shift])
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=[shift_t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture
def pipeline_bundle_factory(tmp_path: Path) -> PipelineBundleFactory:
    """``make(name, version, *, root=None, shift=0.0, channels=("a","b"), center=10.0,
    scale=2.0, on=50.0, window=4, tick_seconds=1.0) -> bundle dir``."""

    def make(
        name: str = "tiny",
        version: str = "1",
        *,
        root: Path | None = None,
        shift: float = 0.0,
        channels: tuple[str, ...] = ("a", "b"),
        center: float = 10.0,
        scale: float = 2.0,
        on: float = 50.0,
        window: int = 4,
        tick_seconds: float = 1.0,
    ) -> Path:
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            name=name,
            version=version,
            created_at="2026-01-01T00:00:00Z",
            channels=tuple(Channel(c, "u", center, scale) for c in channels),
            tick_seconds=tick_seconds,
            window=window,
            max_gap_ticks=window,
            backfill_delay=1,
            inputs=INPUT_NAMES,
            outputs=OUTPUT_NAMES,
            opset=18,
            score="test: gaussian nll per observed entry",
            threshold=ThresholdSpec(on, on * 0.8, 1.0, 0.01),
            training={},
            evaluation={},
            model_sha256="0" * 64,
            producer={},
        )
        onnx_bytes = _tiny_onnx(window, len(channels), shift)
        return write_bundle(root or tmp_path / "built", manifest, onnx_bytes)

    return make
