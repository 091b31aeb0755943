"""``gapwatch registry``: list, publish, promote and roll back versions of a model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.bundle import read_manifest
from edge.errors import BundleError
from pipeline.cli.signing import add_promotion_signing_args, promotion_signing
from pipeline.errors import PipelineError, RegistryError
from pipeline.registry import Registry, RegistryEvent, announcer_from_url

__all__ = ["main", "run"]

EPILOG = """\
The registry is a directory tree that agents read: <root>/<name>/<version>/ bundles, and
<root>/<name>/CURRENT naming the version to run. Every change is logged in
<root>/<name>/registry.json; rollback returns to the version promoted before the current one.
With --announce, a retained MQTT message on gapwatch/models/<name> tells running agents to
reload at once (they also poll the directory).

examples:
  gapwatch registry --root /srv/models list
  gapwatch registry --root /srv/models --name skab publish ./out/skab/20260101T000000Z
  gapwatch registry --root /srv/models --name skab promote 20260101T000000Z --reason "manual"
  GAPWATCH_ANNOUNCE_MQTT=mqtt://broker:1883 gapwatch registry --name skab rollback

signing (see 'gapwatch registry sign --help'): with --signing-key (GAPWATCH_SIGNING_KEY),
promote and rollback sign the version they make current and write CURRENT.sig.json, the
signed pointer that lets signed agents accept a rollback to an older version. Without a key,
a registry whose agents verify signatures (--public-key / GAPWATCH_BUNDLE_PUBLIC_KEY set, or
the model already signed) refuses to promote or roll back.
  gapwatch registry keygen --out /etc/gapwatch/signing
  gapwatch registry sign models/skab/20260101T000000Z --key /etc/gapwatch/signing.key
  gapwatch registry verify models/skab/20260101T000000Z --public-key signing.pub
"""
SIGNING_ACTIONS = ("keygen", "sign", "verify")


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="gapwatch registry",
        description="Manage model versions: which one agents run, and the log of changes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path(env.get("GAPWATCH_REGISTRY_DIR", "models")),
        help="registry root [env GAPWATCH_REGISTRY_DIR, default ./models]",
    )
    p.add_argument(
        "--name",
        default=env.get("GAPWATCH_MODEL_NAME"),
        help="model name [env GAPWATCH_MODEL_NAME; default: the only model under --root]",
    )
    p.add_argument(
        "--announce",
        default=env.get("GAPWATCH_ANNOUNCE_MQTT", ""),
        metavar="URL",
        help="mqtt://[user:pass@]host:port[/topic/{name}] for a retained reload announcement "
        "[env GAPWATCH_ANNOUNCE_MQTT]",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="action", required=True, metavar="{list,publish,promote,rollback}")
    ls = sub.add_parser("list", help="versions, the current one marked *, and the change log")
    ls.add_argument("--log", action="store_true", help="also print every promotion/rollback")
    pub = sub.add_parser("publish", help="copy a bundle directory in (verified, not promoted)")
    pub.add_argument("bundle", type=Path, help="a bundle directory (model.onnx + manifest.json)")
    pro = sub.add_parser("promote", help="make VERSION the one agents run")
    pro.add_argument("version")
    pro.add_argument("--reason", default="manual promotion")
    rb = sub.add_parser("rollback", help="return to the version promoted before the current one")
    rb.add_argument("--reason", default="manual rollback")
    for action in (pro, rb):
        add_promotion_signing_args(action)
    return p


def _model_name(root: Path, given: str | None) -> str:
    if given:
        return given
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) != 1:
        raise RegistryError(f"{root} holds models {names}; choose one with --name")
    return names[0]


def _announce(registry: Registry, event: RegistryEvent, url: str) -> None:
    if url:
        announcer_from_url(url).announce(registry.announcement(event.version))
        print(f"announced {registry.name}/{event.version} on {url.rsplit('@', maxsplit=1)[-1]}")


def run(args: argparse.Namespace) -> int:
    root: Path = args.root
    if args.action == "publish":
        try:
            name = args.name or read_manifest(args.bundle).name
        except BundleError as exc:
            raise RegistryError(str(exc)) from exc
        path = Registry(root, name).publish(args.bundle)
        print(f"published {path} (not promoted; run: gapwatch registry promote {path.name})")
        return 0
    if not root.is_dir():
        raise RegistryError(f"registry root {root} does not exist; create it or pass --root")
    registry = Registry(root, _model_name(root, args.name))
    if args.action == "list":
        versions = registry.versions()
        if args.json:
            body = {
                "name": registry.name,
                "current": registry.current(),
                "versions": [
                    {"version": v.version, "created_at": v.created_at, "current": v.current,
                     "promoted": v.promoted} for v in versions
                ],
                "events": [e.__dict__ for e in registry.events()] if args.log else [],
            }  # fmt: skip
            print(json.dumps(body, indent=2))
            return 0
        print(f"model {registry.name} in {registry.dir}")
        for v in versions:
            mark = "*" if v.current else " "
            state = "promoted" if v.promoted else "published"
            print(f"{mark} {v.version:<24} {v.created_at:<25} {state}")
        if not versions:
            print("  (no versions)")
        if args.log:
            for e in registry.events():
                came = f" (from {e.previous})" if e.previous else ""
                print(f"  {e.at} {e.action:<8} {e.version}{came} {e.reason}")
        return 0
    try:
        key, required = promotion_signing(args)
    except BundleError as exc:
        raise RegistryError(str(exc)) from exc
    registry = Registry(registry.root, registry.name, signing_key=key, require_signed=required)
    if args.action == "promote":
        event = registry.promote(args.version, args.reason)
    else:
        event = registry.rollback(args.reason)
    if key is not None:
        print(f"signed {registry.name}/{event.version} and its CURRENT pointer")
    print(f"{event.action}: {registry.name} now runs {event.version} (was {event.previous})")
    _announce(registry, event, args.announce)
    return 0


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] in SIGNING_ACTIONS:  # keygen, sign, verify: pipeline.cli.signing
        from pipeline.cli.signing import main as signing_main

        return signing_main(list(argv))
    args = _parser().parse_args(list(argv))
    try:
        return run(args)
    except PipelineError as exc:
        print(f"gapwatch registry: {exc}", file=sys.stderr)
        return 1
