"""Fixtures of the end-to-end fuzz tests (names start with ``fuzz_``).

The decoder and config fuzzers (hypothesis) need none of these. The end-to-end ones run the
real agent and sink as subprocesses against the shared stack (``mqtt_addr``,
``kafka_bootstrap``, ``influx_url`` of ``tests/conftest.py``) with the fault suite's harness
and tiny ONNX bundle, and feed them the seeded inputs of ``hostile.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent


def _load(path: Path, key: str) -> ModuleType:
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fuzz_harness() -> ModuleType:
    """``tests/faults/harness.py``: Agent, Sink, agent_env, sink_env, read_topic, wait_until."""
    return _load(HERE.parent / "faults" / "harness.py", "_gapwatch_tests_faults_harness")


@pytest.fixture(scope="session")
def fuzz_hostile() -> ModuleType:
    """``tests/fuzz/hostile.py``: the seeded hostile inputs."""
    return _load(HERE / "hostile.py", "_gapwatch_tests_fuzz_hostile")


@pytest.fixture(scope="session")
def fuzz_seed() -> int:
    """``GAPWATCH_FUZZ_SEED`` (default 20261207): the same seed replays the same inputs."""
    return int(os.environ.get("GAPWATCH_FUZZ_SEED", "20261207"))


@pytest.fixture(scope="session")
def fuzz_bundles(tmp_path_factory: pytest.TempPathFactory, fuzz_harness: ModuleType) -> Path:
    """``skab/1`` with SKAB's channels and a tiny ONNX graph (no torch, no training)."""
    pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("fuzz-bundles")
    fuzz_harness.write_tiny_bundle(root)
    return root
