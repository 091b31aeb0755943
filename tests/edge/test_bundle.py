"""The bundle contract: write atomically, read strictly, report every problem in one error.

Bundles here hold a tiny hand-built ONNX graph (mean = x * mask, logvar = 0), so these tests
need no torch; tests/training/test_train_bundle.py covers bundles written by training.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import (
    FORMAT_VERSION,
    INPUT_NAMES,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_NAMES,
    Channel,
    Manifest,
    ThresholdSpec,
    current_version_dir,
    latest_version_dir,
    load_bundle,
    set_current_version,
    write_bundle,
)
from edge.errors import BundleError

onnx = pytest.importorskip("onnx")
helper = onnx.helper
TensorProto = onnx.TensorProto


def tiny_onnx(window: int, channels: int, *, names: tuple[str, str] = ("x", "mask")) -> bytes:
    """mean = x * mask, logvar = x - x; float32 [batch, window, channels]."""
    shape = ["batch", window, channels]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", [names[0], names[1]], ["mean"]),
            helper.make_node("Sub", [names[0], names[0]], ["logvar"]),
        ],
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in OUTPUT_NAMES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def manifest(version: str = "20261125T143000Z", window: int = 8) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name="pump",
        version=version,
        created_at="2026-11-25T14:30:00Z",
        channels=(Channel("flow", "l/min", 120.0, 2.0), Channel("temp", "C", 60.0, 1.5)),
        tick_seconds=1.0,
        window=window,
        max_gap_ticks=window,
        backfill_delay=2,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test",
        threshold=ThresholdSpec(4.0, 3.0, 0.1, 0.01),
        training={"seed": 0},
        evaluation={"heldout_nll_per_entry": 1.0},
        model_sha256="0" * 64,
        producer={"numpy": np.__version__},
        extra={"scoring": {"top_k": 2}},
    )


def test_round_trip_keeps_every_field_and_runs(tmp_path: Path) -> None:
    written = manifest()
    path = write_bundle(tmp_path, written, tiny_onnx(8, 2))
    assert path == tmp_path / "pump" / "20261125T143000Z"
    bundle = load_bundle(path)
    got = bundle.manifest
    assert got.model_sha256 != "0" * 64  # replaced by the digest of model.onnx
    assert replace(got, model_sha256=written.model_sha256) == written
    assert got.extra == {"scoring": {"top_k": 2}}
    x = np.ones((3, 8, 2), np.float32)
    mean, logvar = bundle.run(x, np.zeros_like(x))
    assert mean.shape == (3, 8, 2) and not mean.any() and not logvar.any()
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST_FILE, MODEL_FILE]


def test_versions_sort_by_time_and_current_pointer_wins(tmp_path: Path) -> None:
    for version in ("20261125T143000Z", "20261126T090000Z", "20261125T235959Z"):
        write_bundle(tmp_path, manifest(version), tiny_onnx(8, 2))
    model_dir = tmp_path / "pump"
    latest = latest_version_dir(model_dir)
    assert latest is not None and latest.name == "20261126T090000Z"
    set_current_version(model_dir, "20261125T143000Z")
    current = current_version_dir(model_dir)
    assert current is not None and current.name == "20261125T143000Z"


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    write_bundle(tmp_path, manifest(), tiny_onnx(8, 2))
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path, manifest(), tiny_onnx(8, 2))


def test_bad_sha256_is_rejected(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, manifest(), tiny_onnx(8, 2))
    (path / MODEL_FILE).write_bytes((path / MODEL_FILE).read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, manifest(), tiny_onnx(8, 2))
    data = json.loads((path / MANIFEST_FILE).read_text())
    del data["window"], data["threshold"]
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert err.value.problems == ["missing field 'threshold'", "missing field 'window'"]


def test_unknown_major_version_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, manifest(), tiny_onnx(8, 2))
    data = json.loads((path / MANIFEST_FILE).read_text())
    data["format_version"] = "2.0"
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="major 2"):
        load_bundle(path)


def test_onnx_shapes_that_disagree_with_the_manifest_leave_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as err:
        write_bundle(tmp_path, manifest(window=8), tiny_onnx(16, 2))
    assert any("shape" in p and "16" in p for p in err.value.problems)
    assert len([p for p in err.value.problems if "shape" in p]) == 4  # 2 inputs + 2 outputs
    assert list((tmp_path / "pump").iterdir()) == []


def test_wrong_onnx_input_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="input names"):
        write_bundle(tmp_path, manifest(), tiny_onnx(8, 2, names=("values", "mask")))


def test_every_manifest_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    bad = replace(
        manifest(),
        version="no spaces allowed",
        channels=(Channel("flow", "", 0.0, 0.0), Channel("flow", "", 0.0, 1.0)),
        backfill_delay=8,
        threshold=ThresholdSpec(1.0, 2.0, 0.1, 0.01),
    )
    with pytest.raises(BundleError) as err:
        write_bundle(tmp_path, bad, tiny_onnx(8, 2))
    text = "\n".join(err.value.problems)
    for needle in ("version", "scale > 0", "not unique", "backfill_delay", "off 2.0"):
        assert needle in text
    assert not (tmp_path / "pump").exists()
