"""The score's arithmetic: Gaussian negative log-likelihood of the observed entries (numpy).

Under the model's scaled-unit Gaussian (``mean``, ``logvar``), an observed entry with z-value
``z`` costs ``0.5 * (log 2π + logvar + (z - mean)² / exp(logvar))``; a tick's score is the mean
over its observed entries, so a gap alone never raises it. :mod:`edge.scorer` uses these for
the streaming path, the batch path and the warm-up re-scoring alike.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["LOG_2PI", "entry_nll", "row_scores"]

LOG_2PI = math.log(2.0 * math.pi)


def entry_nll(
    raw: NDArray[np.float64],
    center: NDArray[np.float64],
    scale: NDArray[np.float64],
    mean: NDArray[np.float64],
    logvar: NDArray[np.float64],
) -> tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]:
    """``(observed, nll, resid2)`` per entry of raw ticks ([C] or [B, C], NaN = missing) under
    the model's scaled-unit Gaussian ``mean``/``logvar``; nll is NaN where not observed."""
    observed = ~np.isnan(raw)
    z = np.where(observed, (raw - center) / scale, 0.0)
    resid2 = (z - mean) ** 2 * np.exp(-logvar)
    nll = np.where(observed, 0.5 * (LOG_2PI + logvar + resid2), np.nan)
    return observed, nll, resid2


def row_scores(nll: NDArray[np.float64], observed: NDArray[np.bool_]) -> list[float | None]:
    """Per row ``np.mean(nll[observed])`` (bit for bit), None where nothing was observed.

    Rows are grouped by their number of observed entries ``n`` and each group is reduced as
    an [rows, n] array, so numpy sums every row over exactly its observed entries in order,
    with the same pairwise summation as the 1-D mean of one row.
    """
    counts = observed.sum(axis=1)
    out: list[float | None] = [None] * len(counts)
    for n in np.unique(counts).tolist():
        if n == 0:
            continue
        rows = np.flatnonzero(counts == n)
        compressed = nll[rows][observed[rows]].reshape(rows.size, n)
        means = (np.add.reduce(compressed, axis=1) / n).tolist()
        for r, m in zip(rows.tolist(), means, strict=True):
            out[r] = m
    return out
