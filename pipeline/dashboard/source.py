"""What the dashboard reads, as values, and the port it reads them through.

:class:`ReadingsSource` is the one port of the dashboard. Two adapters implement it:
:class:`~pipeline.dashboard.influx_source.InfluxSource` (InfluxDB 1.x over InfluxQL) and
:class:`~pipeline.dashboard.memory_source.MemorySource` (in memory, for tests). Both raise
:class:`~pipeline.errors.StorageError` when the store cannot answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeline.dashboard.queries import Window

__all__ = [
    "AnomalyPoint",
    "ChannelSeries",
    "DeviceSeries",
    "DeviceSummary",
    "Extent",
    "ReadingsSource",
    "Window",
]


@dataclass(frozen=True)
class Extent:
    """First and last tick of one device in a window, and how many ticks lie between."""

    first_ms: int
    last_ms: int
    ticks: int

    @property
    def period_ms(self) -> float | None:
        """The mean tick period, or None for a single tick."""
        return (self.last_ms - self.first_ms) / (self.ticks - 1) if self.ticks > 1 else None


@dataclass(frozen=True)
class DeviceSummary:
    """One device in the fleet overview; counts are inside the requested window."""

    site: str
    device: str
    last_seen_ms: int | None  # newest stored tick, whatever the window
    model_version: str | None  # model of that newest tick
    ticks: int = 0
    imputation_rate: float | None = None  # mean share of imputed channels per tick
    flagged: int = 0  # ticks with anomaly = true
    extent: Extent | None = None  # first/last tick inside the window


@dataclass(frozen=True)
class ChannelSeries:
    """One channel over a device's time axis (same length as :attr:`DeviceSeries.times`).

    ``imputed`` is the share of imputed entries at each point: 0 or 1 for raw ticks, a
    fraction for averaged buckets. ``sigma`` is the (mean) σ of the imputed entries, else None.
    """

    name: str
    values: tuple[float | None, ...]
    imputed: tuple[float, ...]
    sigma: tuple[float | None, ...]


@dataclass(frozen=True)
class DeviceSeries:
    """A device's scores and channels; ``interval_ms`` is 0 for raw ticks, else the bucket."""

    site: str
    device: str
    interval_ms: int
    times: tuple[int, ...]
    score: tuple[float | None, ...]
    smoothed: tuple[float | None, ...]
    threshold: tuple[float | None, ...]
    flagged: tuple[bool, ...]
    channels: tuple[ChannelSeries, ...]


@dataclass(frozen=True)
class AnomalyPoint:
    """A flagged tick as stored in ``anomalies``, with the channels that drove it."""

    site: str
    device: str
    ts_ms: int
    score: float | None
    top_channels: tuple[str, ...]


class ReadingsSource(Protocol):
    """Read-only access to stored readings and anomalies."""

    def describe(self) -> str:
        """Where the data comes from, for messages (no credentials)."""
        ...

    def ping(self) -> None:
        """Raise StorageError when the store is unreachable."""
        ...

    def summaries(self, window: Window) -> list[DeviceSummary]:
        """Every device ever stored, sorted by (site, device), with counts inside ``window``."""
        ...

    def extent(self, site: str, device: str, window: Window) -> Extent | None:
        """First/last tick of a device inside ``window``; None when it has none there."""
        ...

    def series(self, site: str, device: str, window: Window, interval_ms: int) -> DeviceSeries:
        """Ticks in a bounded window: raw when ``interval_ms`` is 0, else bucket aggregates.

        Channels with no value in the window are left out; buckets without ticks are skipped.
        """
        ...

    def anomalies(
        self, window: Window, site: str | None, device: str | None, limit: int
    ) -> list[AnomalyPoint]:
        """The newest ``limit`` active anomaly points in ``window``, newest first."""
        ...
