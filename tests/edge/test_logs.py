"""The one log formatter every gapwatch process uses: text (key=value) and JSON."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest

from edge.logs import JsonFormatter, TextFormatter, configure_logging, log_format


@dataclass
class _Where:
    site: str
    device: str


def _record(**extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord(
        {"name": "edge.spool", "msg": "spool.dropped_oldest", "levelno": 30, "levelname": "WARNING"}
    )
    for k, v in extra.items():
        setattr(rec, k, v)
    rec.created, rec.msecs = 1_764_000_000.25, 250.0
    return rec


def test_text_is_key_value_and_quotes_only_when_needed() -> None:
    line = TextFormatter().format(_record(records=24, path="/var/lib/gapwatch spool"))
    assert line.startswith("2025-11-24T16:00:00.250Z level=warning event=spool.dropped_oldest")
    assert "logger=edge.spool records=24 " in line
    assert 'path="/var/lib/gapwatch spool"' in line


def test_json_carries_extra_fields_and_dataclasses_as_objects() -> None:
    body = json.loads(JsonFormatter().format(_record(where=_Where("lab", "p1"), records=3)))
    assert body["ts"] == "2025-11-24T16:00:00.250Z"
    assert body["event"] == "spool.dropped_oldest" and body["level"] == "warning"
    assert body["where"] == {"site": "lab", "device": "p1"} and body["records"] == 3


def test_format_names_kv_is_the_old_name_of_text() -> None:
    assert log_format("kv") == "text" and log_format("json") == "json"
    with pytest.raises(ValueError, match="use one of text, json"):
        log_format("xml")


def test_configure_logging_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json", limit_repeats=True)
        configure_logging("INFO", "json", limit_repeats=True)
        assert len(root.handlers) == 1
        for _ in range(3):
            logging.getLogger("edge.x").warning("mqtt.disconnected")
        lines = [json.loads(s) for s in capsys.readouterr().err.splitlines()]
        assert [e["event"] for e in lines] == ["mqtt.disconnected"]  # repeats held back
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
