"""The model registry: publish, promote, roll back, the log, announcements, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.bundle import current_version_dir
from pipeline.cli import registry as registry_cli
from pipeline.errors import RegistryError
from pipeline.registry import Announcement, Registry, announcer_from_url

PipelineBundleFactory = Callable[..., Path]


def fixed_clock() -> datetime:
    return datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def registry_with(tmp_path: Path, make: PipelineBundleFactory, versions: list[str]) -> Registry:
    reg = Registry(tmp_path / "models", "pump", clock=fixed_clock)
    for v in versions:
        reg.publish(make("pump", v))
    return reg


def test_publish_copies_a_verified_bundle_without_promoting(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory
) -> None:
    reg = registry_with(tmp_path, pipeline_bundle_factory, ["1"])
    assert (reg.dir / "1" / "model.onnx").is_file()
    assert reg.current() is None
    assert [(v.version, v.current, v.promoted) for v in reg.versions()] == [("1", False, False)]
    with pytest.raises(RegistryError, match="immutable"):
        reg.publish(pipeline_bundle_factory("pump", "1", root=tmp_path / "again"))
    with pytest.raises(RegistryError, match="holds model 'other'"):
        reg.publish(pipeline_bundle_factory("other", "2"))


def test_a_corrupt_bundle_is_refused(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory
) -> None:
    bad = pipeline_bundle_factory("pump", "9")
    (bad / "model.onnx").write_bytes(b"not onnx")
    reg = Registry(tmp_path / "models", "pump")
    with pytest.raises(RegistryError, match="sha256"):
        reg.publish(bad)
    assert not (reg.dir / "9").exists()


def test_promote_points_current_and_logs_atomically(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory
) -> None:
    reg = registry_with(tmp_path, pipeline_bundle_factory, ["1", "2"])
    event = reg.promote("1", "first", {"mae": 0.5})
    assert (event.action, event.version, event.previous, event.at) == (
        "promote",
        "1",
        None,
        "2026-11-25T12:00:00Z",
    )
    assert current_version_dir(reg.dir) == reg.dir / "1"  # what agents follow
    reg.promote("2", "better")
    assert reg.current() == "2"
    log = json.loads((reg.dir / "registry.json").read_text())
    assert [(e["action"], e["version"], e["previous"]) for e in log["events"]] == [
        ("promote", "1", None),
        ("promote", "2", "1"),
    ]
    assert log["events"][0]["evaluation"] == {"mae": 0.5}
    assert not [p for p in reg.dir.iterdir() if p.name.startswith(".registry.json")]
    with pytest.raises(RegistryError, match="already current"):
        reg.promote("2")
    with pytest.raises(RegistryError, match="no version '7'"):
        reg.promote("7")


def test_rollback_walks_back_the_promotion_stack(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory
) -> None:
    reg = registry_with(tmp_path, pipeline_bundle_factory, ["1", "2", "3"])
    with pytest.raises(RegistryError, match="no promoted version"):
        reg.rollback()
    for v in ("1", "2", "3"):
        reg.promote(v)
    assert reg.rollback("bad alarms").version == "2"
    assert reg.current() == "2"
    assert reg.rollback().version == "1"
    with pytest.raises(RegistryError, match="one promoted version"):
        reg.rollback()
    reg.promote("3")
    assert reg.rollback().version == "1"
    assert [v.version for v in reg.versions() if v.current] == ["1"]


def test_rollback_refuses_a_damaged_target(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory
) -> None:
    reg = registry_with(tmp_path, pipeline_bundle_factory, ["1", "2"])
    reg.promote("1")
    reg.promote("2")
    (reg.dir / "1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        reg.rollback()
    assert reg.current() == "2"


def test_rejected_challengers_are_hidden_from_agents(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory
) -> None:
    reg = registry_with(tmp_path, pipeline_bundle_factory, ["1"])
    reg.reject(pipeline_bundle_factory("pump", "2"))
    assert (reg.dir / ".rejected" / "2" / "manifest.json").is_file()
    assert [v.version for v in reg.versions()] == ["1"]
    assert current_version_dir(reg.dir) == reg.dir / "1"


def test_announcement_names_the_version_and_its_digest(
    tmp_path: Path, pipeline_bundle_factory: PipelineBundleFactory
) -> None:
    reg = registry_with(tmp_path, pipeline_bundle_factory, ["1"])
    ann = reg.announcement("1")
    body = json.loads(ann.encode())
    assert body["name"] == "pump"
    assert body["version"] == "1"
    assert Path(body["path"]) == (reg.dir / "1").resolve()
    assert len(body["sha256"]) == 64
    assert Announcement(**body) == ann


def test_announce_urls_parse() -> None:
    a = announcer_from_url("mqtt://u:p%40ss@broker:1884/fleet/{name}/model")
    assert (a.host, a.port, a.topic) == ("broker", 1884, "fleet/{name}/model")
    assert announcer_from_url("mqtt://broker").topic == "gapwatch/models/{name}"
    with pytest.raises(RegistryError, match="mqtt://host"):
        announcer_from_url("http://broker")


def test_cli_list_promote_rollback(
    tmp_path: Path,
    pipeline_bundle_factory: PipelineBundleFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "models"
    reg = Registry(root, "pump")
    base = ["--root", str(root)]
    assert registry_cli.main([*base, "publish", str(pipeline_bundle_factory("pump", "1"))]) == 0
    reg.publish(pipeline_bundle_factory("pump", "2"))
    assert registry_cli.main([*base, "promote", "1"]) == 0
    assert registry_cli.main([*base, "promote", "2", "--reason", "why not"]) == 0
    capsys.readouterr()
    assert registry_cli.main([*base, "list", "--log"]) == 0
    out = capsys.readouterr().out
    assert "* 2" in out and "  1" in out and "why not" in out
    assert registry_cli.main([*base, "rollback"]) == 0
    assert "now runs 1 (was 2)" in capsys.readouterr().out
    assert registry_cli.main([*base, "--json", "list"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["current"] == "1"
    assert registry_cli.main([*base, "rollback"]) == 1
    assert "nothing to roll back" in capsys.readouterr().err
