"""Micro-batched inference across devices: collect prepared windows, run each model once.

Ticks closed by the aligners are prepared by their device's :class:`~edge.scorer.DeviceScorer`
(``prepare_raw`` -> the raw window [W, C] with the scaling in force) and queued here.
:meth:`MicroBatch.run` scales the windows of each bundle together (``model_inputs``), runs them
in one [B, W, C] call of ``Bundle.run`` (one onnxruntime session per bundle, shared by its
devices) and finishes them with one vectorised ``finish_batch`` call, in queue order, which is
each device's tick order, as the scorer requires. Outputs are handed on in queue order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.align import ClosedTick
from edge.bundle import Bundle
from edge.scorer import DeviceScorer, TickOutput, finish_batch, model_inputs

__all__ = ["MicroBatch", "Prepared"]


@dataclass(frozen=True)
class Prepared:
    owner: Any  # the caller's device record, handed back with the outputs
    scorer: DeviceScorer
    bundle: Bundle
    tick: ClosedTick
    window: NDArray[np.float64]  # [W, C] raw values, NaN = missing
    center: NDArray[np.float64]  # [C] the scaling in force when the tick was prepared
    scale: NDArray[np.float64]


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

    def run(self, emit: Callable[[Prepared, list[TickOutput]], None]) -> int:
        """Run the models and finish every queued tick; return how many ticks ran.

        ``emit(item, outputs)`` is called once per queued tick, in queue order, with its
        causal output first and any back-fill after it.
        """
        items, self.items, self.started = self.items, [], None
        if not items:
            return 0
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(id(item.bundle), []).append(i)
        outputs: list[list[TickOutput]] = [[] for _ in items]
        for idxs in groups.values():
            group = [items[i] for i in idxs]
            bundle = group[0].bundle
            window = np.stack([it.window for it in group])
            center = np.stack([it.center for it in group])[:, None, :]
            scale = np.stack([it.scale for it in group])[:, None, :]
            x, mask = model_inputs(window, center, scale)
            mean, logvar = bundle.run(x, mask)
            done = finish_batch(
                [it.scorer for it in group], mean, logvar, [bundle.run] * len(group)
            )
            for i, outs in zip(idxs, done, strict=True):
                outputs[i] = outs
        for item, outs in zip(items, outputs, strict=True):
            emit(item, outs)
        return len(items)
