"""``gapwatch bench e2e`` pieces: the synthetic stream, the bare relay's lines, the table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge.bundle import Manifest, read_manifest
from gapwatch.bench.e2e import _table
from gapwatch.bench.e2e_paths import DAY_MS, PathResult, synthetic_stream
from gapwatch.bench.relay import encode_line
from gapwatch.demo.bundle import packaged_dir


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    path = packaged_dir()
    assert path is not None
    return read_manifest(path)


def test_stream_spreads_devices_evenly_at_the_rate(manifest: Manifest) -> None:
    items, last = synthetic_stream(
        manifest, devices=4, rate=100.0, seconds=2.0, step=3, topic=lambda d: f"p/s/{d}"
    )
    assert len(items) == 200 and set(last) == {f"s3-d{k}" for k in range(4)}
    offsets = np.array([i.offset_s for i in items])
    assert np.all(np.diff(offsets) > 0)
    np.testing.assert_allclose(np.diff(offsets), 0.01)  # 100 messages/s, evenly
    first = json.loads(items[0].payload)
    assert set(first["values"]) == set(manifest.channel_names)
    assert items[0].topic == "p/s/s3-d0"
    ts = np.array([i.ts_ms for i in items if i.device == 2])
    assert np.all(np.diff(ts) == 1000) and ts[-1] == last["s3-d2"]
    nulls = sum(v is None for i in items for v in json.loads(i.payload)["values"].values())
    assert 0 < nulls < 0.06 * len(items) * len(manifest.channels)


def test_each_step_has_its_own_day(manifest: Manifest) -> None:
    a, _ = synthetic_stream(manifest, devices=2, rate=10, seconds=1, step=1, topic=str)
    b, _ = synthetic_stream(manifest, devices=2, rate=10, seconds=1, step=2, topic=str)
    assert b[0].ts_ms - a[0].ts_ms == DAY_MS
    assert a[0].topic == "s1-d0"


def test_relay_line_keeps_values_and_counts_them() -> None:
    payload = json.dumps({"ts": 1700000000000, "values": {"Flow Rate": 1.5, "p": None, "q": 2}})
    line = encode_line("pre/fix/site-1/dev 1", payload.encode())
    assert line == r"readings,site=site-1,device=dev\ 1 Flow\ Rate=1.5,q=2.0,n=2i 1700000000000"


@pytest.mark.parametrize(
    "payload", [b"not json", b'{"values": {}}', b'{"ts": 1, "values": [1, 2]}']
)
def test_relay_skips_what_it_cannot_use(payload: bytes) -> None:
    assert encode_line("a/b/c", payload) is None


def test_table_shows_ratios_and_lower_bounds() -> None:
    pipe = PathResult("pipeline", "db1", 1.0, 2.0, 10, 1000.0)
    base = PathResult("baseline", "db2", 0.5, 1.0, 10, 4000.0, capped=True)
    text = _table(pipe, base)
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "pipeline", "bare", "relay", "ratio"]
    assert lines[1].split()[-3:] == ["1,000", ">=4,000", "0.25"]
    assert lines[2].split()[-1] == "2.00"
    none = _table(PathResult("pipeline"), base)
    assert none.splitlines()[2].split()[-3:] == ["-", "0.500", "-"]
    assert math.isnan(PathResult("x").latency_p50_s)
