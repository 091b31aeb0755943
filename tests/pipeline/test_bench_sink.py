"""`gapwatch bench sink` helpers that need no services (the run itself needs Kafka and InfluxDB)."""

from __future__ import annotations

import io

from gapwatch.bench.sink import BenchResult, make_ticks, progress
from pipeline.lineproto import LineEncoder


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_silent_when_not_on_a_terminal() -> None:
    log = io.StringIO()
    assert list(progress(range(5000), "produce", log)) == list(range(5000))
    assert log.getvalue() == ""


def test_progress_bar_is_drawn_on_a_terminal() -> None:
    tty = _Terminal()
    assert list(progress(range(50), "produce", tty)) == list(range(50))
    assert "produce" in tty.getvalue()


def test_bench_ticks_are_reproducible_and_take_the_sink_fast_path() -> None:
    ticks = make_ticks(500, devices=7, seed=3)
    assert ticks == make_ticks(500, devices=7, seed=3)
    assert len({t.device for t in ticks}) == 7
    enc = LineEncoder()
    for t in ticks:
        fast = enc.encode_json(t.encode())
        assert fast is not None
        assert fast.lines == enc.encode(t)


def test_rates_and_ratio() -> None:
    r = BenchResult(records=10, points=1000, baseline_s=0.01, sink_s=0.02)
    assert (r.baseline_rate, r.sink_rate, r.ratio) == (100_000.0, 50_000.0, 0.5)
