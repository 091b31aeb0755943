"""The dependency direction of DESIGN.md, checked at import time in a fresh interpreter.

``edge`` runs on a Raspberry Pi: importing it, or any module under it, must not load torch,
``training`` or ``pipeline``. ``pipeline`` must not load torch or ``training`` at import time
(the retrain command imports training lazily). import-linter checks the static imports
(``make lint``); these tests catch what it cannot see, such as a third-party import chain.
"""

from __future__ import annotations

import ast
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
    from gapwatch.cli import subcommands

    for name, sub in subcommands().items():
        package = sub.module.split(".")[0]
        if package in {"edge", "pipeline", "training"} and sub.module != "edge.simulate":
            assert sub.module.startswith(f"{package}.cli."), f"{name}: {sub.module}"


# -- the shape of every module: its public face, and rooms small enough to read ---------------

PACKAGES = ("edge", "training", "pipeline", "gapwatch")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
SIZE_REASON = "# size:"  # a module or function over the limit says why, on this marker


def _sources() -> list[Path]:
    return sorted(
        p
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if p.name != "__main__.py" and ".venv" not in p.parts
    )


def _bound_names(tree: ast.Module | ast.stmt) -> set[str]:
    names: set[str] = set()
    body = tree.body if isinstance(tree, ast.Module) else [tree]
    for node in body:
        if isinstance(node, ast.If | ast.Try):  # try/except ImportError, if TYPE_CHECKING
            for block in (node.body, node.orelse, *[h.body for h in getattr(node, "handlers", [])]):
                for inner in block:
                    names |= _bound_names(inner)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                elts = target.elts if isinstance(target, ast.Tuple) else [target]
                names.update(t.id for t in elts if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            assert isinstance(value, ast.List | ast.Tuple), "__all__ must be a literal list"
            return [ast.literal_eval(e) for e in value.elts]
    return None


def test_every_module_declares_its_public_names() -> None:
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        declared = _declared_all(tree)
        rel = path.relative_to(REPO)
        if declared is None:
            problems.append(f"{rel}: no __all__")
            continue
        missing = sorted(set(declared) - _bound_names(tree))
        if missing:
            problems.append(f"{rel}: __all__ names {missing}, which it does not define")
    assert problems == []


def _has_reason(lines: list[str], first: int, last: int) -> bool:
    return any(SIZE_REASON in line for line in lines[max(first - 2, 0) : last])


def test_no_module_or_function_is_too_long_without_saying_why() -> None:
    problems = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        rel = path.relative_to(REPO)
        if len(lines) > MAX_MODULE_LINES and not _has_reason(lines, 0, 40):
            problems.append(f"{rel}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if size > MAX_FUNCTION_LINES and not _has_reason(lines, start, node.lineno + 1):
                problems.append(f"{rel}:{node.lineno} {node.name}: {size} lines")
    assert problems == [], "\n".join(problems)
