"""Model hot reload: watch ``<root>/<name>/`` and hand verified bundles to the agent.

The version to run is :func:`edge.bundle.current_version_dir` (the ``CURRENT`` pointer the
registry writes, else the newest complete version). :meth:`BundleWatcher.check` runs on the
agent thread, every ``bundles.poll_s`` seconds and at once when a retained announcement
arrives on ``mqtt.announce_topic``. A changed version (or changed files) is loaded with
:func:`edge.bundle.load_bundle` — manifest, sha256 and ONNX shapes all verified — before the
agent swaps it in; a bundle that fails is refused (logged, counted, reported once per file
state) and the current model keeps running. With ``bundles.trusted_keys`` the bundle must also
carry a valid Ed25519 signature by one of those keys (:mod:`edge.signing`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.bundle import (
    CURRENT_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    Bundle,
    current_version_dir,
    load_bundle,
    located,
)
from edge.errors import BundleError

__all__ = ["BundleWatcher", "ReloadEvent", "bundle_loader", "topic_matches"]

log = logging.getLogger(__name__)

Fingerprint = tuple[str, int, int, int, int]
SIGNATURE_FILE = "signature.json"


def bundle_loader(trusted_keys: str = "", intra_op_threads: int = 1) -> Callable[[Path], Bundle]:
    """``load_bundle``, or signature-checked loading when a trusted-keys PEM file is given.

    Either way the manifest must name the ``<name>/<version>/`` directory it sits in.
    Raises BundleError when the key file cannot be read.
    """
    if not trusted_keys:
        return lambda path: load_bundle(
            path, intra_op_threads=intra_op_threads, expect=located(path)
        )
    from edge.signing import load_public_keys, load_signed_bundle

    keys = load_public_keys(trusted_keys)
    return lambda path: load_signed_bundle(
        path, keys, intra_op_threads=intra_op_threads, expect=located(path)
    )


@dataclass(frozen=True)
class ReloadEvent:
    name: str
    path: Path
    bundle: Bundle | None  # the new bundle when accepted
    problem: str = ""  # why it was refused

    @property
    def ok(self) -> bool:
        return self.bundle is not None


def _fingerprint(version_dir: Path) -> Fingerprint:
    def stat(p: Path) -> tuple[int, int]:
        try:
            st = p.stat()
        except OSError:
            return (-1, -1)
        return (st.st_mtime_ns, st.st_size)

    m_time, _ = stat(version_dir / MANIFEST_FILE)
    o_time, o_size = stat(version_dir / MODEL_FILE)
    s_time, _ = stat(version_dir / SIGNATURE_FILE)
    return (str(version_dir.resolve()), m_time, o_time, o_size, s_time)


def _pointer_fingerprint(model_dir: Path) -> Fingerprint:
    pointer = model_dir / CURRENT_FILE
    try:
        st = pointer.stat()
    except OSError:
        return (f"{pointer}?", -1, -1, -1, -1)
    return (str(pointer), st.st_mtime_ns, st.st_size, -1, -1)


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest)."""
    f_parts, t_parts = filter_.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part != "+" and part != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


class BundleWatcher:
    """Tracks the bundle in use for each model name under ``root``."""

    def __init__(
        self,
        root: str | Path,
        names: Iterable[str],
        *,
        loader: Callable[[Path], Bundle] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self.root = Path(root)
        self.names = tuple(sorted(set(names)))
        self._loader = loader or bundle_loader("", intra_op_threads)
        self.current: dict[str, Bundle] = {}
        self._loaded: dict[str, Fingerprint] = {}
        self._refused: dict[str, Fingerprint] = {}

    def load_initial(self) -> dict[str, Bundle]:
        """Load every model; raise BundleError naming each one that is missing or bad."""
        problems: list[str] = []
        for name in self.names:
            version_dir = current_version_dir(self.root / name)
            if version_dir is None:
                problems.append(
                    f"{self.root / name}: no bundle version found (expected "
                    f"{self.root / name}/<version>/{MANIFEST_FILE}); train one or fix bundles.root"
                )
                continue
            try:
                self.current[name] = self._loader(version_dir)
            except BundleError as exc:
                problems.append(str(exc))
                continue
            self._loaded[name] = _fingerprint(version_dir)
        if problems:
            raise BundleError(str(self.root), problems)
        return dict(self.current)

    def check(self) -> list[ReloadEvent]:
        """Load what changed since the last check; return accepted and refused changes."""
        events: list[ReloadEvent] = []
        for name in self.names:
            try:
                version_dir = current_version_dir(self.root / name)
            except BundleError as exc:  # a CURRENT that names no version directory under name/
                fp = _pointer_fingerprint(self.root / name)
                if fp != self._refused.get(name):
                    self._refused[name] = fp
                    events.append(self._refuse(name, self.root / name / CURRENT_FILE, exc))
                continue
            if version_dir is None:
                continue
            fp = _fingerprint(version_dir)
            if fp == self._loaded.get(name) or fp == self._refused.get(name):
                continue
            try:
                bundle = self._loader(version_dir)
            except BundleError as exc:
                self._refused[name] = fp
                events.append(self._refuse(name, version_dir, exc))
                continue
            old = self.current.get(name)
            self.current[name] = bundle
            self._loaded[name] = fp
            self._refused.pop(name, None)
            log.info(
                "reload.accepted",
                extra={
                    "model": name,
                    "from": None if old is None else old.manifest.version,
                    "to": bundle.manifest.version,
                },
            )
            events.append(ReloadEvent(name, version_dir, bundle))
        return events

    def _refuse(self, name: str, path: Path, exc: BundleError) -> ReloadEvent:
        problem = "; ".join(exc.problems)
        log.error("reload.refused", extra={"model": name, "path": str(path), "problem": problem})
        return ReloadEvent(name, path, None, problem)
