"""Artificial missingness: which entries to hide, for training and for evaluation.

Every generator takes a shape ``(..., T, C)`` (a batch of windows, or one whole series
``(T, C)``) and a ``numpy.random.Generator`` and returns a boolean array of that shape, True
where an entry is to be hidden. Hiding is applied on top of real missingness by the caller
(only observed entries are worth hiding: compare against them).

- :func:`random_points`: each entry independently with probability ``rate`` (MCAR);
- :func:`channel_silence`: per sequence, ``count`` stretches of ``length`` ticks on one random
  channel each;
- :func:`device_silence`: per sequence, ``count`` stretches of ``length`` ticks on all channels;
- :func:`training_mask`: the mix used in training (:class:`MaskMix`), with stretches that often
  end at the newest tick, as they do when a device goes silent in a live stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["MaskMix", "channel_silence", "device_silence", "random_points", "training_mask"]

Shape = tuple[int, ...]


def _check(shape: Shape) -> tuple[int, int, int]:
    if len(shape) < 2:
        raise ValueError(f"mask shape must be (..., T, C), got {shape}")
    lead = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    return lead, int(shape[-2]), int(shape[-1])


def random_points(shape: Shape, rate: float, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Hide each entry independently with probability ``rate``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    _check(shape)
    return rng.random(shape) < rate


def _stretches(
    shape: Shape,
    length: int,
    count: int,
    rng: np.random.Generator,
    *,
    one_channel: bool,
) -> NDArray[np.bool_]:
    lead, t_len, n_ch = _check(shape)
    if length < 1 or count < 0:
        raise ValueError(f"length must be >= 1 and count >= 0, got {length}, {count}")
    out = np.zeros((lead, t_len, n_ch), dtype=bool)
    span = min(length, t_len)
    for _ in range(count):
        starts = rng.integers(0, t_len - span + 1, size=lead)
        chans = rng.integers(0, n_ch, size=lead)
        for i in range(lead):
            if one_channel:
                out[i, starts[i] : starts[i] + span, chans[i]] = True
            else:
                out[i, starts[i] : starts[i] + span, :] = True
    return out.reshape(shape)


def channel_silence(
    shape: Shape, length: int, rng: np.random.Generator, *, count: int = 1
) -> NDArray[np.bool_]:
    """Per sequence, ``count`` stretches of ``length`` ticks of one random channel each."""
    return _stretches(shape, length, count, rng, one_channel=True)


def device_silence(
    shape: Shape, length: int, rng: np.random.Generator, *, count: int = 1
) -> NDArray[np.bool_]:
    """Per sequence, ``count`` stretches of ``length`` ticks of every channel."""
    return _stretches(shape, length, count, rng, one_channel=False)


@dataclass(frozen=True)
class MaskMix:
    """How training hides entries of a batch of windows [B, W, C].

    Each window gets random points at a rate drawn from [0, ``max_point_rate``]; with
    probability ``p_channel`` also one channel silent for 1..``max_length`` ticks, and with
    ``p_device`` the whole device silent for 1..``max_length`` ticks. A stretch ends at the
    newest tick with probability ``tail_prob``. ``max_length`` defaults to half the window.
    """

    max_point_rate: float = 0.5
    p_channel: float = 0.3
    p_device: float = 0.3
    max_length: int | None = None
    tail_prob: float = 0.5


def training_mask(shape: Shape, rng: np.random.Generator, mix: MaskMix) -> NDArray[np.bool_]:
    """A fresh artificial mask [B, W, C] for one training batch (see :class:`MaskMix`)."""
    if len(shape) != 3:
        raise ValueError(f"training masks are [B, W, C], got {shape}")
    batch, window, n_ch = shape
    rates = rng.random(batch) * mix.max_point_rate
    hide = rng.random(shape) < rates[:, None, None]
    max_len = max(1, min(window, mix.max_length or window // 2))
    for kind, prob in (("channel", mix.p_channel), ("device", mix.p_device)):
        chosen = np.flatnonzero(rng.random(batch) < prob)
        if chosen.size == 0:
            continue
        lengths = rng.integers(1, max_len + 1, size=chosen.size)
        at_tail = rng.random(chosen.size) < mix.tail_prob
        starts = rng.integers(0, window - lengths + 1)
        starts = np.where(at_tail, window - lengths, starts)
        chans = rng.integers(0, n_ch, size=chosen.size)
        for b, start, n, ch in zip(chosen, starts, lengths, chans, strict=True):
            if kind == "channel":
                hide[b, start : start + n, ch] = True
            else:
                hide[b, start : start + n, :] = True
    return hide
