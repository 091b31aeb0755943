"""The agent benchmark's stream and plan: the messages it publishes and what each path runs on.

Pure values only: :func:`make_messages` builds the ``sensors``-style QoS 1 messages
(``<prefix>/bench/<device>``, ``{"ts": ms, "values": {channels}}``), one message = one tick of
one device; :class:`Plan` holds everything both paths (bare subscriber and agent) share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.bundle import Manifest

__all__ = ["PREFIX", "SITE", "Message", "Plan", "make_messages", "with_prefix"]

SITE = "bench"
PREFIX = "{prefix}"  # replaced by each path's own topic prefix


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    key: str  # "site/device", as in the scored record
    ts_ms: int
    seq: int  # index of the tick within its device
    readings: int  # channel values present (not null)


def make_messages(
    manifest: Manifest,
    *,
    prefix: str,
    group: str,
    devices: int,
    ticks: int,
    base_ms: int,
    seed: int,
    missing: float = 0.0,
) -> list[Message]:
    """``devices`` × ``ticks`` messages, interleaved tick by tick, values around the scaling.

    Each value is null with probability ``missing`` (a gap for the agent to fill).
    """
    rng = np.random.default_rng(seed)
    tick_ms = max(1, round(manifest.tick_seconds * 1000))
    names = manifest.channel_names
    z = rng.normal(0.0, 0.5, size=(ticks, devices, len(names)))
    vals = np.round(manifest.center + manifest.scale * z, 5)
    gone = rng.random(vals.shape) < missing
    out = []
    for j in range(ticks):
        ts = base_ms + j * tick_ms
        for k in range(devices):
            dev = f"{group}{k:03d}"
            row = [None if g else v for v, g in zip(vals[j, k].tolist(), gone[j, k], strict=True)]
            body = {"ts": ts, "values": dict(zip(names, row, strict=True))}
            payload = json.dumps(body, separators=(",", ":")).encode()
            n = len(names) - int(gone[j, k].sum())
            out.append(Message(f"{prefix}/{SITE}/{dev}", payload, f"{SITE}/{dev}", ts, j, n))
    return out


def with_prefix(msgs: Sequence[Message], prefix: str) -> list[Message]:
    """The messages with :data:`PREFIX` in their topic replaced by one path's own prefix."""
    return [replace(m, topic=m.topic.replace(PREFIX, prefix, 1)) for m in msgs]


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    bootstrap: str
    manifest: Manifest
    bundles_root: Path
    lateness: int
    core: int
    agent_sets: tuple[str, ...]  # "section.key=value" overrides of the agent's config
    thr: list[Message]
    lat: list[Message]
    rate: float
    work: Path

    def closed_by_event(self, msgs: Sequence[Message]) -> list[int]:
        """Indexes of messages whose tick the agent closes by event time (not its clock)."""
        last = max(m.seq for m in msgs)
        return [i for i, m in enumerate(msgs) if m.seq <= last - self.lateness - 1]
