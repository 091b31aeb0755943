"""``gapwatch bench decode``: µs per MQTT message for each input format (edge.formats).

The baseline is the ``gapwatch`` format through :func:`edge.decode.decode_message` (the path
every agent took before ``[[mqtt.inputs]]``), timed in the same run. Each case is one message of
``--channels`` channels, decoded ``--n`` times; the best of ``--repeat`` rounds is reported (the
least disturbed by the machine's other load). One process, one core, no services.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from edge.config import InputConfig, MqttConfig
from edge.decode import Limits, TopicTemplate, decode_message
from edge.formats import build_inputs, decode_input
from gapwatch.bench.cli import MACHINE_NOTE, bench_parser, write_json

__all__ = ["BASELINE", "cases", "main"]

BASELINE = "gapwatch (decode_message, baseline)"
NOW_MS = 1_700_000_000_000
TS_S = NOW_MS // 1000 - 1


def cases(channels: int) -> dict[str, tuple[str, bytes]]:
    """format name -> (topic, payload) carrying ``channels`` values at one time."""
    values = {f"ch{i}": 0.25 + i for i in range(channels)}
    fields = ",".join(f"{k}={v}" for k, v in values.items())
    telegraf = {"fields": values, "name": "cpu", "tags": {"host": "pump-1"}, "timestamp": TS_S}
    senml = [{"bn": "pump-1:", "bt": TS_S, "n": "ch0", "v": 0.25}]
    senml += [{"n": k, "v": v} for k, v in list(values.items())[1:]]
    return {
        "gapwatch": ("sensors/lab/pump-1", json.dumps({"ts": TS_S, "values": values}).encode()),
        "gapwatch channel": ("sensors/lab/pump-1/ch0", b"0.25"),
        "gapwatch channel + ts": (
            "sensors/lab/pump-1/ch0",
            json.dumps({"ts": TS_S, "value": 0.25}).encode(),
        ),
        "flat_json": ("flat/lab/pump-1", json.dumps({"ts": TS_S, **values}).encode()),
        "flat_json telegraf": ("telegraf/lab/pump-1", json.dumps(telegraf).encode()),
        "influx_line": ("line/lab/pump-1", f"cpu,host=pump-1 {fields} {TS_S}000000000".encode()),
        "senml": ("senml/lab/pump-1", json.dumps(senml).encode()),
    }


INPUTS = (
    InputConfig(topic="flat/{site}/{device}", format="flat_json"),
    InputConfig(topic="telegraf/{site}/{device}", preset="telegraf"),
    InputConfig(topic="line/{site}/{device}", format="influx_line"),
    InputConfig(topic="senml/{site}/{device}", format="senml"),
)


def _best_us(runs: dict[str, Callable[[], object]], n: int, repeat: int) -> dict[str, float]:
    """µs per call of each function: the best of ``repeat`` rounds of ``n`` calls.

    Rounds go round-robin over the functions, so that the machine's other load falls on all
    of them alike.
    """
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: b / n * 1e6 for name, b in best.items()}


def _runs(channels: int) -> dict[str, Callable[[], object]]:
    limits = Limits()
    templates = (
        TopicTemplate("sensors/{site}/{device}"),
        TopicTemplate("sensors/{site}/{device}/{channel}"),
    )
    inputs = build_inputs(MqttConfig(inputs=INPUTS))
    plain = build_inputs(MqttConfig())  # the default config: no [[mqtt.inputs]]
    topic, payload = cases(channels)["gapwatch"]
    runs: dict[str, Callable[[], object]] = {
        BASELINE: lambda: decode_message(topic, payload, NOW_MS, templates, limits=limits),
        "gapwatch (agent path, no inputs)": lambda: decode_input(
            topic, payload, NOW_MS, plain, limits=limits
        ),
    }
    for name, (t, body) in cases(channels).items():
        readings = decode_input(t, body, NOW_MS, inputs, limits=limits)  # decodes, or raises
        assert sum(len(r.values) for r in readings) >= 1, name

        def run(t: str = t, body: bytes = body) -> object:
            return decode_input(t, body, NOW_MS, inputs, limits=limits)

        runs[name] = run
    return runs


def main(argv: list[str]) -> int:
    p = bench_parser("decode", __doc__.splitlines()[0] if __doc__ else "decode")
    p.add_argument("--n", type=int, default=5000, help="messages per round")
    p.add_argument("--repeat", type=int, default=15, help="rounds; the best is reported")
    p.add_argument("--channels", type=int, default=8)
    args = p.parse_args(argv)
    n = 1000 if args.quick else args.n
    us = _best_us(_runs(args.channels), n, args.repeat)
    base = us[BASELINE]
    rows = [{"format": name, "us": v, "ratio": v / base} for name, v in us.items()]
    width = max(len(name) for name in us)
    lines = [f"{'format'.ljust(width)}  µs/msg  vs baseline  ({args.channels} channels, n={n})"]
    lines += [f"{name.ljust(width)}  {v:6.2f}  {v / base:5.2f}x" for name, v in us.items()]
    lines.append(f"({MACHINE_NOTE}; the other formats sit behind 4 [[mqtt.inputs]] templates)")
    sys.stdout.write("\n".join(lines) + "\n")
    write_json(args.json, {"channels": args.channels, "n": n, "repeat": args.repeat, "rows": rows})
    return 0
