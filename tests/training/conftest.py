"""Fixtures for training tests: the shared real data and one small bundle trained per session.

Fixture names are prefixed (``skab_``) so they do not clash with other suites' fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.data import Series, load_series
from training.train import TrainConfig
from training.train_bundle import BundleConfig, train_bundle

SMALL_ROWS = 2000
SMALL_TRAIN = TrainConfig(window=16, hidden=64, latent=8, epochs=2, batch_size=64, seed=7)


def data_dir() -> Path:
    """``$GAPWATCH_DATA_DIR`` or ``../shared/data`` next to the repository root."""
    env = os.environ.get("GAPWATCH_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def skab_small_train() -> TrainConfig:
    """The tiny training settings of :func:`skab_small_bundle`."""
    return SMALL_TRAIN


@pytest.fixture(scope="session")
def skab_dir() -> Path:
    path = data_dir() / "skab"
    if not path.is_dir():
        pytest.skip(f"SKAB data not found at {path}; set GAPWATCH_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def skab_normal_small(skab_dir: Path) -> Series:
    """The first 2,000 ticks of anomaly-free.csv."""
    series = load_series([skab_dir / "anomaly-free" / "anomaly-free.csv"])[0]
    return series.slice(0, SMALL_ROWS)


@pytest.fixture(scope="session")
def skab_small_bundle(skab_normal_small: Series, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained for 2 epochs on 2,000 SKAB ticks (window 16): built once per session."""
    root = tmp_path_factory.mktemp("bundles")
    config = BundleConfig(train=SMALL_TRAIN, name="skab-small", version="1", progress=False)
    return train_bundle([skab_normal_small], root, config)
