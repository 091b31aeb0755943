"""Training windows cut from series.

A :class:`WindowSet` holds the raw series (concatenated) and the start of every usable window:
a stretch of ``window`` ticks inside one series with no excluded (labelled anomalous) tick and
at least ``min_observed`` of its entries observed. Windows are scaled on the way out with the
per-channel center/scale that goes into the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge.scorer import model_inputs
from training.errors import TrainingError

__all__ = ["WindowSet", "make_windows"]


@dataclass(frozen=True)
class WindowSet:
    """Usable windows: start indices into ``raw`` and the scaling they are seen with."""

    raw: NDArray[np.float64]  # [N, C] concatenated series, NaN = missing
    starts: NDArray[np.int64]  # [K] first tick of each usable window
    window: int
    center: NDArray[np.float64]  # [C]
    scale: NDArray[np.float64]  # [C]

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def gather(self, idx: NDArray[np.int64]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Windows ``idx``: scaled ``x`` (0 where missing) and ``observed``, both [B, W, C]."""
        rows = self.starts[idx][:, None] + np.arange(self.window)[None, :]  # [B, W]
        x, mask = model_inputs(self.raw[rows], self.center, self.scale)  # as the scorer does
        return x, mask.astype(bool)


def make_windows(
    series_values: Sequence[NDArray[np.float64]],
    center: NDArray[np.float64],
    scale: NDArray[np.float64],
    window: int,
    *,
    exclude: Sequence[NDArray[np.bool_] | None] | None = None,
    min_observed: float = 0.5,
) -> WindowSet:
    """Every window (stride 1) inside one series with no excluded tick and enough observations.

    ``series_values`` are raw [T, C] arrays (NaN = missing); ``exclude`` [T] marks ticks no
    window may contain (e.g. labelled anomalies).
    """
    starts = []
    offset = 0
    for i, raw in enumerate(series_values):
        t_len = raw.shape[0]
        given = None if exclude is None else exclude[i]
        bad = np.zeros(t_len, dtype=bool) if given is None else given
        if t_len >= window:
            csum_bad = np.concatenate([[0], np.cumsum(bad)])
            csum_obs = np.concatenate([[0], np.cumsum((~np.isnan(raw)).sum(axis=1))])
            s = np.arange(t_len - window + 1)
            n_bad = csum_bad[s + window] - csum_bad[s]
            frac = (csum_obs[s + window] - csum_obs[s]) / (window * raw.shape[1])
            starts.append(s[(n_bad == 0) & (frac >= min_observed)] + offset)
        offset += t_len
    if not starts or sum(len(s) for s in starts) == 0:
        raise TrainingError(
            f"no training window: every series is shorter than the window ({window} ticks), "
            f"labelled anomalous, or less than {min_observed:.0%} observed"
        )
    return WindowSet(
        raw=np.concatenate([np.asarray(v, np.float64) for v in series_values]),
        starts=np.concatenate(starts).astype(np.int64),
        window=window,
        center=np.asarray(center, np.float64),
        scale=np.asarray(scale, np.float64),
    )
