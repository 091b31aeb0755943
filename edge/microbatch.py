"""Micro-batched inference across devices: collect prepared windows, run each model once.

Ticks closed by the aligners are prepared by their device's :class:`~edge.scorer.DeviceScorer`
(``prepare`` -> window ``x``/``mask`` [W, C]) and queued here. :meth:`MicroBatch.run` stacks the
windows of each bundle into one [B, W, C] call of ``Bundle.run`` (one onnxruntime session per
bundle, shared by its devices) and then calls ``finish`` in queue order, which is each device's
tick order, as the scorer requires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.align import ClosedTick
from edge.bundle import Bundle
from edge.scorer import DeviceScorer, TickOutput

__all__ = ["MicroBatch", "Prepared"]


@dataclass(frozen=True)
class Prepared:
    owner: Any  # the caller's device record, handed back with the outputs
    scorer: DeviceScorer
    bundle: Bundle
    tick: ClosedTick
    x: NDArray[np.float32]
    mask: NDArray[np.float32]


class MicroBatch:
    """Up to ``max_ticks`` prepared ticks, or whatever is there after ``max_ms``."""

    def __init__(self, max_ticks: int, max_ms: int) -> None:
        self.max_ticks = max_ticks
        self.max_s = max_ms / 1000.0
        self.items: list[Prepared] = []
        self.started: float | None = None  # monotonic time of the first queued item

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Prepared, now_s: float) -> None:
        if not self.items:
            self.started = now_s
        self.items.append(item)

    def due(self, now_s: float) -> bool:
        if not self.items:
            return False
        assert self.started is not None
        return len(self.items) >= self.max_ticks or now_s - self.started >= self.max_s

    def wait_s(self, now_s: float) -> float | None:
        """Seconds until the batch is due by time (None when empty)."""
        if self.started is None or not self.items:
            return None
        return max(0.0, self.started + self.max_s - now_s)

    def min_token(self) -> int | None:
        tokens = [i.tick.token for i in self.items if i.tick.token is not None]
        return min(tokens) if tokens else None

    def run(self, emit: Callable[[Prepared, TickOutput], None]) -> int:
        """Run the models and ``finish`` every queued tick; return how many ticks ran."""
        items, self.items, self.started = self.items, [], None
        if not items:
            return 0
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(id(item.bundle), []).append(i)
        means: list[NDArray[Any]] = [np.empty(0)] * len(items)
        logvars: list[NDArray[Any]] = [np.empty(0)] * len(items)
        for idxs in groups.values():
            bundle = items[idxs[0]].bundle
            x = np.stack([items[i].x for i in idxs])
            mask = np.stack([items[i].mask for i in idxs])
            mean, logvar = bundle.run(x, mask)
            for j, i in enumerate(idxs):
                means[i] = mean[j]
                logvars[i] = logvar[j]
        for i, item in enumerate(items):
            for out in item.scorer.finish(means[i], logvars[i], item.bundle.run):
                emit(item, out)
        return len(items)
