"""Artificial mask generators: shapes, rates, stretch geometry, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from training.masks import (
    MaskMix,
    channel_silence,
    device_silence,
    random_points,
    training_mask,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_points_rate_and_shape() -> None:
    mask = random_points((4, 500, 10), 0.2, rng())
    assert mask.shape == (4, 500, 10) and mask.dtype == bool
    assert 0.18 < mask.mean() < 0.22
    with pytest.raises(ValueError, match="rate"):
        random_points((10, 2), 1.5, rng())


def test_channel_silence_is_one_contiguous_stretch_on_one_channel() -> None:
    mask = channel_silence((50, 200, 6), 24, rng())
    for seq in mask:
        channels = np.flatnonzero(seq.any(axis=0))
        assert channels.size == 1
        rows = np.flatnonzero(seq[:, channels[0]])
        assert rows.size == 24 and np.all(np.diff(rows) == 1)


def test_device_silence_hides_every_channel_of_a_stretch() -> None:
    mask = device_silence((300, 4), 24, rng(), count=3)
    silent_rows = mask.all(axis=1)
    assert (mask.any(axis=1) == silent_rows).all()
    assert 24 <= silent_rows.sum() <= 72


def test_stretch_longer_than_sequence_is_clipped() -> None:
    assert device_silence((10, 3), 50, rng()).all()


def test_same_seed_same_mask() -> None:
    a = channel_silence((5, 100, 3), 10, rng(3), count=2)
    b = channel_silence((5, 100, 3), 10, rng(3), count=2)
    c = channel_silence((5, 100, 3), 10, rng(4), count=2)
    assert (a == b).all() and (a != c).any()


def test_training_mask_mixes_kinds_and_often_hides_the_newest_tick() -> None:
    mix = MaskMix(max_point_rate=0.0, p_channel=0.0, p_device=1.0, tail_prob=1.0)
    mask = training_mask((64, 32, 5), rng(), mix)
    assert mask[:, -1, :].all()  # every device stretch ends at the newest tick
    assert (mask.any(axis=2) == mask.all(axis=2)).all()
    assert mask.sum(axis=(1, 2)).max() <= 16 * 5  # max_length defaults to window // 2
    none = training_mask((8, 32, 5), rng(), MaskMix(0.0, 0.0, 0.0))
    assert not none.any()
    with pytest.raises(ValueError, match=r"\[B, W, C\]"):
        training_mask((32, 5), rng(), mix)
