"""The model bundle: ``<root>/<name>/<version>/{model.onnx, manifest.json}``.

Format rules (format version 1.x). A writer MUST and a reader checks:

1. ``manifest.json`` is a JSON object with every field of :class:`Manifest`; unknown fields are
   kept in ``extra`` and ignored by readers of the same major version.
2. ``format_version`` is ``"<major>.<minor>"``; a reader refuses a major it does not know.
3. ``channels`` is a non-empty list of ``{name, unit, center, scale}`` with unique names and
   ``scale > 0``; model inputs are ``(value - center) / scale``.
4. ``model_sha256`` is the hex sha256 of ``model.onnx``.
5. The ONNX graph has exactly the inputs and outputs named in ``inputs`` / ``outputs``, each
   ``float32`` of shape ``[batch, window, channels]`` where ``batch`` is dynamic.
6. A bundle is written to a temporary directory beside its final place and renamed into place,
   so a reader never sees half a bundle.
7. A bundle found at ``<root>/<name>/<version>/`` declares that ``name`` and ``version`` in its
   manifest; a reader that finds it there (the agent) refuses a mismatch.
8. ``<root>/<name>/CURRENT``, when present, holds one version name of a version directory
   directly under ``<root>/<name>/`` (no path, no ``..``); anything else is an error, never
   a silent fall back.
9. A reader hashes the ``model.onnx`` bytes it hands to onnxruntime (read once), so a file
   swapped after the check is never run.

:func:`load_bundle` reports every problem it finds in one :class:`~edge.errors.BundleError`
and never returns a half-loaded bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import BundleError

FORMAT_VERSION = "1.0"
SUPPORTED_MAJOR = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
INPUT_NAMES = ("x", "mask")
OUTPUT_NAMES = ("mean", "logvar")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "Channel",
    "Manifest",
    "ThresholdSpec",
    "current_pointer",
    "current_version_dir",
    "latest_version_dir",
    "load_bundle",
    "located",
    "read_manifest",
    "set_current_version",
    "version_dirs",
    "version_key",
    "write_bundle",
]


@dataclass(frozen=True)
class Channel:
    """One sensor channel: its name, unit and the scaling used for model inputs."""

    name: str
    unit: str
    center: float
    scale: float


@dataclass(frozen=True)
class ThresholdSpec:
    """The alarm rule, calibrated on held-out normal data.

    The per-tick score is EWMA-smoothed with ``ewma_alpha``; the alarm turns on when the
    smoothed score exceeds ``on`` and off again when it falls below ``off`` (``off <= on``).
    """

    on: float
    off: float
    ewma_alpha: float
    target_false_alarm_rate: float


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to know about a model, besides its weights."""

    format_version: str
    name: str
    version: str
    created_at: str  # RFC 3339, UTC
    channels: tuple[Channel, ...]
    tick_seconds: float
    window: int
    max_gap_ticks: int  # a device silent longer than this is offline, not imputed
    backfill_delay: int  # ticks after which a tick is re-imputed and emitted as a revision
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    opset: int
    score: str  # meaning of the score
    threshold: ThresholdSpec
    training: Mapping[str, Any]  # data range, source, rows, seed, hyperparameters
    evaluation: Mapping[str, Any]
    model_sha256: str
    producer: Mapping[str, str]  # library versions that produced the bundle
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    @property
    def center(self) -> np.ndarray:
        return np.array([c.center for c in self.channels], dtype=np.float64)

    @property
    def scale(self) -> np.ndarray:
        return np.array([c.scale for c in self.channels], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out["channels"] = [asdict(c) for c in self.channels]
        out["inputs"] = list(self.inputs)
        out["outputs"] = list(self.outputs)
        out["training"] = dict(self.training)
        out["evaluation"] = dict(self.evaluation)
        out["producer"] = dict(self.producer)
        out.update(extra)
        return out

    @classmethod
    def from_dict(
        cls, data: Any, where: str = "manifest", expect: tuple[str, str] | None = None
    ) -> Manifest:
        """Validate and build a manifest; raise BundleError listing every problem.

        ``expect`` is the ``(name, version)`` of the path the manifest was found at
        (``<name>/<version>/``): a manifest naming another model or version is refused.
        """
        if not isinstance(data, dict):
            raise BundleError(where, ["manifest is not a JSON object"])
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        missing = [f"missing field {key!r}" for key in sorted(known - set(data))]
        if missing:
            raise BundleError(where, missing)
        problems: list[str] = []
        fv = str(data["format_version"])
        _check_identity(data, fv, expect, problems)
        channels = _channels(data["channels"], problems)
        num = _Numbers(data, problems)
        tick = num.get("tick_seconds", float, 1e-6)
        window = num.get("window", int, 1)
        max_gap = num.get("max_gap_ticks", int, 0)
        backfill = num.get("backfill_delay", int, 0)
        opset = num.get("opset", int, 1)
        if isinstance(window, int) and isinstance(backfill, int) and backfill >= max(window, 1):
            problems.append(f"backfill_delay {backfill} must be smaller than window {window}")
        if list(data["inputs"]) != list(INPUT_NAMES):
            problems.append(f"inputs {data['inputs']!r} must be {list(INPUT_NAMES)}")
        if list(data["outputs"]) != list(OUTPUT_NAMES):
            problems.append(f"outputs {data['outputs']!r} must be {list(OUTPUT_NAMES)}")
        threshold = _threshold(data["threshold"], problems)
        sha = data["model_sha256"]
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            problems.append("model_sha256 must be 64 lowercase hex characters")
        for key in ("training", "evaluation", "producer"):
            if not isinstance(data[key], dict):
                problems.append(f"{key} must be a JSON object")
        if problems:
            raise BundleError(where, problems)
        return cls(
            format_version=fv,
            name=data["name"],
            version=data["version"],
            created_at=str(data["created_at"]),
            channels=tuple(channels),
            tick_seconds=tick,
            window=window,
            max_gap_ticks=max_gap,
            backfill_delay=backfill,
            inputs=tuple(data["inputs"]),
            outputs=tuple(data["outputs"]),
            opset=opset,
            score=str(data["score"]),
            threshold=threshold,
            training=dict(data["training"]),
            evaluation=dict(data["evaluation"]),
            model_sha256=sha,
            producer={str(k): str(v) for k, v in data["producer"].items()},
            extra={k: v for k, v in data.items() if k not in known},
        )


def _check_identity(
    data: dict[str, Any], fv: str, expect: tuple[str, str] | None, problems: list[str]
) -> None:
    """Format version this reader knows; name and version well-formed and matching the path."""
    m = re.fullmatch(r"(\d+)\.(\d+)", fv)
    if m is None:
        problems.append(f"format_version {fv!r} is not '<major>.<minor>'")
    elif int(m.group(1)) != SUPPORTED_MAJOR:
        problems.append(
            f"format_version {fv!r} has major {m.group(1)}; this reader knows {SUPPORTED_MAJOR}"
        )
    for key in ("name", "version"):
        if not isinstance(data[key], str) or not _NAME_RE.match(data[key]):
            problems.append(f"{key} {data[key]!r} must match {_NAME_RE.pattern}")
    if expect is not None:
        for key, wanted in zip(("name", "version"), expect, strict=True):
            if data[key] != wanted:
                problems.append(
                    f"manifest {key} {data[key]!r} does not match the path "
                    f"{expect[0]}/{expect[1]} (a bundle must sit in <name>/<version>/)"
                )


def _channels(raw: Any, problems: list[str]) -> list[Channel]:
    channels: list[Channel] = []
    if not isinstance(raw, list) or not raw:
        problems.append("channels must be a non-empty list")
        raw = []
    for i, ch in enumerate(raw):
        try:
            c = Channel(str(ch["name"]), str(ch["unit"]), float(ch["center"]), float(ch["scale"]))
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"channels[{i}] needs name, unit, center, scale ({exc!r})")
            continue
        if not (np.isfinite(c.scale) and c.scale > 0 and np.isfinite(c.center)):
            problems.append(f"channels[{i}] ({c.name}) needs finite center and scale > 0")
        channels.append(c)
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        problems.append(f"channel names are not unique: {names}")
    return channels


class _Numbers:
    """Numeric manifest fields: converted, range-checked, problems collected."""

    def __init__(self, data: dict[str, Any], problems: list[str]) -> None:
        self._data = data
        self._problems = problems

    def get(self, key: str, kind: type, minimum: float) -> Any:
        try:
            value = kind(self._data[key])
        except (TypeError, ValueError):
            self._problems.append(f"{key} {self._data[key]!r} is not a {kind.__name__}")
            return kind(minimum)
        if not value >= minimum:
            self._problems.append(f"{key} {value!r} must be >= {minimum}")
        return value


def _threshold(thr: Any, problems: list[str]) -> ThresholdSpec:
    try:
        threshold = ThresholdSpec(
            float(thr["on"]),
            float(thr["off"]),
            float(thr["ewma_alpha"]),
            float(thr["target_false_alarm_rate"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"threshold needs on, off, ewma_alpha, target_false_alarm_rate ({exc!r})")
        return ThresholdSpec(0.0, 0.0, 1.0, 0.0)
    if not threshold.off <= threshold.on:
        problems.append(f"threshold off {threshold.off} must be <= on {threshold.on}")
    if not 0 < threshold.ewma_alpha <= 1:
        problems.append(f"threshold ewma_alpha {threshold.ewma_alpha} must be in (0, 1]")
    return threshold


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, its directory, and a ready onnxruntime session."""

    path: Path
    manifest: Manifest
    session: Any  # onnxruntime.InferenceSession

    @property
    def model_id(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    def run(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode a batch: ``x``, ``mask`` of shape [batch, window, channels] (scaled, float32).

        Returns ``(mean, logvar)`` of the same shape, in scaled units.
        """
        mean, logvar = self.session.run(
            list(OUTPUT_NAMES),
            {
                "x": np.ascontiguousarray(x, np.float32),
                "mask": np.ascontiguousarray(mask, np.float32),
            },
        )
        return np.asarray(mean), np.asarray(logvar)


def located(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The ``(name, version)`` a bundle directory ``<root>/<name>/<version>/`` must declare."""
    bundle_dir = Path(path)
    return (bundle_dir.parent.name, bundle_dir.name)


def read_manifest(path: str | os.PathLike[str], expect: tuple[str, str] | None = None) -> Manifest:
    """Read and validate ``manifest.json`` of a bundle directory (no ONNX checks).

    With ``expect`` (see :func:`located`) the manifest's name and version must match it.
    """
    bundle_dir = Path(path)
    mpath = bundle_dir / MANIFEST_FILE
    try:
        data = json.loads(mpath.read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(str(bundle_dir), [f"{MANIFEST_FILE} not found"]) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(str(bundle_dir), [f"{MANIFEST_FILE} unreadable: {exc}"]) from exc
    return Manifest.from_dict(data, where=str(bundle_dir), expect=expect)


def _check_onnx_io(session: Any, manifest: Manifest) -> list[str]:
    problems: list[str] = []
    want = [manifest.window, len(manifest.channels)]
    for kind, specs, names in (
        ("input", session.get_inputs(), manifest.inputs),
        ("output", session.get_outputs(), manifest.outputs),
    ):
        got = [s.name for s in specs]
        if got != list(names):
            problems.append(f"ONNX {kind} names {got} differ from manifest {list(names)}")
            continue
        for spec in specs:
            shape = list(spec.shape)
            if len(shape) != 3 or [int(d) if isinstance(d, int) else d for d in shape[1:]] != want:
                problems.append(
                    f"ONNX {kind} {spec.name!r} has shape {shape}, "
                    f"manifest says [batch, {want[0]}, {want[1]}]"
                )
            if spec.type != "tensor(float)":
                problems.append(
                    f"ONNX {kind} {spec.name!r} has type {spec.type}, want tensor(float)"
                )
    return problems


def load_bundle(
    path: str | os.PathLike[str],
    intra_op_threads: int = 1,
    *,
    expect: tuple[str, str] | None = None,
    model_bytes: bytes | None = None,
) -> Bundle:
    """Load and fully verify a bundle directory; raise BundleError listing every problem.

    ``model.onnx`` is read once: the bytes that were hashed are the bytes onnxruntime
    builds its session from, so a file swapped after the check is never run. ``model_bytes``
    hands in bytes already read (and checked) by the caller, e.g. :mod:`edge.signing`.
    ``expect`` is the ``(name, version)`` the manifest must declare (see :func:`located`).
    """
    import onnxruntime as ort

    bundle_dir = Path(path)
    manifest = read_manifest(bundle_dir, expect=expect)
    model_path = bundle_dir / MODEL_FILE
    if model_bytes is None:
        try:
            model_bytes = model_path.read_bytes()
        except FileNotFoundError as exc:
            raise BundleError(str(bundle_dir), [f"{MODEL_FILE} not found"]) from exc
        except OSError as exc:
            raise BundleError(
                str(bundle_dir), [f"{MODEL_FILE} unreadable: {exc.strerror or exc}"]
            ) from exc
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != manifest.model_sha256:
        raise BundleError(
            str(bundle_dir),
            [f"sha256 of {MODEL_FILE} is {digest}, manifest says {manifest.model_sha256}"],
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise BundleError(
            str(bundle_dir), [f"onnxruntime cannot load {MODEL_FILE}: {exc}"]
        ) from exc
    problems = _check_onnx_io(session, manifest)
    if problems:
        raise BundleError(str(bundle_dir), problems)
    return Bundle(path=bundle_dir, manifest=manifest, session=session)


def write_bundle(root: str | os.PathLike[str], manifest: Manifest, onnx_bytes: bytes) -> Path:
    """Write ``<root>/<name>/<version>/`` atomically and return its path.

    ``manifest.model_sha256`` is replaced by the digest of ``onnx_bytes``. The manifest is
    validated before anything is written, and the finished directory is loaded back with
    :func:`load_bundle` before it is renamed into place.
    """
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    data = manifest.to_dict()
    data["model_sha256"] = digest
    checked = Manifest.from_dict(data, where=f"{manifest.name}/{manifest.version}")
    final = Path(root) / checked.name / checked.version
    if final.exists():
        raise BundleError(str(final), ["a bundle with this name and version already exists"])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{checked.version}.", dir=final.parent))
    try:
        (tmp / MODEL_FILE).write_bytes(onnx_bytes)
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(checked.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8"
        )
        load_bundle(tmp)
        for name in (MODEL_FILE, MANIFEST_FILE):
            with (tmp / name).open("rb") as fh:
                os.fsync(fh.fileno())
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def version_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key of a version name: numeric parts compare as numbers (``2 < 10``)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[._-]", name))


CURRENT_FILE = "CURRENT"


def version_dirs(model_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete ``<version>/`` directories under ``<root>/<name>/``, oldest first.

    Hidden temporary directories are skipped. Versions compare numerically part by part
    (``2 < 10``, ``1.2 < 1.10``); timestamps such as ``20261125T120000`` sort correctly too.
    """
    base = Path(model_dir)
    if not base.is_dir():
        return []
    found = [
        p
        for p in base.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).exists()
    ]
    return sorted(found, key=lambda p: version_key(p.name))


def latest_version_dir(model_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete version directory under ``<root>/<name>/``, or None."""
    versions = version_dirs(model_dir)
    return versions[-1] if versions else None


def current_pointer(model_dir: str | os.PathLike[str]) -> str | None:
    """The version named in ``<root>/<name>/CURRENT``, checked; None when there is no pointer.

    ``CURRENT`` MUST hold one version name (``[A-Za-z0-9][A-Za-z0-9._-]*``, one line) of a
    complete version directory directly under the model directory: not a path, not ``..``.
    Anything else is a BundleError naming every problem, never a silent fall back to another
    version. (A version entry may itself be a symbolic link, as :func:`version_dirs` lists it:
    whoever can create entries in the model directory chooses its versions anyway; the demo
    and the benchmarks link bundles in this way.)
    """
    base = Path(model_dir)
    pointer = base / CURRENT_FILE
    try:
        raw = pointer.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError(str(pointer), [f"unreadable: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(str(pointer), ["is not UTF-8 text"]) from exc
    version = text.strip()
    problems: list[str] = []
    if not _NAME_RE.fullmatch(version):
        problems.append(
            f"names {version[:80]!r}, which is not a version directory name "
            f"(must match {_NAME_RE.pattern}: no '/', no '..', no absolute path)"
        )
    else:
        chosen = base / version
        if not (chosen / MANIFEST_FILE).is_file():
            problems.append(f"names version {version!r}, but {chosen}/{MANIFEST_FILE} is missing")
    if problems:
        raise BundleError(str(pointer), problems)
    return version


def current_version_dir(model_dir: str | os.PathLike[str]) -> Path | None:
    """The version an agent should run: the one named in ``<root>/<name>/CURRENT``, else the newest.

    The registry (``gapwatch registry promote|rollback``) rewrites ``CURRENT`` atomically.
    A ``CURRENT`` that does not name a version directory directly under ``model_dir`` raises
    BundleError (see :func:`current_pointer`).
    """
    base = Path(model_dir)
    version = current_pointer(base)
    if version is not None:
        return base / version
    return latest_version_dir(base)


def set_current_version(model_dir: str | os.PathLike[str], version: str) -> None:
    """Point ``<root>/<name>/CURRENT`` at ``version`` atomically (write temp, rename)."""
    base = Path(model_dir)
    if not _NAME_RE.fullmatch(version):
        raise BundleError(str(base), [f"{version!r} is not a version directory name"])
    if not (base / version / MANIFEST_FILE).exists():
        raise BundleError(str(base / version), ["no such bundle version"])
    tmp = base / f".{CURRENT_FILE}.tmp"
    tmp.write_text(version + "\n", encoding="utf-8")
    tmp.rename(base / CURRENT_FILE)
