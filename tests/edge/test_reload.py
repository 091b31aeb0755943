"""Model hot reload: verified swap, refusal of bad bundles, CURRENT pointer, announcements."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.bundle import MODEL_FILE, set_current_version
from edge.errors import BundleError
from edge.reload import BundleWatcher, topic_matches

BundleFactory = Callable[..., Path]
AgentFactory = Callable[..., Any]
T0 = 1_700_000_000_000
FULL = {"a": 11.0, "b": 12.0, "c": 13.0}


def corrupt(version_dir: Path) -> None:
    model = version_dir / MODEL_FILE
    model.write_bytes(model.read_bytes() + b"tampered")


def test_initial_load_names_every_missing_or_bad_model(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    bad = agent_bundle_factory(name="bad")
    corrupt(bad)
    watcher = BundleWatcher(tmp_path / "bundles", ["bad", "absent"])
    with pytest.raises(BundleError) as err:
        watcher.load_initial()
    text = str(err.value)
    assert "sha256 of model.onnx" in text
    assert "absent: no bundle version found" in text


def test_a_new_version_is_loaded_and_a_corrupt_one_refused_once(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    agent_bundle_factory(version="1")
    watcher = BundleWatcher(tmp_path / "bundles", ["tiny"])
    assert watcher.load_initial()["tiny"].manifest.version == "1"
    assert watcher.check() == []
    agent_bundle_factory(version="2")
    events = watcher.check()
    assert [(e.ok, e.bundle.manifest.version) for e in events if e.bundle] == [(True, "2")]
    corrupt(agent_bundle_factory(version="3"))
    refused = watcher.check()
    assert [(e.ok, e.path.name) for e in refused] == [(False, "3")]
    assert "sha256" in refused[0].problem
    assert watcher.check() == []  # the same bad files are not retried (nor logged) again
    assert watcher.current["tiny"].manifest.version == "2"


def test_the_current_pointer_wins_over_the_newest(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    agent_bundle_factory(version="1")
    agent_bundle_factory(version="2")
    watcher = BundleWatcher(tmp_path / "bundles", ["tiny"])
    assert watcher.load_initial()["tiny"].manifest.version == "2"
    set_current_version(tmp_path / "bundles" / "tiny", "1")  # a rollback by the registry
    assert [e.bundle.manifest.version for e in watcher.check() if e.bundle] == ["1"]


def test_mqtt_filter_matching() -> None:
    assert topic_matches("gapwatch/models/+", "gapwatch/models/skab")
    assert topic_matches("gapwatch/#", "gapwatch/models/skab")
    assert not topic_matches("gapwatch/models/+", "gapwatch/models/skab/x")
    assert not topic_matches("gapwatch/models/+", "sensors/lab/d")


def test_the_agent_swaps_models_while_streaming_and_keeps_the_old_on_a_bad_one(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory(version="1", shift=0.0)
    h = agent_harness(tmp_path, tmp_path / "bundles", "bundles.poll_s=1.0")

    def tick(k: int) -> None:
        h.publish("pump-1", k, {"a": 11.0, "c": 13.0})  # 'b' always imputed: shows the model
        h.pump(1)

    for k in range(3):
        tick(k)
    agent_bundle_factory(version="2", shift=1.0)  # imputes centre + 1 * scale = 12.0
    h.clock.advance(1500)
    for k in range(3, 6):
        tick(k)
    corrupt(agent_bundle_factory(version="3", shift=2.0))
    h.clock.advance(1500)
    for k in range(6, 9):
        tick(k)
    h.agent.shutdown()
    h.deliver()
    causal = {(t.ts_ms - T0) // 1000: t for t in h.scored() if t.revision == 0}
    versions = [causal[k].model_version for k in range(9)]
    assert versions[0] == "1" and versions[-1] == "2"
    assert "3" not in versions
    for k in range(9):
        expected_b = 10.0 if causal[k].model_version == "1" else 12.0
        assert causal[k].values["b"] == pytest.approx(expected_b), k
    assert h.metric("gapwatch_agent_model_reloads_total", result="accepted") == 1
    assert h.metric("gapwatch_agent_model_reloads_total", result="refused") == 1
    assert h.metric("gapwatch_agent_model_info", model="tiny", version="2") == 1
    assert h.metric("gapwatch_agent_model_info", model="tiny", version="1") == 0


def test_an_announcement_triggers_an_immediate_check(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory(version="1")
    h = agent_harness(
        tmp_path, tmp_path / "bundles", "bundles.poll_s=3600.0", 'mqtt.announce_topic="models/+"'
    )
    h.publish("pump-1", 0, FULL)
    h.pump(1)
    agent_bundle_factory(version="2", shift=1.0)
    h.raw("models/tiny", json.dumps({"name": "tiny", "version": "2"}))
    h.publish("pump-1", 1, FULL)
    h.pump(2)
    assert h.agent.health()[1]["models"] == {"tiny": "2"}
    assert h.dead() == []  # the announcement is not a sensor message


def test_a_model_with_other_channels_restarts_the_device_grid(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory(version="1")
    h = agent_harness(tmp_path, tmp_path / "bundles", "bundles.poll_s=1.0")
    for k in range(3):
        h.publish("pump-1", k, FULL)
    h.pump()
    agent_bundle_factory(version="2", channels=("a", "b"))
    h.clock.advance(1500)
    h.pump(1)
    for k in range(3, 6):
        h.publish("pump-1", k, {"a": 1.0, "b": 2.0})
    h.pump()
    h.agent.shutdown()
    h.deliver()
    causal = {(t.ts_ms - T0) // 1000: t for t in h.scored() if t.revision == 0}
    assert sorted(causal) == list(range(6))
    assert set(causal[5].values) == {"a", "b"} and causal[5].model_version == "2"
    assert set(causal[0].values) == {"a", "b", "c"}


def test_with_trusted_keys_only_signed_bundles_load(
    tmp_path: Path, agent_bundle_factory: BundleFactory
) -> None:
    from edge.reload import bundle_loader
    from edge.signing import generate_private_key, public_key_pem, sign_bundle

    ours, theirs = generate_private_key(), generate_private_key()
    keys = tmp_path / "trusted.pem"
    keys.write_bytes(public_key_pem(ours))
    sign_bundle(agent_bundle_factory(version="1"), ours)
    watcher = BundleWatcher(tmp_path / "bundles", ["tiny"], loader=bundle_loader(str(keys)))
    assert watcher.load_initial()["tiny"].manifest.version == "1"
    agent_bundle_factory(version="2")  # unsigned
    refused = watcher.check()
    assert [(e.ok, e.path.name) for e in refused] == [(False, "2")]
    sign_bundle(tmp_path / "bundles" / "tiny" / "2", theirs)  # signed, by an untrusted key
    assert [(e.ok, e.path.name) for e in watcher.check()] == [(False, "2")]
    sign_bundle(tmp_path / "bundles" / "tiny" / "2", ours)
    assert [(e.ok, e.path.name) for e in watcher.check()] == [(True, "2")]
    with pytest.raises(BundleError, match="cannot read public key"):
        bundle_loader(str(tmp_path / "missing.pem"))
