"""What the demo replays: the files, the gaps injected into them, and their labels.

One file is one device. Each file is read with the simulator's reader
(:func:`edge.simulate.read_series`) and gets gaps from the simulator's own planner
(:func:`edge.simulate.plan_gaps`), so the offline replay, the online replay and
``gapwatch simulate`` withhold values by the same rules:

- random drops: each observed value with probability ``drop_rate``;
- one channel silent for ``channel_outage_s`` (the channel rotates with the file's position,
  so every channel is tested), starting at ``channel_outage_at`` of the file's duration;
- the whole device silent for ``device_outage_s``, starting at ``device_outage_at``.

The withheld values are the truth imputation is scored against; the file's ``anomaly`` column
(when it has one) gives the labels anomaly flags are scored against.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge.errors import InputError
from edge.simulate import Gaps, Outage, Series, plan_gaps, read_series
from edge.table import read_table
from edge.window import to_grid
from gapwatch.demo.errors import DataNotFound

__all__ = [
    "DATA_ENV",
    "KIND_CHANNEL",
    "KIND_DEVICE",
    "KIND_DROP",
    "KIND_NAMES",
    "GapSettings",
    "Replay",
    "default_data_dir",
    "find_files",
    "load_replays",
    "skab_files",
]

DATA_ENV = "GAPWATCH_DEMO_DATA"
KIND_DROP, KIND_CHANNEL, KIND_DEVICE = 1, 2, 3
KIND_NAMES = {
    KIND_DROP: "random drops",
    KIND_CHANNEL: "channel silent",
    KIND_DEVICE: "device silent",
}
LABEL_COLUMN = "anomaly"


@dataclass(frozen=True)
class GapSettings:
    """The gaps injected into every file (see the module docstring)."""

    drop_rate: float = 0.02
    channel_outage_s: float = 60.0
    channel_outage_at: float = 0.3
    device_outage_s: float = 30.0
    device_outage_at: float = 0.6
    seed: int = 0


@dataclass(frozen=True)
class Replay:
    """One device's file, its injected gaps, and what the scores are checked against."""

    path: Path
    series: Series  # the file as the simulator reads it (rows in file order)
    gaps: Gaps  # cells withheld and rows silenced
    outages: tuple[Outage, ...]
    kinds: NDArray[np.int8]  # [N, C] KIND_* of each withheld cell, 0 where published
    labels: NDArray[np.float64] | None  # [N] the file's anomaly column, None when it has none

    @property
    def device(self) -> str:
        return self.series.device

    def shifted(self, ms: int) -> Replay:
        """The same replay with every stamp moved by ``ms`` (gaps, kinds, labels unchanged)."""
        return replace(self, series=replace(self.series, ts_ms=self.series.ts_ms + ms))

    @property
    def messages(self) -> int:
        """Messages the replay publishes (rows not silenced that keep at least one value)."""
        kept = ~self.gaps.withheld
        return int(np.sum(~self.gaps.silent & kept.any(axis=1)))

    @property
    def readings(self) -> int:
        """Channel values the replay publishes (withheld and empty cells excluded)."""
        sent = ~self.gaps.withheld & ~np.isnan(self.series.values)
        return int(sent[~self.gaps.silent].sum())

    def on_ticks(
        self, ts_ms: NDArray[np.int64], tick_ms: int, channels: Sequence[str]
    ) -> tuple[NDArray[np.float64], NDArray[np.int8], NDArray[np.float64] | None]:
        """Truth, gap kinds and labels at the ticks ``ts_ms``: ``(truth [T, C], kinds, labels)``.

        ``channels`` orders the columns (the bundle's order). Rows go to ticks by the agent's
        rule (:func:`edge.window.to_grid`: nearest tick, the latest row of a tick wins). Truth
        is NaN and kind 0 where nothing was withheld; labels are NaN on ticks without a row,
        and None when the file has no label column.
        """
        missing = [c for c in channels if c not in self.series.channels]
        if missing:
            raise DataNotFound(
                f"{self.path}: has no column {missing} that the model needs "
                f"(it has {list(self.series.channels)})"
            )
        order = [self.series.channels.index(c) for c in channels]
        withheld = self.gaps.withheld[:, order]
        rows = np.concatenate(
            [
                np.where(withheld, self.series.values[:, order], np.nan),
                np.where(withheld, self.kinds[:, order], np.nan),
                (np.full(len(withheld), np.nan) if self.labels is None else self.labels)[:, None],
            ],
            axis=1,
        )
        grid_ts, grid = to_grid(self.series.ts_ms, rows, tick_ms)
        n_ch = len(order)
        pos = (np.asarray(ts_ms, np.int64) - int(grid_ts[0])) // tick_ms
        inside = (pos >= 0) & (pos < len(grid_ts))
        picked = np.full((len(pos), rows.shape[1]), np.nan)
        picked[inside] = grid[pos[inside]]
        truth = picked[:, :n_ch]
        kinds = np.nan_to_num(picked[:, n_ch : 2 * n_ch], nan=0.0).astype(np.int8)
        labels = None if self.labels is None else picked[:, 2 * n_ch]
        return truth, kinds, labels


def default_data_dir() -> Path:
    """``$GAPWATCH_DATA_DIR``, else ``../shared/data`` beside the repository root."""
    given = os.environ.get("GAPWATCH_DATA_DIR")
    if given:
        return Path(given)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _numeric_key(path: Path) -> tuple[str, int, str]:
    match = re.fullmatch(r"(\d+)", path.stem)
    return (str(path.parent), int(match.group(1)) if match else -1, path.name)


def skab_files(data_dir: Path) -> list[Path]:
    """SKAB's development files in a stable order: anomaly-free, valve1/0..15, other/1..9."""
    skab = data_dir / "skab"
    free = skab / "anomaly-free" / "anomaly-free.csv"
    groups = [sorted((skab / g).glob("*.csv"), key=_numeric_key) for g in ("valve1", "other")]
    files = ([free] if free.is_file() else []) + groups[0] + groups[1]
    if not files:
        raise DataNotFound(
            f"the shared SKAB data is not at {skab.resolve()} (a clone without ../shared/data).\n"
            f"Point the demo at CSV files of your own: {DATA_ENV}=/path/a.csv[:/path/b.csv] "
            "make demo, or gapwatch demo --data FILE.csv (one file per device; a time column "
            "named timestamp/datetime/time/ts, numeric channel columns, and optionally an "
            "'anomaly' column of 0/1 labels). Or set GAPWATCH_DATA_DIR to where the shared "
            "data lives."
        )
    return files


def find_files(given: Sequence[str]) -> list[Path]:
    """Files named directly, or every ``*.csv`` under a named directory (sorted)."""
    out: list[Path] = []
    for item in given:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("*.csv"), key=_numeric_key)
            if not found:
                raise DataNotFound(f"{path}: no *.csv files in this directory")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DataNotFound(
                f"{path}: no such file or directory (given with --data or {DATA_ENV})"
            )
    return out


def _outage_kinds(series: Series, gaps: Gaps, outages: Sequence[Outage]) -> NDArray[np.int8]:
    """The kind of each withheld cell: device silent beats channel silent beats a drop."""
    kinds = np.where(gaps.withheld, KIND_DROP, 0).astype(np.int8)
    t0 = int(series.ts_ms[0]) if len(series.ts_ms) else 0
    for o in outages:
        assert isinstance(o.start, float)
        start = t0 + round(o.start * 1000)
        inside = (series.ts_ms >= start) & (series.ts_ms < start + round(o.seconds * 1000))
        if o.channel is not None:
            c = series.channels.index(o.channel)
            kinds[inside & gaps.withheld[:, c], c] = KIND_CHANNEL
    kinds[gaps.silent[:, None] & gaps.withheld] = KIND_DEVICE
    return kinds


def _labels(path: Path, rows: int) -> NDArray[np.float64] | None:
    """The file's ``anomaly`` column for its first ``rows`` rows, None when it has none."""
    try:
        table = read_table(path)
    except InputError as exc:
        raise DataNotFound(f"{path}: cannot read its label column: {exc}") from exc
    labels = next((v for k, v in table.columns.items() if k.lower() == LABEL_COLUMN), None)
    if labels is None:
        return None
    if labels.shape[0] < rows:
        raise DataNotFound(f"{path}: {labels.shape[0]} labels for {rows} rows")
    return labels[:rows]


def load_replays(paths: Sequence[Path], settings: GapSettings, max_rows: int = 0) -> list[Replay]:
    """Read every file and plan its gaps (seeded: the same settings give the same gaps)."""
    rng = np.random.default_rng(settings.seed)
    replays: list[Replay] = []
    seen: set[str] = set()
    for i, path in enumerate(paths):
        try:
            series = read_series(path, max_rows=max_rows)
        except (ValueError, OSError) as exc:
            raise DataNotFound(f"{path}: {exc}") from exc
        if len(series.ts_ms) < 2 or not series.channels:
            raise DataNotFound(f"{path}: needs at least two rows and one numeric channel")
        if series.device in seen:
            raise DataNotFound(f"{path}: device name {series.device!r} is used by another file")
        seen.add(series.device)
        duration_s = (int(series.ts_ms[-1]) - int(series.ts_ms[0])) / 1000.0
        channel = series.channels[i % len(series.channels)]
        planned = (
            Outage(channel, duration_s * settings.channel_outage_at, settings.channel_outage_s),
            Outage(None, duration_s * settings.device_outage_at, settings.device_outage_s),
        )
        outages = tuple(o for o in planned if o.seconds > 0)
        gaps = plan_gaps(series, settings.drop_rate, outages, rng)
        labels = _labels(path, len(series.ts_ms))
        kinds = _outage_kinds(series, gaps, outages)
        replays.append(Replay(path, series, gaps, outages, kinds, labels))
    return replays
