"""Where a bundle is found, and which bytes run: CURRENT stays under the model directory, the
manifest matches its ``<name>/<version>/`` path, and the hashed bytes are the bytes loaded."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.bundle import CURRENT_FILE, MODEL_FILE, current_version_dir, load_bundle, located
from edge.errors import BundleError
from edge.reload import BundleWatcher, bundle_loader
from tests.edge.conftest import tiny_onnx

BundleFactory = Callable[..., Path]


def _point(model_dir: Path, text: str) -> None:
    (model_dir / CURRENT_FILE).write_text(text + "\n", encoding="utf-8")


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "nested", "missing", "empty"])
def test_current_must_name_a_version_directory_directly_under_the_model(
    tmp_path: Path, agent_bundle_factory: BundleFactory, kind: str
) -> None:
    agent_bundle_factory(version="1")
    outside = agent_bundle_factory(root=tmp_path / "elsewhere", version="9")
    model_dir = tmp_path / "bundles" / "tiny"
    text = {
        "absolute": str(outside),
        "dotdot": "../../elsewhere/tiny/9",
        "nested": "1/../9",
        "missing": "7",
        "empty": "",
    }[kind]
    _point(model_dir, text)
    with pytest.raises(BundleError) as err:
        current_version_dir(model_dir)
    assert err.value.path.endswith(CURRENT_FILE)
    problem = err.value.problems[0]
    assert {
        "absolute": "not a version directory name",
        "dotdot": "not a version directory name",
        "nested": "not a version directory name",
        "missing": "is missing",
        "empty": "not a version directory name",
    }[kind] in problem


def test_current_may_name_a_version_entry_that_is_a_link(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    """The demo and the agent benchmark link a bundle in as <run>/bundles/<name>/<version>."""
    linked = agent_bundle_factory(root=tmp_path / "elsewhere", version="9")
    model_dir = tmp_path / "bundles" / "tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "9").symlink_to(linked, target_is_directory=True)
    _point(model_dir, "9")
    assert current_version_dir(model_dir) == model_dir / "9"


def test_a_bad_current_is_refused_on_reload_once_and_the_model_keeps_running(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    agent_bundle_factory(version="1")
    outside = agent_bundle_factory(root=tmp_path / "elsewhere", version="9")
    watcher = BundleWatcher(tmp_path / "bundles", ["tiny"])
    assert watcher.load_initial()["tiny"].manifest.version == "1"
    _point(tmp_path / "bundles" / "tiny", str(outside))
    events = watcher.check()
    assert [(e.ok, e.path.name) for e in events] == [(False, CURRENT_FILE)]
    assert "not a version directory name" in events[0].problem
    assert watcher.check() == []  # the same pointer is not refused (nor logged) again
    assert watcher.current["tiny"].path.name == "1"


def test_a_manifest_that_names_another_version_or_model_is_refused(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    old = agent_bundle_factory(version="1")
    watcher = BundleWatcher(tmp_path / "bundles", ["tiny"])
    watcher.load_initial()
    shutil.copytree(old, old.parent / "2")  # an old bundle copied in as a newer version
    events = watcher.check()
    assert [(e.ok, e.path.name) for e in events] == [(False, "2")]
    assert "manifest version '1' does not match the path tiny/2" in events[0].problem
    other = agent_bundle_factory(name="other", version="5")
    with pytest.raises(BundleError) as err:
        load_bundle(other, expect=("tiny", "6"))
    assert err.value.problems == [
        "manifest name 'other' does not match the path tiny/6 (a bundle must sit in "
        "<name>/<version>/)",
        "manifest version '5' does not match the path tiny/6 (a bundle must sit in "
        "<name>/<version>/)",
    ]
    assert located(other) == ("other", "5")
    bundle_loader()(other)  # where it belongs, it loads


def test_the_bytes_that_were_hashed_are_the_bytes_onnxruntime_runs(
    tmp_path: Path, agent_bundle_factory: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model.onnx swapped between the hash and the load must not be run."""
    import onnxruntime as ort

    path = agent_bundle_factory(version="1", shift=0.0)
    real = ort.InferenceSession

    def swap_then_load(model: Any, *args: Any, **kwargs: Any) -> Any:
        (path / MODEL_FILE).write_bytes(tiny_onnx(4, 3, shift=5.0))  # the attacker's model
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", swap_then_load)
    bundle = load_bundle(path)
    x = np.zeros((1, 4, 3), np.float32)
    mean, _ = bundle.run(x, np.ones_like(x))
    assert not mean.any()  # shift 0: the verified model, not the swapped one
