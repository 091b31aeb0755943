"""``gapwatch retrain`` and ``gapwatch registry`` on real SKAB history in a real InfluxDB 1.x,
with the reload announcement on a real Mosquitto."""

from __future__ import annotations

import contextlib
import json
import os
import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from edge.bundle import current_version_dir, read_manifest
from edge.schema import ScoredTick
from pipeline.cli import registry as registry_cli
from pipeline.cli import retrain as retrain_cli
from pipeline.errors import StorageError
from pipeline.influx import Influx1Client
from pipeline.lineproto import LineEncoder
from pipeline.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = Path(
    os.environ.get("GAPWATCH_DATA_DIR")
    or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
)
ROWS = 1500


@pytest.fixture
def skab_db(influx_url: str, unique_name: str) -> Iterator[Influx1Client]:
    """The first rows of SKAB's anomaly-free run as scored ticks of device ``bench-1``."""
    path = DATA / "skab" / "anomaly-free" / "anomaly-free.csv"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}")
    frame = pd.read_csv(path, sep=";").head(ROWS)
    ts = pd.to_datetime(frame.pop("datetime"), utc=True).astype("datetime64[ms, UTC]")
    ms = ts.astype("int64").to_numpy()
    enc = LineEncoder()
    lines = []
    for t, row in zip(ms, frame.to_dict("records"), strict=True):
        tick = ScoredTick(
            site="bench", device="bench-1", ts_ms=int(t), values=row, imputed=(), sigma={},
            score=0.5, smoothed=0.5, threshold=3.0, anomaly=False, top_channels=(),
            model="skab", model_version="0",
        )  # fmt: skip
        lines.append(enc.encode(tick))
    client = Influx1Client(influx_url, unique_name.replace("-", "_"))
    client.create_database()
    for i in range(0, len(lines), 500):
        client.write(b"".join(lines[i : i + 500]))
    try:
        yield client
    finally:
        with contextlib.suppress(StorageError):
            client.drop_database()
        client.close()


@pytest.fixture
def announcements(
    mqtt_addr: tuple[str, int], make_unique_name: Callable[[str], str]
) -> Iterator[tuple[str, queue.Queue[tuple[str, bytes, bool]]]]:
    """A topic prefix for announcements and a queue of what a subscriber receives there."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    prefix = make_unique_name("models")
    got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, msg: got.put((msg.topic, msg.payload, bool(msg.retain)))
    client.connect(*mqtt_addr)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    try:
        yield f"mqtt://{mqtt_addr[0]}:{mqtt_addr[1]}/{prefix}/{{name}}", got
    finally:
        client.publish(f"{prefix}/skab", b"", qos=1, retain=True).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()


def run_retrain(db: Influx1Client, registry: Path, *extra: str) -> int:
    return retrain_cli.main(
        [
            "--influx", db.url, "--db", db.database, "--registry", str(registry),
            "--name", "skab", "--epochs", "1", "--window", "16", "--chunk", "10m", "--quiet",
            *extra,
        ]
    )  # fmt: skip


def test_retrain_promotes_refuses_and_rollback_restores(
    skab_db: Influx1Client,
    announcements: tuple[str, queue.Queue[tuple[str, bytes, bool]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    announce_url, received = announcements
    root = tmp_path / "models"
    report = tmp_path / "report.json"

    # 1. no champion yet: the challenger is promoted and announced (retained)
    assert run_retrain(skab_db, root, "--announce", announce_url, "--report", str(report)) == 0
    reg = Registry(root, "skab")
    first = reg.current()
    assert first is not None
    assert current_version_dir(reg.dir) == reg.dir / first
    body = json.loads(report.read_text())
    assert body["promoted"] is True and body["champion"] is None
    assert body["challenger"]["scored_ticks"] > 0
    channels = read_manifest(reg.dir / first).channel_names
    assert len(channels) == 8 and "Volume Flow RateRMS" in channels
    assert 0 < body["challenger"]["imputation_mae"] < 5
    topic, payload, _ = received.get(timeout=10)
    assert topic.endswith("/skab")
    note = json.loads(payload)
    assert (note["name"], note["version"]) == ("skab", first)
    assert note["sha256"] == reg.announcement(first).sha256

    # 2. an impossible rule: the challenger must be 99 % better, so it is refused and kept aside
    assert run_retrain(skab_db, root, "--tol-mae", "-0.99", "--report", str(report)) == 3
    refused = json.loads(report.read_text())
    assert refused["promoted"] is False
    assert refused["champion"]["version"] == first
    assert any("worse" in r for r in refused["reasons"])
    assert reg.current() == first
    assert (reg.dir / ".rejected" / refused["version"] / "model.onnx").is_file()

    # 3. a permissive rule promotes a second version; rollback returns to the first
    assert run_retrain(skab_db, root, "--tol-mae", "10", "--tol-far", "1") == 0
    second = reg.current()
    assert second not in (None, first)
    capsys.readouterr()
    base = ["--root", str(root), "--name", "skab", "--announce", announce_url]
    assert registry_cli.main([*base, "rollback", "--reason", "test"]) == 0
    assert reg.current() == first
    assert current_version_dir(reg.dir) == reg.dir / first
    assert f"now runs {first} (was {second})" in capsys.readouterr().out
    seen = []
    while True:
        try:
            seen.append(json.loads(received.get(timeout=10)[1])["version"])
        except queue.Empty:
            break
        if seen[-1] == first and len(seen) >= 2:
            break
    assert seen[-1] == first  # the rollback was announced too
    assert [e.action for e in reg.events()] == ["promote", "promote", "rollback"]
