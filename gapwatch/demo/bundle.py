"""Which model bundle the demo scores with, and training one when the online demo needs it.

Offline (``gapwatch demo --offline``, the ``edge`` extra only, so no training), in this order:

1. ``--bundle`` (a version directory, or a model directory: its CURRENT, else newest version);
2. the bundle ``make demo`` trained, under ``<state>/bundles/``, if it reads the replay's
   channels;
3. a bundle shipped in the package: ``gapwatch/demo/model/fleet/<version>/`` (trained on the
   simulated fleet, :mod:`gapwatch.demo.fleet`) for the fleet, else the small SKAB bundle
   ``gapwatch/demo/model/skab/<version>/``.

Online (``gapwatch demo``), unless ``--bundle`` is given, :func:`ensure_trained` trains on the
normal rows of the replay files and reuses the previous bundle when the files (by content) and
the settings are the same, so a rerun does not train again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from edge.bundle import MODEL_FILE, Bundle, load_bundle, write_bundle
from edge.cli.score import resolve_bundle_dir
from edge.errors import EdgeError
from gapwatch.demo.errors import BundleNotFound, DemoError

__all__ = [
    "FLEET_NAME",
    "PACKAGED_NAME",
    "TrainSettings",
    "ensure_trained",
    "fingerprint",
    "load",
    "package_bundle",
    "packaged_dir",
    "resolve_offline",
]

log = logging.getLogger(__name__)
PACKAGED_NAME = "skab"
FLEET_NAME = "fleet"
INDEX_FILE = "trained.json"
SKAB_PROVENANCE = {
    "source": (
        "SKAB, the Skoltech Anomaly Benchmark (github.com/waico/SKAB, commit b2c0d46), "
        "development files anomaly-free.csv, valve1/0-15.csv, other/1-9.csv; rows labelled "
        "anomalous were excluded from training"
    ),
    "data_license": "GPL-3.0 (SKAB's licence; these weights were trained on that data)",
}


@dataclass(frozen=True)
class TrainSettings:
    """What the demo bundle is trained with; part of the reuse fingerprint."""

    name: str = "skab"
    epochs: int = 30
    window: int = 32
    hidden: int = 256
    latent: int = 16
    base: str = "interp"  # training.train.TrainConfig.base: entry head fills gaps
    seed: int = 0
    false_alarm_rate: float = 0.01


def packaged_dir(name: str = PACKAGED_NAME) -> Path | None:
    """The version directory of the bundle shipped in the package, if this install has it."""
    root = Path(str(resources.files("gapwatch.demo"))) / "model" / name
    try:
        return resolve_bundle_dir(root) if root.is_dir() else None
    except EdgeError:
        return None


def _trained_dir(state: Path) -> Path | None:
    index = state / "bundles" / INDEX_FILE
    try:
        path = Path(json.loads(index.read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if (path / "manifest.json").is_file() else None


def _reads(path: Path, channels: Sequence[str] | None) -> bool:
    """True when the bundle at ``path`` needs only channels the replay has."""
    if channels is None:
        return True
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        names = [str(c["name"]) for c in manifest["channels"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return set(names) <= set(channels)


def resolve_offline(
    given: str | None,
    state: Path,
    *,
    packaged: str = PACKAGED_NAME,
    channels: Sequence[str] | None = None,
) -> tuple[Path, str]:
    """``(version directory, where it came from)`` for the offline demo.

    ``channels``: the replay's; a trained bundle that needs others is passed over.
    """
    if given:
        try:
            return resolve_bundle_dir(given), "--bundle"
        except EdgeError as exc:
            raise BundleNotFound(f"--bundle {given}: {exc}") from exc
    trained = _trained_dir(state)
    if trained is not None and _reads(trained, channels):
        return trained, f"trained by `make demo` ({state / 'bundles'})"
    shipped = packaged_dir(packaged)
    if shipped is not None:
        return shipped, "shipped with the package"
    raise BundleNotFound(
        "no model bundle: pass --bundle DIR (a bundle trained with `gapwatch train`), or run "
        "`make demo` once to train the demo bundle"
    )


def load(path: Path) -> Bundle:
    """Load and verify a bundle, as a DemoError naming the problems."""
    try:
        return load_bundle(path)
    except EdgeError as exc:
        raise BundleNotFound(str(exc)) from exc


def fingerprint(files: Sequence[Path], settings: TrainSettings) -> str:
    """sha256 over the files' contents (in order) and the settings."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def ensure_trained(
    files: Sequence[Path],
    state: Path,
    settings: TrainSettings,
    *,
    progress: bool = True,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> tuple[Path, bool]:
    """``(bundle version dir, reused)``: the previous demo bundle if same inputs, else a new one.

    Needs the ``train`` extra (torch); imported here only.
    """
    root = state / "bundles"
    digest = fingerprint(files, settings)
    index = root / INDEX_FILE
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    previous = Path(str(known.get("path", "")))
    if known.get("fingerprint") == digest and (previous / "manifest.json").is_file():
        try:
            load_bundle(previous)
        except EdgeError as exc:
            log.warning("demo.bundle_unusable", extra={"path": str(previous), "error": str(exc)})
        else:
            return previous, True
    try:
        from training.errors import TrainingError
        from training.train import TrainConfig
        from training.train_bundle import BundleConfig, train_bundle
    except ModuleNotFoundError as exc:
        raise DemoError(
            f"training the demo bundle needs the train extra ({exc.name} is missing): "
            "pip install 'gapwatch[all]' (make venv), or pass --bundle DIR"
        ) from exc
    # torch configures its loggers when imported: quiet the exporter's notices after that
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    config = BundleConfig(
        train=TrainConfig(
            window=settings.window,
            hidden=settings.hidden,
            latent=settings.latent,
            base=settings.base,
            epochs=settings.epochs,
            seed=settings.seed,
        ),
        name=settings.name,
        version=f"{now().strftime('%Y%m%dT%H%M%SZ')}-{digest[:8]}",
        false_alarm_rate=settings.false_alarm_rate,
        progress=progress,
    )
    try:
        path = train_bundle(list(files), root, config)
    except (TrainingError, EdgeError) as exc:
        raise DemoError(f"training the demo bundle failed: {exc}") from exc
    root.mkdir(parents=True, exist_ok=True)
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": digest, "path": str(path)}) + "\n", "utf-8")
    tmp.replace(index)
    return path, False


def package_bundle(
    src: Path, dest_root: Path, provenance: Mapping[str, str] = SKAB_PROVENANCE
) -> Path:
    """Copy a trained bundle to ``dest_root/<name>/<version>/`` with ``provenance`` added to
    ``training`` (how ``gapwatch/demo/model/skab/`` was made; see README)."""
    bundle = load(src)
    manifest = replace(bundle.manifest, training={**bundle.manifest.training, **provenance})
    return write_bundle(dest_root, manifest, (bundle.path / MODEL_FILE).read_bytes())
