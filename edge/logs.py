"""The one log set-up of every gapwatch process (agent, sink, dashboard, history, retrain).

One line per event on stderr, in one of :data:`LOG_FORMATS`:

- ``text``: ``2026-12-07T01:02:03.456Z level=warning event=spool.dropped_oldest
  logger=edge.spool records=24 bytes=2961``, key=value pairs, values quoted only when they hold
  a space, ``=`` or a quote; easy to read in a terminal and to grep in the journal.
- ``json``: one object per line with ``ts`` (RFC 3339 UTC, milliseconds), ``level``, ``event``
  (the stable message), ``logger`` and the record's ``extra`` fields (dataclasses as objects).

``kv`` is accepted as the old name of ``text``. With ``limit_repeats`` a
:class:`~edge.lograte.RepeatFilter` keeps a repeated warning to one line per 10 s, with a count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Any

from edge.lograte import RepeatFilter

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging", "log_format"]

LOG_FORMATS = ("text", "json")
_ALIASES = {"kv": "text"}
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def log_format(name: str) -> str:
    """The canonical format name (``kv`` is ``text``); ValueError for an unknown one."""
    fmt = _ALIASES.get(name, name)
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {name!r}: use one of {', '.join(LOG_FORMATS)}")
    return fmt


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: _plain(v)
        for k, v in vars(record).items()
        if k not in _STANDARD and not k.startswith("_")
    }


class _UtcFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.converter = time.gmtime

    def stamp(self, record: logging.LogRecord) -> str:
        return self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"


class TextFormatter(_UtcFormatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            self.stamp(record),
            f"level={record.levelname.lower()}",
            f"event={_kv(record.getMessage())}",
            f"logger={record.name}",
        ]
        parts += [f"{k}={_kv(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_kv(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(_UtcFormatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": self.stamp(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        body.update(_fields(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def _kv(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="\n')) else text


def configure_logging(
    level: str = "INFO", fmt: str = "text", *, limit_repeats: bool = False
) -> None:
    """Install one stderr handler on the root logger (call from a command's ``main`` only)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format(fmt) == "json" else TextFormatter()
    handler.setFormatter(formatter)
    if limit_repeats:
        handler.addFilter(RepeatFilter())  # the same warning at most once per 10 s, with a count
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    # "Topic ... not found in cluster metadata" is routine while a topic is auto-created
    logging.getLogger("kafka.cluster").setLevel(logging.CRITICAL)
