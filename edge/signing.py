"""Ed25519 signatures over model bundles: who made this model, and is it the one they made.

A signed bundle carries a detached ``signature.json`` beside ``manifest.json`` and
``model.onnx``. Format rules (signature format 1). A signer MUST and a verifier checks:

1. ``signature.json`` is a JSON object ``{"format", "algorithm", "key_id", "files",
   "signature"}`` with ``format == "gapwatch-bundle-signature/1"`` and
   ``algorithm == "ed25519"``.
2. ``files`` maps exactly ``manifest.json`` and ``model.onnx`` to the lowercase hex sha256 of
   their bytes.
3. ``signature`` is the base64 Ed25519 signature over the *signed message*: the UTF-8 JSON
   ``{"files": ..., "format": ...}`` with sorted keys and ``(",", ":")`` separators.
4. ``key_id`` is the first 16 hex characters of the sha256 of the raw 32-byte public key; it
   only picks which trusted key to try (every trusted key is tried when none matches).

Because the manifest's own ``model_sha256`` is also checked by :func:`edge.bundle.load_bundle`,
a verified bundle is byte-for-byte the one the key holder signed. :func:`load_signed_bundle`
verifies, loads, then checks that the manifest it loaded is the manifest it verified, so a file
swapped between the two reads is refused too. Every failure is an
:class:`~edge.errors.BundleError` naming the bundle and what is wrong; an unsigned bundle is
refused whenever trusted keys are configured.

Keys are PEM files: the private key PKCS#8 (optionally encrypted with a passphrase), the public
key SubjectPublicKeyInfo. A public-key file may hold several PEM blocks (key rotation: trust the
old and the new key while bundles are re-signed).

A signed *older* bundle copied into a newer version directory is refused by the agent, which
loads with ``expect`` (the manifest's name and version must match ``<name>/<version>/``). A
signed older version named by ``CURRENT`` is refused by :mod:`edge.reload` unless a signed
pointer (:mod:`edge.pointer`) says the key holder rolled back to it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.bundle import MANIFEST_FILE, MODEL_FILE, Bundle, Manifest, load_bundle, read_manifest
from edge.errors import BundleError

__all__ = [
    "SIGNATURE_FILE",
    "SIGNATURE_FORMAT",
    "SignatureInfo",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "load_public_keys",
    "load_signed_bundle",
    "parse_public_keys",
    "private_key_pem",
    "public_key_pem",
    "sign_bundle",
    "verify_bundle",
]

SIGNATURE_FILE = "signature.json"
SIGNATURE_FORMAT = "gapwatch-bundle-signature/1"
ALGORITHM = "ed25519"
SIGNED_FILES = (MANIFEST_FILE, MODEL_FILE)
_PEM_BLOCK = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\s.*?-----END PUBLIC KEY-----", flags=re.DOTALL
)
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SignatureInfo:
    """What a successful verification established."""

    path: Path
    key_id: str
    files: dict[str, str]  # file name -> sha256 hex


# ----------------------------------------------------------------------------- keys


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key (from the operating system's CSPRNG)."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted with ``passphrase`` when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key (or of a private key's public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Short fingerprint of a public key: first 16 hex of sha256 over its raw 32 bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM; BundleError names the file and the fix."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(where, [f"cannot read private key: {exc.strerror or exc}"]) from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        raise BundleError(
            where,
            [
                f"private key passphrase problem ({exc}); set GAPWATCH_SIGNING_PASSPHRASE or "
                "pass --passphrase-file"
            ],
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(
            where,
            [
                "not a PEM private key, or wrong passphrase; create one with "
                "'gapwatch registry keygen'"
            ],
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(where, [f"private key is {type(key).__name__}, need Ed25519"])
    return key


def parse_public_keys(data: bytes, where: str = "public key") -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in PEM ``data`` (one or more blocks)."""
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise BundleError(where, ["no '-----BEGIN PUBLIC KEY-----' block found"])
    keys: list[Ed25519PublicKey] = []
    for i, block in enumerate(blocks):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise BundleError(where, [f"PEM block {i} is not a valid public key"]) from exc
        if not isinstance(key, Ed25519PublicKey):
            raise BundleError(where, [f"PEM block {i} is {type(key).__name__}, need Ed25519"])
        keys.append(key)
    return keys


def load_public_keys(path: str | os.PathLike[str]) -> list[Ed25519PublicKey]:
    """Read the trusted public keys from a PEM file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(str(path), [f"cannot read public key: {exc.strerror or exc}"]) from exc
    return parse_public_keys(data, str(path))


# ----------------------------------------------------------------------------- sign / verify


def _read_files(bundle_dir: Path) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    missing: list[str] = []
    for name in SIGNED_FILES:
        try:
            contents[name] = (bundle_dir / name).read_bytes()
        except OSError as exc:
            missing.append(f"{name} unreadable: {exc.strerror or exc}")
    if missing:
        raise BundleError(str(bundle_dir), missing)
    return contents


def _digests(contents: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def _signed_message(files: dict[str, str]) -> bytes:
    body = {"files": files, "format": SIGNATURE_FORMAT}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign_bundle(bundle_dir: str | os.PathLike[str], key: Ed25519PrivateKey) -> Path:
    """Write ``signature.json`` into a bundle directory (temp file, then rename); return it.

    The manifest is validated first, so a broken bundle is never signed.
    """
    path = Path(bundle_dir)
    read_manifest(path)
    files = _digests(_read_files(path))
    signature = key.sign(_signed_message(files))
    doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "key_id": key_id(key),
        "files": files,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE_FILE}.", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path / SIGNATURE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path / SIGNATURE_FILE


def _read_signature(path: Path) -> dict[str, Any]:
    sig_path = path / SIGNATURE_FILE
    try:
        raw = sig_path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(
            str(path),
            [
                f"unsigned: {SIGNATURE_FILE} not found, and trusted keys are configured; sign it "
                "with 'gapwatch registry sign'"
            ],
        ) from exc
    except OSError as exc:
        raise BundleError(str(path), [f"{SIGNATURE_FILE} unreadable: {exc}"]) from exc
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(str(path), [f"{SIGNATURE_FILE} is not JSON"]) from exc
    if not isinstance(doc, dict):
        raise BundleError(str(path), [f"{SIGNATURE_FILE} is not a JSON object"])
    return doc


def _check_shape(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if doc.get("format") != SIGNATURE_FORMAT:
        problems.append(
            f"signature format {doc.get('format')!r}, this reader knows {SIGNATURE_FORMAT!r}"
        )
    if doc.get("algorithm") != ALGORITHM:
        problems.append(f"signature algorithm {doc.get('algorithm')!r}, need {ALGORITHM!r}")
    files = doc.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(SIGNED_FILES):
        problems.append(f"signature files must list exactly {list(SIGNED_FILES)}")
    elif not all(isinstance(v, str) and _HEX64.fullmatch(v) for v in files.values()):
        problems.append("signature file digests must be 64 lowercase hex characters")
    if not isinstance(doc.get("signature"), str):
        problems.append("signature value missing")
    if not isinstance(doc.get("key_id", ""), str):
        problems.append("key_id must be a string")
    return problems


def verify_bundle(
    bundle_dir: str | os.PathLike[str], trusted: Sequence[Ed25519PublicKey]
) -> SignatureInfo:
    """Check ``signature.json`` against the bundle's files and the trusted keys.

    Raises BundleError when the bundle is unsigned, the signature is malformed, a file's
    digest differs from the signed one (tampered), or no trusted key made the signature.
    """
    info, _ = _verify(Path(bundle_dir), trusted)
    return info


def _verify(
    path: Path, trusted: Sequence[Ed25519PublicKey]
) -> tuple[SignatureInfo, dict[str, bytes]]:
    """Verify; also return the file contents that were verified."""
    if not trusted:
        raise BundleError(str(path), ["no trusted public key given to verify the signature"])
    doc = _read_signature(path)
    problems = _check_shape(doc)
    if problems:
        raise BundleError(str(path), problems)
    signed_files: dict[str, str] = dict(doc["files"])
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(str(path), ["signature value is not base64"]) from exc
    message = _signed_message(signed_files)
    wanted = str(doc.get("key_id", ""))
    ordered = sorted(trusted, key=lambda k: key_id(k) != wanted)  # the named key first
    signer = None
    for key in ordered:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        signer = key
        break
    if signer is None:
        known = ", ".join(key_id(k) for k in trusted)
        raise BundleError(
            str(path),
            [
                f"signature (key_id {wanted!r}) was not made by a trusted key (trusted: {known}),"
                " or signature.json was edited"
            ],
        )
    contents = _read_files(path)
    actual = _digests(contents)
    tampered = [
        f"{name} was modified after signing (sha256 {actual[name][:12]}..., signed "
        f"{signed_files[name][:12]}...)"
        for name in SIGNED_FILES
        if actual[name] != signed_files[name]
    ]
    if tampered:
        raise BundleError(str(path), tampered)
    return SignatureInfo(path=path, key_id=key_id(signer), files=actual), contents


def load_signed_bundle(
    bundle_dir: str | os.PathLike[str],
    trusted: Sequence[Ed25519PublicKey],
    intra_op_threads: int = 1,
    *,
    expect: tuple[str, str] | None = None,
) -> Bundle:
    """Verify the signature, load the bundle, and confirm it is the manifest that was verified.

    The ``model.onnx`` bytes whose digest the signature covers are the bytes handed to
    onnxruntime (read once), and a loaded manifest equal to the verified one means the
    manifest is the signed one too. ``expect``: see :func:`edge.bundle.located`.
    """
    path = Path(bundle_dir)
    _, contents = _verify(path, trusted)
    try:
        verified = Manifest.from_dict(json.loads(contents[MANIFEST_FILE]), where=str(path))
    except ValueError as exc:
        raise BundleError(str(path), [f"signed {MANIFEST_FILE} is not JSON"]) from exc
    bundle = load_bundle(
        path, intra_op_threads=intra_op_threads, expect=expect, model_bytes=contents[MODEL_FILE]
    )
    if bundle.manifest != verified:
        raise BundleError(str(path), [f"{MANIFEST_FILE} changed while the bundle was loading"])
    return bundle
