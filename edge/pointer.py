"""The signed CURRENT pointer: which version the key holder chose to run, and in what order.

``CURRENT`` is a plain text file anyone with write access to the bundle root can edit; the
signatures of :mod:`edge.signing` prove a bundle is authentic, not that it is the one to run.
So the registry, when it holds a signing key, also writes ``<root>/<name>/CURRENT.sig.json``
on every promote and rollback. Format rules (pointer format 1). A writer MUST and a reader
checks:

1. The file is a JSON object ``{"format", "algorithm", "key_id", "pointer", "signature"}``
   with ``format == "gapwatch-current/1"`` and ``algorithm == "ed25519"``.
2. ``pointer`` is ``{"name", "version", "model_sha256", "epoch", "action"}``: the model, the
   version CURRENT names, the sha256 of its ``model.onnx``, an integer ``epoch`` that grows by
   at least one with every registry change of that model (the registry uses the length of its
   change log), and ``action`` (``"promote"`` or ``"rollback"``).
3. ``signature`` is the base64 Ed25519 signature over the UTF-8 JSON
   ``{"format": ..., "pointer": ...}`` with sorted keys and ``(",", ":")`` separators.

The rule an agent with trusted keys applies (:class:`edge.reload.BundleWatcher`): a version
*older* than the one it runs (or ran last, per its state file) is loaded only when a valid
pointer names that version and its sha256 with an epoch greater than any pointer epoch the
agent has seen. A replayed old rollback pointer has a smaller epoch; a forged one has no valid
signature; an edited ``CURRENT`` without a pointer is refused and the running model stays.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import BundleError
from edge.signing import key_id

__all__ = ["ACTIONS", "POINTER_FILE", "POINTER_FORMAT", "Pointer", "read_pointer", "write_pointer"]

POINTER_FILE = "CURRENT.sig.json"
POINTER_FORMAT = "gapwatch-current/1"
ACTIONS = ("promote", "rollback")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Pointer:
    """What the key holder signed: run ``name/version`` (with this model sha256) from ``epoch``."""

    name: str
    version: str
    model_sha256: str
    epoch: int
    action: str


def _message(pointer: dict[str, Any]) -> bytes:
    body = {"format": POINTER_FORMAT, "pointer": pointer}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def write_pointer(
    model_dir: str | os.PathLike[str], pointer: Pointer, key: Ed25519PrivateKey
) -> Path:
    """Sign ``pointer`` and write ``<model_dir>/CURRENT.sig.json`` atomically; return its path."""
    if pointer.action not in ACTIONS or pointer.epoch < 1:
        raise BundleError(str(model_dir), [f"refusing to sign a malformed pointer {pointer}"])
    body = asdict(pointer)
    doc = {
        "format": POINTER_FORMAT,
        "algorithm": "ed25519",
        "key_id": key_id(key),
        "pointer": body,
        "signature": base64.b64encode(key.sign(_message(body))).decode("ascii"),
    }
    base = Path(model_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{POINTER_FILE}.", dir=base)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, base / POINTER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return base / POINTER_FILE


def _shape(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return ["is not a JSON object"]
    problems: list[str] = []
    if doc.get("format") != POINTER_FORMAT:
        problems.append(f"format {doc.get('format')!r}, this reader knows {POINTER_FORMAT!r}")
    if doc.get("algorithm") != "ed25519":
        problems.append(f"algorithm {doc.get('algorithm')!r}, need 'ed25519'")
    if not isinstance(doc.get("signature"), str):
        problems.append("signature value missing")
    body = doc.get("pointer")
    if not isinstance(body, dict) or sorted(body) != sorted(Pointer.__dataclass_fields__):
        problems.append(f"pointer must hold exactly {sorted(Pointer.__dataclass_fields__)}")
        return problems
    for key in ("name", "version", "model_sha256", "action"):
        if not isinstance(body[key], str):
            problems.append(f"pointer {key} must be a string")
    if not isinstance(body["model_sha256"], str) or not _HEX64.fullmatch(body["model_sha256"]):
        problems.append("pointer model_sha256 must be 64 lowercase hex characters")
    if type(body["epoch"]) is not int or body["epoch"] < 1:
        problems.append("pointer epoch must be an integer >= 1")
    if body["action"] not in ACTIONS:
        problems.append(f"pointer action {body['action']!r} must be one of {list(ACTIONS)}")
    return problems


def read_pointer(
    model_dir: str | os.PathLike[str], trusted: Sequence[Ed25519PublicKey]
) -> Pointer | None:
    """The verified pointer of ``model_dir``; None when there is none.

    Raises BundleError (every problem in one) when the file is malformed or its signature was
    not made by a trusted key.
    """
    path = Path(model_dir) / POINTER_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError(str(path), [f"unreadable: {exc.strerror or exc}"]) from exc
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(str(path), ["is not JSON"]) from exc
    problems = _shape(doc)
    if problems:
        raise BundleError(str(path), problems)
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(str(path), ["signature value is not base64"]) from exc
    message = _message(doc["pointer"])
    for key in trusted:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return Pointer(**doc["pointer"])
    raise BundleError(
        str(path), ["signature was not made by a trusted key, or the pointer was edited"]
    )
