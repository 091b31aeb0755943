"""Promotion signs (bundle and CURRENT pointer), or refuses where agents verify signatures."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.bundle import read_manifest
from edge.pointer import POINTER_FILE, Pointer, read_pointer
from edge.reload import BundleWatcher, bundle_loader, rollback_guard
from edge.signing import (
    SIGNATURE_FILE,
    generate_private_key,
    private_key_pem,
    public_key_pem,
    sign_bundle,
    verify_bundle,
)
from pipeline.cli import registry as registry_cli
from pipeline.errors import PipelineError, RegistryError
from pipeline.fakes import FakeInflux
from pipeline.registry import Registry
from pipeline.retrain import RetrainSettings, retrain

PipelineBundleFactory = Callable[..., Path]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_private_key()


def _keys(tmp_path: Path, key: Ed25519PrivateKey) -> tuple[Path, Path]:
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    private.write_bytes(private_key_pem(key))
    public.write_bytes(public_key_pem(key))
    return private, public


def test_promote_and_rollback_sign_the_version_and_the_pointer(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory, key: Ed25519PrivateKey
) -> None:
    reg = Registry(tmp_path / "models", "pump", signing_key=key)
    for v in ("1", "2"):
        reg.publish(pipeline_bundle_factory("pump", v))
    reg.promote("1")
    reg.promote("2")
    trusted = [key.public_key()]
    for v in ("1", "2"):
        verify_bundle(reg.dir / v, trusted)
    pointer = read_pointer(reg.dir, trusted)
    assert pointer is not None and (pointer.version, pointer.epoch, pointer.action) == (
        "2",
        2,
        "promote",
    )
    reg.rollback("bad model")
    sha1 = read_manifest(reg.dir / "1").model_sha256
    assert read_pointer(reg.dir, trusted) == Pointer("pump", "1", sha1, 3, "rollback")


def test_a_signed_agent_follows_a_signed_rollback_and_refuses_a_hand_edited_one(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory, key: Ed25519PrivateKey
) -> None:
    _, public = _keys(tmp_path, key)
    reg = Registry(tmp_path / "models", "pump", signing_key=key)
    for v in ("1", "2"):
        reg.publish(pipeline_bundle_factory("pump", v))
        reg.promote(v)
    watcher = BundleWatcher(
        reg.root, ["pump"], loader=bundle_loader(str(public)), guard=rollback_guard(str(public))
    )
    assert watcher.load_initial()["pump"].manifest.version == "2"
    (reg.dir / "CURRENT").write_text("1\n")  # by hand: no pointer to 1
    assert [e.ok for e in watcher.check()] == [False]
    (reg.dir / "CURRENT").write_text("2\n")
    watcher.check()
    reg.rollback("signed")
    assert [(e.ok, e.path.name) for e in watcher.check()] == [(True, "1")]


def test_a_signed_registry_refuses_to_promote_or_roll_back_without_the_key(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory, key: Ed25519PrivateKey
) -> None:
    signed = Registry(tmp_path / "models", "pump", signing_key=key)
    for v in ("1", "2", "3"):
        signed.publish(pipeline_bundle_factory("pump", v))
    signed.promote("1")
    signed.promote("2")
    unsigned = Registry(tmp_path / "models", "pump")
    assert unsigned.signed()  # the pointer and the current version are signed
    with pytest.raises(RegistryError, match="refusing to promote pump/3 unsigned"):
        unsigned.promote("3")
    with pytest.raises(RegistryError, match="refusing to rollback pump/1 unsigned"):
        unsigned.rollback()
    assert unsigned.current() == "2" and not (unsigned.dir / "3" / SIGNATURE_FILE).exists()
    fresh = Registry(tmp_path / "fresh", "pump", require_signed=True)  # trusted keys configured
    fresh.publish(signed.dir / "3")
    with pytest.raises(RegistryError, match="verify signatures"):
        fresh.promote("3")
    assert fresh.current() is None


def test_cli_promote_signs_with_the_env_key_and_refuses_a_key_agents_do_not_trust(
    tmp_path: Path,
    pipeline_bundle_factory: PipelineBundleFactory,
    key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    private, public = _keys(tmp_path, key)
    root = tmp_path / "models"
    Registry(root, "pump").publish(pipeline_bundle_factory("pump", "1"))
    Registry(root, "pump").publish(pipeline_bundle_factory("pump", "2"))
    base = ["--root", str(root)]
    monkeypatch.setenv("GAPWATCH_BUNDLE_PUBLIC_KEY", str(public))
    monkeypatch.delenv("GAPWATCH_SIGNING_KEY", raising=False)
    assert registry_cli.main([*base, "promote", "1"]) == 1
    assert "verify signatures" in capsys.readouterr().err
    other = tmp_path / "other.key"
    other.write_bytes(private_key_pem(generate_private_key()))
    assert registry_cli.main([*base, "promote", "1", "--signing-key", str(other)]) == 1
    assert "not among the trusted keys" in capsys.readouterr().err
    monkeypatch.setenv("GAPWATCH_SIGNING_KEY", str(private))
    assert registry_cli.main([*base, "promote", "1"]) == 0
    assert "signed pump/1" in capsys.readouterr().out
    verify_bundle(root / "pump" / "1", [key.public_key()])
    assert (root / "pump" / POINTER_FILE).is_file()


def test_retrain_into_a_signed_registry_without_a_key_is_refused_before_training(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory, key: Ed25519PrivateKey
) -> None:
    reg = Registry(tmp_path / "models", "m")
    champion = reg.publish(pipeline_bundle_factory("m", "0"))
    sign_bundle(champion, key)  # signed by hand with 'gapwatch registry sign'
    reg.promote("0")
    settings = RetrainSettings("m", 0, 400_000, 300_000, chunk_ms=60_000)
    with pytest.raises(PipelineError, match="refusing to retrain and promote m unsigned"):
        retrain(FakeInflux(), reg, settings, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    assert sorted(p.name for p in reg.dir.iterdir() if not p.name.startswith(".")) == [
        "0",
        "CURRENT",
        "registry.json",
    ]
