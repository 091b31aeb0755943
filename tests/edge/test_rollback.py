"""Start-up fallback to the newest usable version, and rollback protection for signed agents."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.bundle import MODEL_FILE, read_manifest, set_current_version
from edge.errors import BundleError
from edge.pointer import POINTER_FILE, Pointer, read_pointer, write_pointer
from edge.reload import BundleWatcher, bundle_loader, rollback_guard
from edge.signing import generate_private_key, public_key_pem, sign_bundle

BundleFactory = Callable[..., Path]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_private_key()


def _pub(tmp_path: Path, key: Ed25519PrivateKey) -> str:
    path = tmp_path / "trusted.pub"
    path.write_bytes(public_key_pem(key))
    return str(path)


def _signed_watcher(tmp_path: Path, key: Ed25519PrivateKey, state: bool = False) -> BundleWatcher:
    pub = _pub(tmp_path, key)
    return BundleWatcher(
        tmp_path / "bundles",
        ["tiny"],
        loader=bundle_loader(pub),
        guard=rollback_guard(pub, tmp_path / "state" / "bundles.json" if state else None),
    )


def _pointer(model_dir: Path, version: str, epoch: int, key: Ed25519PrivateKey) -> None:
    sha = read_manifest(model_dir / version).model_sha256
    write_pointer(model_dir, Pointer("tiny", version, sha, epoch, "rollback"), key)


def test_start_up_falls_back_to_the_newest_verified_version_and_says_why(
    tmp_path: Path,
    agent_bundle_factory: BundleFactory,
    key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sign_bundle(agent_bundle_factory(version="1"), key)
    sign_bundle(agent_bundle_factory(version="2"), key)
    unsigned = agent_bundle_factory(version="3")  # e.g. published by an unsigned retrain
    set_current_version(unsigned.parent, "3")
    watcher = _signed_watcher(tmp_path, key)
    with caplog.at_level(logging.ERROR, logger="edge.reload"):
        assert watcher.load_initial()["tiny"].manifest.version == "2"
    [record] = [r for r in caplog.records if r.getMessage() == "bundle.fallback"]
    assert (record.wanted, record.using) == ("3", "2")  # type: ignore[attr-defined]
    assert "unsigned" in record.problem  # type: ignore[attr-defined]
    assert "unsigned" in watcher.fallbacks["tiny"]
    assert watcher.check() == []  # the refused version is not retried until it changes
    sign_bundle(unsigned, key)
    assert [(e.ok, e.path.name) for e in watcher.check()] == [(True, "3")]
    assert watcher.fallbacks == {}


def test_start_up_stops_only_when_no_version_is_usable(
    tmp_path: Path, agent_bundle_factory: BundleFactory, key: Ed25519PrivateKey
) -> None:
    agent_bundle_factory(version="1")
    bad = agent_bundle_factory(version="2")
    (bad / MODEL_FILE).write_bytes(b"swapped")
    with pytest.raises(BundleError) as err:
        _signed_watcher(tmp_path, key).load_initial()
    text = str(err.value)
    assert "tiny/2" in text and "tiny/1" in text and "unsigned" in text  # every refusal listed


def test_a_signed_agent_refuses_an_older_version_nobody_signed_a_rollback_to(
    tmp_path: Path, agent_bundle_factory: BundleFactory, key: Ed25519PrivateKey
) -> None:
    sign_bundle(agent_bundle_factory(version="1"), key)
    model_dir = sign_bundle(agent_bundle_factory(version="2"), key).parent.parent
    watcher = _signed_watcher(tmp_path, key)
    assert watcher.load_initial()["tiny"].manifest.version == "2"
    set_current_version(model_dir, "1")  # CURRENT edited by hand (or by an attacker)
    [event] = watcher.check()
    assert not event.ok and "older than '2'" in event.problem and POINTER_FILE in event.problem
    assert watcher.current["tiny"].manifest.version == "2"
    _pointer(model_dir, "1", 5, key)  # what 'gapwatch registry rollback' signs
    assert [(e.ok, e.path.name) for e in watcher.check()] == [(True, "1")]


def test_a_replayed_forged_or_mismatched_pointer_does_not_allow_a_rollback(
    tmp_path: Path, agent_bundle_factory: BundleFactory, key: Ed25519PrivateKey
) -> None:
    for v in ("1", "2", "3"):
        sign_bundle(agent_bundle_factory(version=v), key)
    model_dir = tmp_path / "bundles" / "tiny"
    _pointer(model_dir, "2", 4, key)
    old_rollback = (model_dir / POINTER_FILE).read_bytes()  # a rollback to 2 at epoch 4
    set_current_version(model_dir, "3")
    _pointer(model_dir, "3", 6, key)  # later promoted 3 at epoch 6
    watcher = _signed_watcher(tmp_path, key)
    assert watcher.load_initial()["tiny"].manifest.version == "3"
    set_current_version(model_dir, "2")
    (model_dir / POINTER_FILE).write_bytes(old_rollback)
    [replayed] = watcher.check()
    assert "epoch 4, not above 6" in replayed.problem
    _pointer(model_dir, "2", 7, generate_private_key())  # signed by someone else
    [forged] = watcher.check()
    assert "not made by a trusted key" in forged.problem
    _pointer(model_dir, "1", 8, key)  # a genuine pointer, but to another version
    [mismatch] = watcher.check()
    assert "names tiny/1" in mismatch.problem
    assert watcher.current["tiny"].manifest.version == "3"


def test_the_floor_survives_a_restart_in_the_state_file(
    tmp_path: Path, agent_bundle_factory: BundleFactory, key: Ed25519PrivateKey
) -> None:
    sign_bundle(agent_bundle_factory(version="1"), key)
    model_dir = sign_bundle(agent_bundle_factory(version="2"), key).parent.parent
    assert _signed_watcher(tmp_path, key, state=True).load_initial()["tiny"].path.name == "2"
    state = json.loads((tmp_path / "state" / "bundles.json").read_text())
    assert state["models"] == {"tiny": {"version": "2", "epoch": 0}}
    set_current_version(model_dir, "1")  # edited while the agent was down
    restarted = _signed_watcher(tmp_path, key, state=True)
    assert restarted.load_initial()["tiny"].path.name == "2"  # falls back, never rolls back
    assert "older than '2'" in restarted.fallbacks["tiny"]
    _pointer(model_dir, "1", 3, key)
    assert _signed_watcher(tmp_path, key, state=True).load_initial()["tiny"].path.name == "1"


def test_an_unsigned_agent_still_follows_current_back(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    agent_bundle_factory(version="1")
    model_dir = agent_bundle_factory(version="2").parent
    watcher = BundleWatcher(tmp_path / "bundles", ["tiny"], guard=rollback_guard(""))
    watcher.load_initial()
    set_current_version(model_dir, "1")
    assert [(e.ok, e.path.name) for e in watcher.check()] == [(True, "1")]


def test_a_pointer_is_refused_when_malformed_and_read_back_when_signed(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    pointer = Pointer("tiny", "1", "a" * 64, 2, "promote")
    write_pointer(tmp_path, pointer, key)
    assert read_pointer(tmp_path, [key.public_key()]) == pointer
    doc = json.loads((tmp_path / POINTER_FILE).read_text())
    doc["pointer"]["epoch"] = "3"
    doc["pointer"]["action"] = "sideways"
    (tmp_path / POINTER_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError) as err:
        read_pointer(tmp_path, [key.public_key()])
    assert len(err.value.problems) == 2  # every problem in one error
    assert read_pointer(tmp_path / "nowhere", [key.public_key()]) is None
