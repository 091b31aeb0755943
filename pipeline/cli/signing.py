"""``gapwatch registry keygen|sign|verify``: Ed25519 keys and bundle signatures.

The format and the checks live in :mod:`edge.signing` (the agent verifies with the same code);
this is the operator's side: make a key pair, sign bundles before agents may load them, and
check a signature by hand. ``pipeline.cli.registry`` hands these three actions to :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import BundleError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["ACTIONS", "add_promotion_signing_args", "main", "promotion_signing"]

ACTIONS = ("keygen", "sign", "verify")

EPILOG = """\
A signed bundle has signature.json beside manifest.json and model.onnx: an Ed25519 signature
over the sha256 of both files. Agents with bundles.trusted_keys set refuse unsigned or
tampered bundles and keep running the model they have.

examples:
  gapwatch registry keygen --out /etc/gapwatch/signing          # signing.key (0600) + signing.pub
  GAPWATCH_SIGNING_KEY=/etc/gapwatch/signing.key gapwatch registry sign models/skab/20260101T000000Z
  gapwatch registry verify --public-key signing.pub models/skab/20260101T000000Z

Keep the .key file off gateways; copy only the .pub file to them. To rotate keys, put the old
and the new public key in one .pub file (PEM blocks one after the other), re-sign, then drop
the old one.
"""


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="gapwatch registry",
        description="Sign model bundles so that agents load only bundles you made.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="{keygen,sign,verify}")
    kg = sub.add_parser("keygen", help="create an Ed25519 key pair: <out>.key and <out>.pub")
    kg.add_argument(
        "--out",
        type=Path,
        default=Path(env.get("GAPWATCH_SIGNING_KEY_BASE", "gapwatch-signing")),
        help="path without extension [env GAPWATCH_SIGNING_KEY_BASE, default gapwatch-signing]",
    )
    kg.add_argument("--force", action="store_true", help="overwrite existing key files")
    _passphrase_args(kg, "encrypt the private key with a passphrase")
    sg = sub.add_parser("sign", help="write signature.json into bundle directories")
    sg.add_argument("bundles", type=Path, nargs="+", help="bundle directories to sign")
    sg.add_argument(
        "--key",
        type=Path,
        default=env.get("GAPWATCH_SIGNING_KEY"),
        help="private key PEM [env GAPWATCH_SIGNING_KEY]",
    )
    _passphrase_args(sg, "passphrase of an encrypted private key")
    vf = sub.add_parser("verify", help="check bundles against trusted public keys")
    vf.add_argument("bundles", type=Path, nargs="+", help="bundle directories to check")
    vf.add_argument(
        "--public-key",
        type=Path,
        default=env.get("GAPWATCH_BUNDLE_PUBLIC_KEY"),
        help="trusted public key(s) PEM [env GAPWATCH_BUNDLE_PUBLIC_KEY]",
    )
    return p


def _passphrase_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        default=os.environ.get("GAPWATCH_SIGNING_PASSPHRASE_FILE"),
        help=f"{what}: read it from this file [env GAPWATCH_SIGNING_PASSPHRASE_FILE; "
        "or the passphrase itself in GAPWATCH_SIGNING_PASSPHRASE]",
    )


def _passphrase(path: Path | None) -> bytes | None:
    if path is not None:
        try:
            return path.read_bytes().rstrip(b"\r\n") or None
        except OSError as exc:
            raise BundleError(str(path), [f"cannot read passphrase file: {exc.strerror}"]) from exc
    value = os.environ.get("GAPWATCH_SIGNING_PASSPHRASE", "")
    return value.encode() if value else None


def _write_private(path: Path, data: bytes, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def _keygen(out: Path, force: bool, passphrase: bytes | None) -> int:
    from edge.signing import generate_private_key, key_id, private_key_pem, public_key_pem

    key_path, pub_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    if not force:
        for path in (key_path, pub_path):
            if path.exists():
                raise BundleError(str(path), ["exists; pass --force to replace it"])
    out.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    _write_private(key_path, private_key_pem(key, passphrase), force)
    pub_path.write_bytes(public_key_pem(key))
    print(f"private key {key_path} (mode 0600{', encrypted' if passphrase else ''})")
    print(f"public key  {pub_path}")
    print(f"key id      {key_id(key)}")
    return 0


def _sign(bundles: Sequence[Path], key_path: Path | None, passphrase: bytes | None) -> int:
    from edge.signing import key_id, load_private_key, sign_bundle

    if key_path is None:
        raise BundleError("--key", ["no private key given: pass --key or set GAPWATCH_SIGNING_KEY"])
    key = load_private_key(key_path, passphrase)
    for bundle in bundles:
        path = sign_bundle(bundle, key)
        print(f"signed {bundle} -> {path.name} (key id {key_id(key)})")
    return 0


def _verify(bundles: Sequence[Path], public_key: Path | None) -> int:
    from edge.signing import load_public_keys, verify_bundle

    if public_key is None:
        raise BundleError(
            "--public-key",
            ["no public key given: pass --public-key or set GAPWATCH_BUNDLE_PUBLIC_KEY"],
        )
    trusted = load_public_keys(public_key)
    failed = 0
    for bundle in bundles:
        try:
            info = verify_bundle(bundle, trusted)
        except BundleError as exc:
            failed += 1
            print(f"FAIL {bundle}: {'; '.join(exc.problems)}")
            continue
        print(f"ok   {bundle} (key id {info.key_id})")
    return 1 if failed else 0


def add_promotion_signing_args(parser: argparse.ArgumentParser) -> None:
    """``--signing-key``, ``--passphrase-file`` and ``--public-key`` for commands that promote."""
    env = os.environ
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=env.get("GAPWATCH_SIGNING_KEY") or None,
        help="private key PEM: sign what is promoted or rolled back to, and the CURRENT "
        "pointer [env GAPWATCH_SIGNING_KEY]",
    )
    _passphrase_args(parser, "passphrase of an encrypted signing key")
    parser.add_argument(
        "--public-key",
        type=Path,
        default=env.get("GAPWATCH_BUNDLE_PUBLIC_KEY") or None,
        help="the agents' trusted public key(s) PEM: when set, promotion without a signing key "
        "(or with a key the agents do not trust) is refused [env GAPWATCH_BUNDLE_PUBLIC_KEY]",
    )


def promotion_signing(args: argparse.Namespace) -> tuple[Ed25519PrivateKey | None, bool]:
    """``(signing key or None, signatures required)`` from :func:`add_promotion_signing_args`.

    Raises BundleError when a key cannot be read, or the signing key is not one the
    agents trust.
    """
    from edge.signing import key_id, load_private_key, load_public_keys

    key = (
        load_private_key(args.signing_key, _passphrase(args.passphrase_file))
        if args.signing_key
        else None
    )
    if args.public_key is None:
        return key, False
    trusted = {key_id(k) for k in load_public_keys(args.public_key)}
    if key is not None and key_id(key) not in trusted:
        raise BundleError(
            str(args.signing_key),
            [
                f"signing key {key_id(key)} is not among the trusted keys in {args.public_key} "
                f"({', '.join(sorted(trusted))}); agents would refuse what it signs"
            ],
        )
    return key, True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.action == "keygen":
            return _keygen(args.out, args.force, _passphrase(args.passphrase_file))
        if args.action == "sign":
            return _sign(args.bundles, args.key, _passphrase(args.passphrase_file))
        return _verify(args.bundles, args.public_key)
    except BundleError as exc:
        print(f"gapwatch registry {args.action}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gapwatch registry {args.action}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
