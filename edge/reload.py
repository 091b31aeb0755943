"""Model hot reload: watch ``<root>/<name>/`` and hand verified bundles to the agent.

The version to run is :func:`edge.bundle.current_version_dir` (the ``CURRENT`` pointer the
registry writes, else the newest complete version). :meth:`BundleWatcher.check` runs on the
agent thread, every ``bundles.poll_s`` seconds and at once when a retained announcement
arrives on ``mqtt.announce_topic``. A changed version (or changed files) is loaded with
:func:`edge.bundle.load_bundle` — manifest, sha256 and ONNX shapes all verified — before the
agent swaps it in; a bundle that fails is refused (logged, counted, reported once per file
state) and the current model keeps running. With ``bundles.trusted_keys`` the bundle must also
carry a valid Ed25519 signature by one of those keys (:mod:`edge.signing`), and a version
older than the one running needs a signed rollback pointer (:mod:`edge.rollback`).

At start-up (:meth:`BundleWatcher.load_initial`) a model whose chosen version is refused falls
back to its newest usable version, logged as ``bundle.fallback`` at error level with the version
used and why the chosen one was refused; only a model with no usable version at all stops the
agent. The refused version is retried on reload as soon as its files change (e.g. once signed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.bundle import (
    CURRENT_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    Bundle,
    current_version_dir,
    load_bundle,
    located,
    version_dirs,
)
from edge.errors import BundleError

if TYPE_CHECKING:
    from edge.rollback import RollbackGuard

__all__ = ["BundleWatcher", "ReloadEvent", "bundle_loader", "rollback_guard", "topic_matches"]

log = logging.getLogger(__name__)

Fingerprint = tuple[str, int, int, int, int, int]  # path, manifest, model (2), signature, pointer
SIGNATURE_FILE = "signature.json"
POINTER_FILE = "CURRENT.sig.json"  # edge.pointer.POINTER_FILE, without importing cryptography


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


def rollback_guard(
    trusted_keys: str, state_file: str | Path | None = None, *, write_state: bool = True
) -> RollbackGuard | None:
    """The rollback guard of an agent with a trusted-keys PEM file; None without one."""
    if not trusted_keys:
        return None
    from edge.pointer import read_pointer
    from edge.rollback import RollbackGuard
    from edge.signing import load_public_keys

    keys = load_public_keys(trusted_keys)
    return RollbackGuard(
        lambda model_dir: read_pointer(model_dir, keys), state_file, write_state=write_state
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
    p_time, _ = stat(version_dir.parent / POINTER_FILE)
    return (str(version_dir.resolve()), m_time, o_time, o_size, s_time, p_time)


def _pointer_fingerprint(model_dir: Path) -> Fingerprint:
    pointer = model_dir / CURRENT_FILE
    try:
        st = pointer.stat()
    except OSError:
        return (f"{pointer}?", -1, -1, -1, -1, -1)
    return (str(pointer), st.st_mtime_ns, st.st_size, -1, -1, -1)


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
        guard: RollbackGuard | None = None,
    ) -> None:
        self.root = Path(root)
        self.names = tuple(sorted(set(names)))
        self._loader = loader or bundle_loader("", intra_op_threads)
        self._guard = guard
        self.current: dict[str, Bundle] = {}
        self.fallbacks: dict[str, str] = {}  # model -> why its chosen version was not used
        self._loaded: dict[str, Fingerprint] = {}
        self._refused: dict[str, Fingerprint] = {}

    def _load(self, name: str, version_dir: Path) -> tuple[Bundle, int]:
        """Load and verify; with a guard, also refuse an unsigned rollback. Raise BundleError."""
        bundle = self._loader(version_dir)
        epoch = self._guard.check(name, bundle) if self._guard is not None else 0
        return bundle, epoch

    def _use(self, name: str, version_dir: Path, bundle: Bundle, epoch: int) -> None:
        self.current[name] = bundle
        self._loaded[name] = _fingerprint(version_dir)
        if self._guard is not None:
            self._guard.accept(name, bundle.manifest.version, epoch)

    def load_initial(self) -> dict[str, Bundle]:
        """Load every model, falling back to its newest usable version when the chosen one is
        refused; raise BundleError naming each model with no usable version and why."""
        problems: list[str] = []
        for name in self.names:
            model_dir = self.root / name
            refusals: list[str] = []
            refused_fp: Fingerprint | None = None
            try:
                chosen = current_version_dir(model_dir)
            except BundleError as exc:
                chosen, refused_fp = None, _pointer_fingerprint(model_dir)
                refusals.append(str(exc))
            candidates = [chosen] if chosen is not None else []
            candidates += [d for d in reversed(version_dirs(model_dir)) if d != chosen]
            if not candidates and not refusals:
                problems.append(
                    f"{model_dir}: no bundle version found (expected "
                    f"{model_dir}/<version>/{MANIFEST_FILE}); train one or fix bundles.root"
                )
                continue
            for version_dir in candidates:
                try:
                    bundle, epoch = self._load(name, version_dir)
                except BundleError as exc:
                    refusals.append(str(exc))
                    if refused_fp is None:
                        refused_fp = _fingerprint(version_dir)
                    continue
                self._use(name, version_dir, bundle, epoch)
                if refusals:
                    self._fall_back(name, chosen, version_dir, refusals, refused_fp)
                break
            else:
                problems.extend(refusals)
        if problems:
            raise BundleError(str(self.root), problems)
        return dict(self.current)

    def _fall_back(
        self,
        name: str,
        chosen: Path | None,
        used: Path,
        refusals: list[str],
        refused_fp: Fingerprint | None,
    ) -> None:
        why = " | ".join(r.replace("\n", " ") for r in refusals)
        wanted = chosen.name if chosen is not None else CURRENT_FILE
        self.fallbacks[name] = why
        if refused_fp is not None:
            self._refused[name] = refused_fp  # check() retries it once its files change
        log.error(
            "bundle.fallback",
            extra={"model": name, "wanted": wanted, "using": used.name, "problem": why},
        )

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
            loaded = self._loaded.get(name)
            if fp == loaded or fp == self._refused.get(name):
                continue
            if loaded is not None and fp[:5] == loaded[:5]:  # only the signed pointer changed
                if self._guard is not None:
                    self._guard.observe(name, version_dir.parent)
                self._loaded[name] = fp
                continue
            try:
                bundle, epoch = self._load(name, version_dir)
            except BundleError as exc:
                self._refused[name] = fp
                events.append(self._refuse(name, version_dir, exc))
                continue
            old = self.current.get(name)
            self._use(name, version_dir, bundle, epoch)
            self._refused.pop(name, None)
            self.fallbacks.pop(name, None)
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
