"""Interpreter settings for a process that runs the sink's consume loop (measured; see below)."""

from __future__ import annotations

import gc
import sys

__all__ = ["GC_THRESHOLDS", "SWITCH_INTERVAL_S", "tune_interpreter"]

GC_THRESHOLDS = (50_000, 20, 20)
SWITCH_INTERVAL_S = 0.0005


def tune_interpreter() -> None:
    """Settings for a process that runs the sink (``gapwatch sink``, the benchmark).

    - **Garbage collector.** The consume loop allocates a few container objects per record and
      holds them until the batch is committed, so with the default thresholds (700, 10, 10) the
      cyclic collector ran every few hundred records and its full passes walked every live
      object: ~1.4 us of the ~13 us of CPU a point cost (``gapwatch bench sink``). The loop
      makes no reference cycles; collecting after 50,000 net allocations frees the same memory.
      What is alive at start-up (modules, config) is frozen out of collections altogether.
    - **GIL switch interval.** The writer thread needs the GIL back each time its socket call
      returns (the request sent in pieces, the response arriving) while the consume loop is
      busy decoding the next batch; with the default 5 ms each hand-back can idle InfluxDB for
      up to 5 ms, several times per write. 0.5 ms keeps that wait short; it only costs anything
      while two threads want to run.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
