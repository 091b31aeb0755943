"""`gapwatch agent --sample-config` prints the commented config shipped as package data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_sample_config_is_the_documented_one_and_loads(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gapwatch", "agent", "--sample-config"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    assert out == (REPO / "deploy" / "edge" / "agent.toml").read_text(encoding="utf-8")
    assert "status_topic" in out and "# " in out  # commented, every key
    path = tmp_path / "agent.toml"
    path.write_text(out)
    config = load_config(path, env={})
    assert config.mqtt.status_topic == "gapwatch/agents/{client_id}/status"
