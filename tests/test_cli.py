"""The ``gapwatch`` console script: help, version, unknown commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gapwatch
from edge.cli import dispatch
from gapwatch import cli

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m gapwatch`` (what the console script runs) in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "gapwatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_help_lists_available_subcommands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: gapwatch")
    listed = [
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith("  ") and line.strip()
    ]
    available = [name for name, sub in cli.subcommands().items() if dispatch.available(sub.module)]
    assert listed == available


def test_no_arguments_prints_help() -> None:
    result = run_cli()
    assert result.returncode == 0
    assert "usage: gapwatch" in result.stdout


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    result = run_cli(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gapwatch {gapwatch.__version__}"
    assert gapwatch.__version__ != "0.0.0+source", (
        "run the tests from an installed venv (make venv)"
    )


def test_unknown_command_exits_2() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "unknown command 'no-such-command'" in result.stderr
    assert "usage: gapwatch" in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("gapwatch")
    assert script.exists(), f"{script} missing: pip install -e '.[all]'"
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("gapwatch ")
