"""The dependency direction of DESIGN.md, checked at import time in a fresh interpreter.

``edge`` runs on a Raspberry Pi: importing it, or any module under it, must not load torch,
``training`` or ``pipeline``. ``pipeline`` must not load torch or ``training`` at import time
(the retrain command imports training lazily). import-linter checks the static imports
(``make lint``); these tests catch what it cannot see, such as a third-party import chain.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Modules whose import must not happen, and modules that are allowed to pull them in lazily.
FORBIDDEN = {
    "edge": ("torch", "training", "pipeline", "gapwatch"),
    "pipeline": ("torch", "training", "gapwatch"),
    "training": ("gapwatch",),
}
LAZY_ALLOWED = {"pipeline.retrain", "pipeline.cli.retrain"}


def modules_of(package: str) -> list[str]:
    """The package and every module under it, found on disk without importing them."""
    names = [package]
    for info in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}."):
        if info.name.split(".")[-1] == "__main__" or info.name in LAZY_ALLOWED:
            continue
        names.append(info.name)
    return sorted(names)


def loaded_after_import(modules: list[str]) -> list[str]:
    """Imports the modules in a fresh interpreter and returns the top-level names it loaded."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, f"importing {modules} failed:\n{result.stderr}"
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_import_stays_light(package: str) -> None:
    modules = modules_of(package)
    loaded = set(loaded_after_import(modules))
    leaked = sorted(loaded & set(FORBIDDEN[package]))
    assert not leaked, f"importing {modules} loaded {leaked}"


def test_module_discovery_sees_the_packages() -> None:
    assert "edge.errors" in modules_of("edge")
    assert "pipeline.errors" in modules_of("pipeline")


def test_runtime_packages_hold_no_benchmark_or_demo_code() -> None:
    """Benchmarks and the demo live in the app package (gapwatch.bench, gapwatch.demo)."""
    misplaced = [
        name
        for package in ("edge", "pipeline", "training")
        for name in modules_of(package)
        if any(part.startswith(("bench", "demo")) for part in name.split(".")[1:])
    ]
    assert misplaced == []


def test_entry_points_live_in_each_package_cli_folder() -> None:
    from gapwatch.cli import SUBCOMMANDS

    for name, sub in SUBCOMMANDS.items():
        package = sub.module.split(".")[0]
        if package in {"edge", "pipeline", "training"} and sub.module != "edge.simulate":
            assert sub.module.startswith(f"{package}.cli."), f"{name}: {sub.module}"
