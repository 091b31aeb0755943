"""The sink process's interpreter settings (the Kafka adapters are covered in tests/integration)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from pipeline.tuning import GC_THRESHOLDS, SWITCH_INTERVAL_S, tune_interpreter


@pytest.fixture
def restore_interpreter() -> Iterator[None]:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("restore_interpreter")
def test_tune_interpreter_collects_less_often_and_hands_the_gil_back_sooner() -> None:
    alive = [object() for _ in range(10)]
    tune_interpreter()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default gen-0 threshold
    assert gc.get_freeze_count() >= len(alive)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert SWITCH_INTERVAL_S < 0.005  # CPython's default
