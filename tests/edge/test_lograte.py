"""The repeat filter: first warning of a kind passes, repeats within the window are counted."""

from __future__ import annotations

import logging

from edge.lograte import RepeatFilter


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _record(msg: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "edge.x", "msg": msg, "levelno": level, **extra})
    return rec


def test_repeats_are_dropped_then_counted_on_the_next_line() -> None:
    clock = _Clock()
    f = RepeatFilter(window_s=10.0, clock=clock)
    assert f.filter(_record("mqtt.disconnected"))
    for _ in range(50):
        clock.t += 0.1
        assert not f.filter(_record("mqtt.disconnected"))
    assert f.filter(_record("spool.disk_full", logging.ERROR))  # another kind is independent
    clock.t += 10.0
    rec = _record("mqtt.disconnected")
    assert f.filter(rec)
    assert rec.suppressed == 50
    assert f.dropped == 50
    clock.t += 11.0
    rec = _record("mqtt.disconnected")
    assert f.filter(rec)
    assert "suppressed" not in vars(rec)  # nothing was dropped in between


def test_info_and_self_limited_lines_pass_untouched() -> None:
    f = RepeatFilter(window_s=10.0, clock=_Clock())
    for _ in range(5):
        assert f.filter(_record("agent.starting", logging.INFO))
        assert f.filter(_record("agent.bad_input", suppressed=0))
    assert f.dropped == 0


def test_through_a_real_logger() -> None:
    logger = logging.getLogger("edge.test_lograte")
    seen: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = _Keep()
    handler.addFilter(RepeatFilter(window_s=60.0))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(1000):
            logger.warning("kafka.unreachable", extra={"error": "refused"})
        logger.error("kafka.unreachable")  # another level: its own kind
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert [r.levelno for r in seen] == [logging.WARNING, logging.ERROR]


def test_lines_about_different_subjects_are_different_kinds() -> None:
    clock = _Clock()
    f = RepeatFilter(window_s=10.0, clock=clock)
    assert f.filter(_record("reload.refused", logging.ERROR, path="/b/skab/2"))
    clock.t += 1.0
    assert f.filter(_record("reload.refused", logging.ERROR, path="/b/skab/3"))
    assert not f.filter(_record("reload.refused", logging.ERROR, path="/b/skab/3"))
    assert f.dropped == 1
