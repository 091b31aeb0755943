"""Rollback protection for an agent with trusted keys: no older version without a signed order.

A signed bundle proves who made it, not that it should run now: anyone who can edit
``CURRENT`` could point a signed agent back at an old, signed, perhaps broken version. The
:class:`RollbackGuard` remembers, per model, the version the agent accepted last (its *floor*)
and the highest epoch of a verified signed pointer (:mod:`edge.pointer`) it has seen. A version
older than the floor passes only when the verified pointer names exactly that version and its
model sha256, with an epoch above every epoch seen before: what ``gapwatch registry rollback``
(or an explicit ``promote`` of an older version) writes when it holds the signing key.

With a ``state_file`` (the agent uses ``<state_dir>/bundles.json``) the floor and epoch
survive restarts, so the rule holds at start-up too; without one it holds from start-up on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.bundle import Bundle, version_key
from edge.errors import BundleError
from edge.pointer import POINTER_FILE, Pointer

__all__ = ["STATE_FILE", "RollbackGuard"]

log = logging.getLogger(__name__)

STATE_FILE = "bundles.json"
PointerReader = Callable[[Path], Pointer | None]


@dataclass
class _Seen:
    version: str | None = None  # the floor: the version accepted last
    epoch: int = 0  # highest verified pointer epoch


class RollbackGuard:
    """Decides whether a loaded bundle may replace the one a model runs (see the module doc)."""

    def __init__(
        self,
        read_pointer: PointerReader,
        state_file: str | Path | None = None,
        *,
        write_state: bool = True,
    ) -> None:
        self._read = read_pointer
        self._seen: dict[str, _Seen] = {}
        self._memory = f" (remembered in {state_file})" if state_file else ""
        if state_file:
            self._load_state(Path(state_file))
        self._state_file = Path(state_file) if state_file and write_state else None

    def floor(self, name: str) -> str | None:
        return self._seen.get(name, _Seen()).version

    def check(self, name: str, bundle: Bundle) -> int:
        """Raise BundleError when ``bundle`` would be a rollback nobody signed; else the epoch.

        The returned epoch is what :meth:`accept` records once the bundle is in use.
        """
        seen = self._seen.get(name, _Seen())
        model_dir = bundle.path.parent
        pointer: Pointer | None = None
        pointer_problem = f"no {POINTER_FILE}"
        try:
            pointer = self._read(model_dir)
        except BundleError as exc:
            pointer_problem = "; ".join(exc.problems)
        epoch = seen.epoch
        if pointer is not None and pointer.name == name:
            epoch = max(epoch, pointer.epoch)
        version = bundle.manifest.version
        if seen.version is None or version_key(version) >= version_key(seen.version):
            return epoch
        if pointer is not None:
            if (pointer.name, pointer.version) != (name, version):
                pointer_problem = f"{POINTER_FILE} names {pointer.name}/{pointer.version}"
            elif pointer.model_sha256 != bundle.manifest.model_sha256:
                pointer_problem = f"{POINTER_FILE} names another model.onnx (sha256 differs)"
            elif pointer.epoch <= seen.epoch:
                pointer_problem = (
                    f"{POINTER_FILE} has epoch {pointer.epoch}, not above {seen.epoch} seen "
                    "before (a replayed old rollback)"
                )
            else:
                log.warning(
                    "reload.signed_rollback",
                    extra={"model": name, "from": seen.version, "to": version, "epoch": epoch},
                )
                return epoch
        raise BundleError(
            str(bundle.path),
            [
                f"version {version!r} is older than {seen.version!r}, which this agent ran"
                f"{self._memory}; "
                f"refused as a rollback nobody signed ({pointer_problem}). Roll back with "
                "'gapwatch registry rollback' holding the signing key, which signs the pointer"
            ],
        )

    def accept(self, name: str, version: str, epoch: int) -> None:
        """Record that ``name`` now runs ``version``; persist when a state file is set."""
        self._seen[name] = _Seen(version, max(epoch, self._seen.get(name, _Seen()).epoch))
        if self._state_file is not None:
            self._save_state(self._state_file)

    def observe(self, name: str, model_dir: Path) -> None:
        """Note a newer verified pointer epoch without a version change (ignores bad pointers)."""
        try:
            pointer = self._read(model_dir)
        except BundleError:
            return
        seen = self._seen.setdefault(name, _Seen())
        if pointer is not None and pointer.name == name and pointer.epoch > seen.epoch:
            seen.epoch = pointer.epoch
            if self._state_file is not None:
                self._save_state(self._state_file)

    # -- the state file ---------------------------------------------------------------------

    def _load_state(self, path: Path) -> None:
        try:
            data = json.loads(path.read_bytes())
            models = data["models"]
            for name, entry in models.items():
                self._seen[str(name)] = _Seen(str(entry["version"]), int(entry["epoch"]))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # the agent owns this file; a broken one only loses the floor kept across restarts
            log.error("bundle.state_unreadable", extra={"path": str(path), "error": repr(exc)})
            self._seen.clear()

    def _save_state(self, path: Path) -> None:
        body = {
            "format": 1,
            "models": {
                n: {"version": s.version, "epoch": s.epoch}
                for n, s in sorted(self._seen.items())
                if s.version is not None
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(body, indent=2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            log.error("bundle.state_unwritable", extra={"path": str(path), "error": repr(exc)})
