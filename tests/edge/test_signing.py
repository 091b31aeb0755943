"""Bundle signatures (edge.signing): signed bundles load; unsigned, tampered or foreign ones fail.

Bundles hold a tiny hand-built ONNX graph (mean = x * mask, logvar = x - x), so no torch.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.bundle import (
    FORMAT_VERSION,
    INPUT_NAMES,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_NAMES,
    Channel,
    Manifest,
    ThresholdSpec,
    write_bundle,
)
from edge.errors import BundleError
from edge.reload import BundleWatcher
from edge.signing import (
    SIGNATURE_FILE,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_keys,
    load_signed_bundle,
    parse_public_keys,
    private_key_pem,
    public_key_pem,
    sign_bundle,
    verify_bundle,
)

onnx = pytest.importorskip("onnx")
helper = onnx.helper


def tiny_onnx(window: int, channels: int, opset: int = 18) -> bytes:
    shape = ["batch", window, channels]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "mask"], ["mean"]),
            helper.make_node("Sub", ["x", "x"], ["logvar"]),
        ],
        "tiny",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in INPUT_NAMES],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in OUTPUT_NAMES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def manifest(version: str, window: int = 4) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name="pump",
        version=version,
        created_at="2026-11-25T14:30:00Z",
        channels=(Channel("flow", "l/min", 120.0, 2.0), Channel("temp", "C", 60.0, 1.5)),
        tick_seconds=1.0,
        window=window,
        max_gap_ticks=window,
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


def make_bundle(root: Path, version: str = "1") -> Path:
    return write_bundle(root, manifest(version), tiny_onnx(4, 2))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_private_key()


def test_signed_bundle_verifies_and_loads(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle_dir = make_bundle(tmp_path)
    sig = sign_bundle(bundle_dir, key)
    assert sig == bundle_dir / SIGNATURE_FILE
    doc = json.loads(sig.read_text())
    assert doc["key_id"] == key_id(key)
    assert sorted(doc["files"]) == [MANIFEST_FILE, MODEL_FILE]

    info = verify_bundle(bundle_dir, [key.public_key()])
    assert info.key_id == key_id(key)
    bundle = load_signed_bundle(bundle_dir, [key.public_key()])
    assert bundle.manifest.version == "1"
    mean, _ = bundle.run(np.ones((1, 4, 2), np.float32), np.ones((1, 4, 2), np.float32))
    assert mean.shape == (1, 4, 2)
    assert not list(bundle_dir.glob(".signature.json.*")), "temporary file left behind"


def test_unsigned_bundle_is_refused_with_the_fix(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle_dir = make_bundle(tmp_path)
    with pytest.raises(BundleError) as err:
        load_signed_bundle(bundle_dir, [key.public_key()])
    assert "unsigned" in str(err.value)
    assert "gapwatch registry sign" in str(err.value)


@pytest.mark.parametrize("target", [MODEL_FILE, MANIFEST_FILE])
def test_tampered_file_is_refused_and_named(
    tmp_path: Path, key: Ed25519PrivateKey, target: str
) -> None:
    bundle_dir = make_bundle(tmp_path)
    sign_bundle(bundle_dir, key)
    path = bundle_dir / target
    if target == MANIFEST_FILE:
        data = json.loads(path.read_text())
        data["threshold"]["on"] = 1e9  # silence every alarm: the attack signatures stop
        path.write_text(json.dumps(data))
    else:
        path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle_dir, [key.public_key()])
    assert f"{target} was modified after signing" in str(err.value)


def test_model_swapped_with_matching_manifest_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """Replacing both files consistently (sha256 in the manifest updated) still fails."""
    signed = make_bundle(tmp_path / "a")
    sign_bundle(signed, key)
    other = write_bundle(tmp_path / "b", manifest("1"), tiny_onnx(4, 2, opset=17))
    for name in (MODEL_FILE, MANIFEST_FILE):
        (signed / name).write_bytes((other / name).read_bytes())
    with pytest.raises(BundleError, match="modified after signing"):
        load_signed_bundle(signed, [key.public_key()])


def test_signature_by_an_untrusted_key_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle_dir = make_bundle(tmp_path)
    sign_bundle(bundle_dir, generate_private_key())
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle_dir, [key.public_key()])
    assert "not made by a trusted key" in str(err.value)
    assert key_id(key) in str(err.value)


def test_edited_signature_file_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle_dir = make_bundle(tmp_path)
    sig = sign_bundle(bundle_dir, key)
    doc = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="not made by a trusted key"):
        verify_bundle(bundle_dir, [key.public_key()])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format": "v0"}, "signature format"),
        ({"algorithm": "rsa"}, "algorithm"),
        ({"files": {MODEL_FILE: "0" * 64}}, "exactly"),
        ({"signature": "***"}, "not base64"),
        ({"signature": None}, "signature value missing"),
    ],
)
def test_malformed_signature_names_the_problem(
    tmp_path: Path, key: Ed25519PrivateKey, edit: dict[str, object], message: str
) -> None:
    bundle_dir = make_bundle(tmp_path)
    sig = sign_bundle(bundle_dir, key)
    doc = json.loads(sig.read_text())
    doc.update(edit)
    sig.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle_dir, [key.public_key()])


def test_signature_not_json_is_a_bundle_error(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle_dir = make_bundle(tmp_path)
    (bundle_dir / SIGNATURE_FILE).write_bytes(b"\xff\xfe not json")
    with pytest.raises(BundleError, match="not JSON"):
        verify_bundle(bundle_dir, [key.public_key()])


def test_key_rotation_file_with_two_keys(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    old, new = key, generate_private_key()
    pub = tmp_path / "trusted.pub"
    pub.write_bytes(public_key_pem(old) + b"\n" + public_key_pem(new))
    trusted = load_public_keys(pub)
    assert [key_id(k) for k in trusted] == [key_id(old), key_id(new)]
    a = make_bundle(tmp_path / "r", "1")
    b = make_bundle(tmp_path / "r", "2")
    sign_bundle(a, old)
    sign_bundle(b, new)
    assert verify_bundle(a, trusted).key_id == key_id(old)
    assert verify_bundle(b, trusted).key_id == key_id(new)


def test_private_key_round_trip_with_and_without_passphrase(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    plain = tmp_path / "plain.key"
    plain.write_bytes(private_key_pem(key))
    assert key_id(load_private_key(plain)) == key_id(key)
    locked = tmp_path / "locked.key"
    locked.write_bytes(private_key_pem(key, b"s3cret-passphrase"))
    assert b"s3cret" not in locked.read_bytes()
    assert key_id(load_private_key(locked, b"s3cret-passphrase")) == key_id(key)
    with pytest.raises(BundleError, match="passphrase"):
        load_private_key(locked)
    with pytest.raises(BundleError, match="wrong passphrase"):
        load_private_key(locked, b"nope")


def test_bad_key_files_are_bundle_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pub"
    with pytest.raises(BundleError, match="cannot read public key"):
        load_public_keys(missing)
    with pytest.raises(BundleError, match="BEGIN PUBLIC KEY"):
        parse_public_keys(b"hello")
    garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(BundleError, match="not a valid public key"):
        parse_public_keys(garbage)
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(BundleError, match="keygen"):
        load_private_key(bad)


def test_sign_refuses_a_broken_bundle(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    (tmp_path / MANIFEST_FILE).write_text("{}")
    with pytest.raises(BundleError, match="missing field"):
        sign_bundle(tmp_path, key)
    assert not (tmp_path / SIGNATURE_FILE).exists()


def test_watcher_with_signed_loader_keeps_current_model_on_tampered_update(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """Through the agent's reload path: a tampered new version is refused, the old one stays."""
    trusted = [key.public_key()]
    v1 = make_bundle(tmp_path, "1")
    sign_bundle(v1, key)
    watcher = BundleWatcher(tmp_path, ["pump"], loader=lambda p: load_signed_bundle(p, trusted))
    assert watcher.load_initial()["pump"].manifest.version == "1"

    v2 = make_bundle(tmp_path, "2")  # unsigned
    events = watcher.check()
    assert [e.ok for e in events] == [False]
    assert "unsigned" in events[0].problem
    assert watcher.current["pump"].manifest.version == "1"

    v3 = make_bundle(tmp_path, "3")
    sign_bundle(v3, key)
    (v3 / MODEL_FILE).write_bytes((v3 / MODEL_FILE).read_bytes() + b"\0")
    events = watcher.check()
    assert [e.ok for e in events] == [False]
    assert "modified after signing" in events[0].problem
    assert watcher.current["pump"].manifest.version == "1"

    v4 = make_bundle(tmp_path, "4")
    sign_bundle(v4, key)
    events = watcher.check()
    assert [e.ok for e in events] == [True]
    assert watcher.current["pump"].manifest.version == "4"
    assert v2.exists()
