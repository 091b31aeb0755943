"""``gapwatch registry keygen|sign|verify`` (pipeline.cli.signing) on real files in tmp_path."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import (
    FORMAT_VERSION,
    INPUT_NAMES,
    MODEL_FILE,
    OUTPUT_NAMES,
    Channel,
    Manifest,
    ThresholdSpec,
    write_bundle,
)
from edge.signing import SIGNATURE_FILE, load_public_keys, verify_bundle
from pipeline.cli.signing import main

onnx = pytest.importorskip("onnx")


def tiny_bundle(root: Path, version: str = "1") -> Path:
    helper = onnx.helper
    shape = ["batch", 4, 1]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "mask"], ["mean"]),
            helper.make_node("Sub", ["x", "x"], ["logvar"]),
        ],
        "tiny",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in INPUT_NAMES],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in OUTPUT_NAMES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name="pump",
        version=version,
        created_at="2026-11-25T14:30:00Z",
        channels=(Channel("flow", "l/min", 0.0, 1.0),),
        tick_seconds=1.0,
        window=4,
        max_gap_ticks=4,
        backfill_delay=1,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test",
        threshold=ThresholdSpec(4.0, 3.0, 0.1, 0.01),
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer={"numpy": np.__version__},
    )
    return write_bundle(root, manifest, bytes(model.SerializeToString()))


def test_keygen_sign_verify_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "keys" / "signing"
    assert main(["keygen", "--out", str(base)]) == 0
    key, pub = base.with_suffix(".key"), base.with_suffix(".pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
    assert b"PUBLIC KEY" in pub.read_bytes()
    out = capsys.readouterr().out
    assert "key id" in out

    bundle = tiny_bundle(tmp_path / "models")
    monkeypatch.setenv("GAPWATCH_SIGNING_KEY", str(key))
    assert main(["sign", str(bundle)]) == 0
    assert (bundle / SIGNATURE_FILE).is_file()
    verify_bundle(bundle, load_public_keys(pub))
    assert main(["verify", "--public-key", str(pub), str(bundle)]) == 0
    assert "ok" in capsys.readouterr().out

    (bundle / MODEL_FILE).write_bytes((bundle / MODEL_FILE).read_bytes() + b"\0")
    assert main(["verify", "--public-key", str(pub), str(bundle)]) == 1
    assert "modified after signing" in capsys.readouterr().out


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "k"
    assert main(["keygen", "--out", str(base)]) == 0
    first = base.with_suffix(".key").read_bytes()
    assert main(["keygen", "--out", str(base)]) == 2
    assert "--force" in capsys.readouterr().err
    assert base.with_suffix(".key").read_bytes() == first
    assert main(["keygen", "--out", str(base), "--force"]) == 0
    assert base.with_suffix(".key").read_bytes() != first


def test_encrypted_key_needs_its_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pass"
    secret.write_text("correct horse battery\n")
    base = tmp_path / "k"
    assert main(["keygen", "--out", str(base), "--passphrase-file", str(secret)]) == 0
    assert b"ENCRYPTED" in base.with_suffix(".key").read_bytes()
    bundle = tiny_bundle(tmp_path / "models")
    key = str(base.with_suffix(".key"))
    assert main(["sign", str(bundle), "--key", key]) == 2
    err = capsys.readouterr().err
    assert "GAPWATCH_SIGNING_PASSPHRASE" in err
    assert "correct horse" not in err
    monkeypatch.setenv("GAPWATCH_SIGNING_PASSPHRASE", "correct horse battery")
    assert main(["sign", str(bundle), "--key", key]) == 0
    assert json.loads((bundle / SIGNATURE_FILE).read_text())["algorithm"] == "ed25519"


def test_sign_without_a_key_says_how_to_give_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GAPWATCH_SIGNING_KEY", raising=False)
    assert main(["sign", str(tiny_bundle(tmp_path))]) == 2
    assert "GAPWATCH_SIGNING_KEY" in capsys.readouterr().err


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "keygen" in out and "examples:" in out and "trusted_keys" in out


def test_registry_cli_hands_signing_actions_over(tmp_path: Path) -> None:
    from pipeline.cli import registry as registry_cli

    base = tmp_path / "k"
    assert registry_cli.main(["keygen", "--out", str(base)]) == 0
    bundle = tiny_bundle(tmp_path / "models")
    assert registry_cli.main(["sign", str(bundle), "--key", str(base.with_suffix(".key"))]) == 0
    pub = str(base.with_suffix(".pub"))
    assert registry_cli.main(["verify", str(bundle), "--public-key", pub]) == 0
