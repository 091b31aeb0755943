"""``gapwatch demo --offline`` in a fresh virtualenv with only ``gapwatch[edge,report]``.

Builds the package from a copy of the sources (so the wheel, with its package data, is what is
tested), installs it with the edge and report extras only, and runs the offline demo there: it
must work without torch, pandas or the services, scoring with the bundle shipped in the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import read_manifest
from gapwatch.demo.bundle import packaged_dir

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "gapwatch", "edge", "training", "pipeline")


def write_device(path: Path, channels: tuple[str, ...], center: np.ndarray, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t0 = datetime(2020, 3, 1, tzinfo=UTC)
    lines = [";".join(["datetime", *channels, "anomaly"])]
    for i in range(240):
        vals = center * (1 + 0.05 * rng.normal(size=len(channels)))
        stamp = (t0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(";".join([stamp, *(f"{v:.5f}" for v in vals), str(int(i > 200))]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_offline_demo_runs_with_only_the_edge_and_report_extras(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    installed = run([str(py), "-m", "pip", "install", "-q", f"{src}[edge,report]"], tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]

    for heavy in ("torch", "pandas", "sklearn", "influxdb_client"):
        probe = run([str(py), "-c", f"import {heavy}"], tmp_path)
        assert probe.returncode != 0, f"{heavy} is installed in the edge-only venv"

    shipped = packaged_dir()
    assert shipped is not None
    m = read_manifest(shipped)
    files = [write_device(tmp_path / f"dev{k}.csv", m.channel_names, m.center, k) for k in (0, 1)]
    state = tmp_path / "state"
    demo = run(
        [
            str(venv / "bin" / "gapwatch"),
            "demo",
            "--offline",
            "--data",
            str(files[0]),
            "--data",
            str(files[1]),
            "--state-dir",
            str(state),
            "--warmup",
            "50",
        ],
        tmp_path,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "shipped with the package" in demo.stderr
    ticks = 2 * (240 + m.max_gap_ticks)  # rows, then silent ticks imputed until offline
    assert f"{ticks} stored" in demo.stdout
    for name in ("scored.csv", "report.html", "summary.json"):
        assert (state / "offline" / name).stat().st_size > 0
    assert "data:image/png;base64," in (state / "offline" / "report.html").read_text()

    # A bare clone's run: no shared data, no --data -> the simulated fleet and its bundle,
    # shipped in the wheel (and no SKAB file in it: GPL-3.0 data never ships).
    empty = tmp_path / "no-data"
    empty.mkdir()
    argv = ["demo", "--offline", "--state-dir", str(tmp_path / "s2"), "--fleet-devices", "2"]
    fleet = subprocess.run(
        [str(venv / "bin" / "gapwatch"), *argv, "--fleet-minutes", "15"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GAPWATCH_DATA_DIR": str(empty)},
    )
    assert fleet.returncode == 0, fleet.stderr[-3000:]
    assert "simulated fleet" in fleet.stderr and "fleet/" in fleet.stdout
    site = run(
        [str(py), "-c", "import gapwatch, pathlib; print(pathlib.Path(gapwatch.__file__).parent)"],
        tmp_path,
    )
    packages = Path(site.stdout.strip()).parent
    shipped_csv = [
        p
        for name in ("gapwatch", "edge", "training", "pipeline")
        for p in (packages / name).rglob("*.csv")
    ]
    assert shipped_csv == [], shipped_csv

    # The console script itself, and the agent's help, work without torch in this venv.
    helped = run([str(venv / "bin" / "gapwatch"), "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "agent" in helped.stdout and "score" in helped.stdout
    agent_help = run([str(venv / "bin" / "gapwatch"), "agent", "--help"], tmp_path)
    assert agent_help.returncode == 0, agent_help.stderr
    assert "--config" in agent_help.stdout
    no_torch = run(
        [str(py), "-c", "import gapwatch.cli, edge.cli.agent, sys; print('torch' in sys.modules)"],
        tmp_path,
    )
    assert no_torch.stdout.strip() == "False", no_torch.stderr
