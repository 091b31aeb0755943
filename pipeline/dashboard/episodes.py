"""Alarm episodes: runs of flagged ticks of one device, grouped from stored anomaly points.

The sink stores one ``anomalies`` point per flagged tick. People think in alarms ("pump-3 was
anomalous from 10:02 to 10:09, driven by Pressure"), so the dashboard groups a device's flagged
ticks into episodes: a new episode starts when the time since the device's previous flagged tick
exceeds ``gap_ticks`` tick periods (the device's mean period in the window, or ``default_gap_ms``
when it is unknown). An episode reports its peak score and the top channels of that peak tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.dashboard.source import AnomalyPoint

__all__ = ["Episode", "group_episodes"]

DEFAULT_GAP_MS = 60_000
GAP_TICKS = 2.5


@dataclass(frozen=True)
class Episode:
    site: str
    device: str
    start_ms: int
    end_ms: int
    ticks: int  # flagged ticks in the episode
    peak_ms: int
    peak_score: float | None
    top_channels: tuple[str, ...]  # of the peak tick

    def to_json(self) -> dict[str, object]:
        return {
            "site": self.site,
            "device": self.device,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "ticks": self.ticks,
            "peak_ms": self.peak_ms,
            "peak_score": self.peak_score,
            "top_channels": list(self.top_channels),
        }


def _close(run: list[AnomalyPoint]) -> Episode:
    peak = max(run, key=lambda p: float("-inf") if p.score is None else p.score)
    return Episode(
        site=run[0].site,
        device=run[0].device,
        start_ms=run[0].ts_ms,
        end_ms=run[-1].ts_ms,
        ticks=len(run),
        peak_ms=peak.ts_ms,
        peak_score=peak.score,
        top_channels=peak.top_channels,
    )


def group_episodes(
    points: Iterable[AnomalyPoint],
    period_ms: Mapping[tuple[str, str], float | None],
    *,
    gap_ticks: float = GAP_TICKS,
    default_gap_ms: int = DEFAULT_GAP_MS,
) -> list[Episode]:
    """Episodes of every device in ``points`` (any order), newest start first."""
    by_device: dict[tuple[str, str], list[AnomalyPoint]] = {}
    for point in points:
        by_device.setdefault((point.site, point.device), []).append(point)
    episodes = []
    for key, found in by_device.items():
        period = period_ms.get(key)
        gap = gap_ticks * period if period else default_gap_ms
        found.sort(key=lambda p: p.ts_ms)
        run = [found[0]]
        for point in found[1:]:
            if point.ts_ms - run[-1].ts_ms > gap:
                episodes.append(_close(run))
                run = []
            run.append(point)
        episodes.append(_close(run))
    episodes.sort(key=lambda e: (e.start_ms, e.site, e.device), reverse=True)
    return episodes
