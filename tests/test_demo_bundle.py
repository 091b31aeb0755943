"""Which bundle the demo uses: --bundle, the trained demo bundle, the shipped one; reuse."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import load_bundle
from gapwatch.demo.bundle import (
    TrainSettings,
    ensure_trained,
    fingerprint,
    package_bundle,
    packaged_dir,
    resolve_offline,
)
from gapwatch.demo.errors import BundleNotFound

SKAB_CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
TINY = TrainSettings(name="tiny", epochs=1, window=8, hidden=8, latent=2)


def write_csv(path: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t0 = datetime(2020, 3, 1, tzinfo=UTC)
    lines = ["timestamp,a,b"]
    for i in range(rows):
        stamp = (t0 + timedelta(seconds=i)).isoformat()
        lines.append(f"{stamp},{np.sin(i / 9):.4f},{rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_shipped_bundle_loads_and_says_where_it_came_from() -> None:
    path = packaged_dir()
    assert path is not None, "gapwatch/demo/model/skab/<version>/ is missing"
    bundle = load_bundle(path)
    m = bundle.manifest
    assert m.name == "skab" and m.channel_names == SKAB_CHANNELS
    assert "SKAB" in m.training["source"] and "GPL-3.0" in m.training["data_license"]
    assert (path / "model.onnx").stat().st_size < 200_000


def test_offline_bundle_order(tmp_path: Path) -> None:
    shipped = packaged_dir()
    assert shipped is not None
    state = tmp_path / "state"
    path, origin = resolve_offline(None, state)
    assert path == shipped and "shipped" in origin
    trained = package_bundle(shipped, tmp_path / "trained", {"source": "test"})
    (state / "bundles").mkdir(parents=True)
    (state / "bundles" / "trained.json").write_text(json.dumps({"path": str(trained)}))
    path, origin = resolve_offline(None, state)
    assert path == trained and "make demo" in origin
    path, origin = resolve_offline(str(shipped.parent), state)  # a model directory works too
    assert path == shipped and origin == "--bundle"
    with pytest.raises(BundleNotFound, match="--bundle"):
        resolve_offline(str(tmp_path / "nothing"), state)


def test_package_bundle_adds_provenance_and_keeps_the_model(tmp_path: Path) -> None:
    shipped = packaged_dir()
    assert shipped is not None
    out = package_bundle(shipped, tmp_path, {"source": "here", "data_license": "none"})
    m = load_bundle(out).manifest
    assert m.training["source"] == "here" and m.training["data_license"] == "none"
    assert (out / "model.onnx").read_bytes() == (shipped / "model.onnx").read_bytes()


def test_fingerprint_follows_file_contents_and_settings(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "a.csv", 20)
    first = fingerprint([f], TINY)
    assert fingerprint([f], TINY) == first
    assert fingerprint([f], replace(TINY, epochs=2)) != first
    write_csv(f, 20, seed=1)
    assert fingerprint([f], TINY) != first


@pytest.mark.slow
def test_trained_bundle_is_reused_until_inputs_change(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "dev.csv", 300)
    state = tmp_path / "state"
    path, reused = ensure_trained([f], state, TINY, progress=False)
    assert not reused and load_bundle(path).manifest.window == 8
    again, reused = ensure_trained([f], state, TINY, progress=False)
    assert reused and again == path
    assert resolve_offline(None, state)[0] == path
    other, reused = ensure_trained([f], state, replace(TINY, seed=1), progress=False)
    assert not reused and other != path
