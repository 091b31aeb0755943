"""The real agent with trusted keys: an unsigned CURRENT never keeps it down, and a rollback
to an older signed version happens only when the registry signed it.

Runs ``gapwatch agent`` as a subprocess against the local stack (Mosquitto, Kafka) with
``bundles.trusted_keys``. Before issue 16 the agent exited 2 when CURRENT named an unsigned
version (e.g. promoted by an unsigned retrain) and ``RestartPreventExitStatus=2`` kept it down.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from edge.bundle import set_current_version
from edge.signing import generate_private_key, public_key_pem
from pipeline.registry import Registry

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _harness() -> ModuleType:
    key = "_gapwatch_tests_faults_harness"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "tests" / "faults" / "harness.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def test_signed_agent_falls_back_from_an_unsigned_current_and_rolls_back_only_when_signed(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, tmp_path: Path, free_port: int
) -> None:
    pytest.importorskip("onnx")
    h = _harness()
    key = generate_private_key()
    pub = tmp_path / "bundles.pub"
    pub.write_bytes(public_key_pem(key))
    root = tmp_path / "bundles"
    registry = Registry(root, "skab", signing_key=key)
    for version in ("1", "2"):
        registry.publish(h.write_tiny_bundle(tmp_path / "built", version=version))
        registry.promote(version)  # signed, with a signed CURRENT pointer
    h.write_tiny_bundle(root, version="3")  # unsigned, made current by hand (the old retrain)
    set_current_version(root / "skab", "3")

    prefix = f"trust-{uuid.uuid4().hex[:8]}"
    env = h.agent_env(
        prefix=prefix,
        state=tmp_path / "state",
        mqtt_port=mqtt_addr[1],
        kafka_bootstrap=kafka_bootstrap,
        bundles=root,
        metrics_port=free_port,
        bundles__trusted_keys=json.dumps(str(pub)),
    )
    check = subprocess.run(
        [sys.executable, "-m", "gapwatch", "agent", "--check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "bundle ok: skab version 2" in check.stdout and "FALLBACK" in check.stdout

    agent = h.Agent(env, tmp_path, free_port, prefix)
    agent.start()
    try:
        agent.wait_subscribed()
        [fallback] = [e for e in agent.events() if e.get("event") == "bundle.fallback"]
        assert (fallback["level"], fallback["wanted"], fallback["using"]) == ("error", "3", "2")
        assert "unsigned" in fallback["problem"]
        health: dict[str, Any] = agent.health() or {}
        assert health["models"] == {"skab": "2"}
        assert "unsigned" in health["model_fallbacks"]["skab"]

        def event(name: str, **match: str) -> bool:
            return any(
                e.get("event") == name and all(v in str(e.get(k)) for k, v in match.items())
                for e in agent.events()
            )

        set_current_version(root / "skab", "1")  # by hand: an unsigned rollback
        h.wait_until(
            "the rollback to 1 to be refused",
            lambda: event("reload.refused", problem="older than '2'"),
            30,
        )
        assert (agent.health() or {})["models"] == {"skab": "2"}
        registry.rollback("signed rollback")  # signs CURRENT.sig.json naming 1
        h.wait_until(
            "the signed rollback to 1 to be accepted",
            lambda: event("reload.accepted", to="1"),
            30,
        )
        assert event("reload.signed_rollback", to="1")
        assert (agent.health() or {})["models"] == {"skab": "1"}
    finally:
        code = agent.stop()
    assert code == 0, agent.log_text()
    state = json.loads((tmp_path / "state" / "bundles.json").read_text())
    assert state["models"]["skab"]["version"] == "1"
