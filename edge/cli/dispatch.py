"""A lazy subcommand dispatcher, shared by ``gapwatch`` and ``python -m edge|pipeline|training``.

Each subcommand names the module that implements it and the extra it needs. The module is
imported only when that subcommand runs and must expose ``main(argv: list[str]) -> int``, so
``gapwatch --help`` on a Raspberry Pi never imports torch, and a command whose extra is not
installed says which ``pip install`` brings it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Subcommand", "available", "dispatch", "installed_version"]


@dataclass(frozen=True)
class Subcommand:
    module: str  # "package.module" exposing main(argv) -> int
    extra: str  # the pip extra that brings its dependencies
    summary: str  # one line for the usage listing


def installed_version() -> str:
    """The installed distribution's version ("unknown" when running from a bare checkout)."""
    try:
        return importlib.metadata.version("gapwatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def available(module: str) -> bool:
    """True when the module exists in this install (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not installed
        return False


def _usage(prog: str, commands: Mapping[str, Subcommand]) -> str:
    width = max(len(name) for name in commands)
    lines = [
        f"usage: {prog} [--version] <command> [options]",
        "",
        "Fill gaps and flag anomalies in IoT sensor streams with variational autoencoders.",
        "",
        "commands:",
    ]
    for name, sub in commands.items():
        if available(sub.module):
            lines.append(f"  {name.ljust(width)}  {sub.summary}")
    lines += ["", f"Run '{prog} <command> --help' for the options of one command."]
    return "\n".join(lines)


def dispatch(prog: str, commands: Mapping[str, Subcommand], argv: list[str] | None = None) -> int:
    """Run ``argv[0]``'s module with the rest of ``argv``; 2 for unknown or uninstalled ones."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage(prog, commands))
        return 0
    if args[0] in {"-V", "--version"}:
        print(f"gapwatch {installed_version()}")
        return 0
    name, rest = args[0], args[1:]
    sub = commands.get(name)
    if sub is None or not available(sub.module):
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog, commands)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(sub.module)
    except ModuleNotFoundError as exc:
        print(
            f"{prog} {name}: missing dependency {exc.name!r}; "
            f"install it with: pip install 'gapwatch[{sub.extra}]'",
            file=sys.stderr,
        )
        return 2
    result: int = module.main(rest)
    return result
