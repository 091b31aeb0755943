"""``gapwatch bench agent``: the edge agent's throughput, latency and memory on the local stack.

Two consumers get the same MQTT stream from the same publisher, one after the other:

- **agent**: ``gapwatch agent`` (decode, align, impute/score with the bundle, spool, Kafka) as a
  subprocess pinned to one core (``os.sched_setaffinity``), topics fresh for this run;
- **baseline**: a bare paho-mqtt subscriber (QoS 1, clean session) pinned to the same core, which
  only stamps each message's arrival.

The publisher (this process) runs on another core and sends QoS 1 JSON messages
``sensors``-style (``<prefix>/bench/<device>``, ``{"ts": ms, "values": {8 channels}}``), one
message = one tick of one device, event time 1 tick apart per device. Per path:

1. **throughput**: ``--devices`` × ``--ticks`` messages as fast as the publisher can; channel
   readings/s = readings of the ticks closed by event time / (last one acknowledged - first
   publish). Agent: acknowledged = appended by Kafka (the scored topic is created with
   ``message.timestamp.type=LogAppendTime``, so each record carries the broker's append time);
   baseline: received by the subscriber. Each device's last ``lateness + 1`` ticks, which the
   agent closes by its wall clock, are left out of both.
2. **latency**: ``--rate`` messages/s for ``--seconds`` over ``--latency-devices`` devices; per
   tick, publish -> Kafka append of its causal record (revision 0). This includes the agent's
   alignment wait (a tick closes when a reading ``lateness + 1`` ticks newer arrives); the
   latency from the reading that closed the tick is reported beside it.
3. **memory**: the agent's VmRSS (idle with the bundle loaded, and at the end) and VmHWM from
   ``/proc/<pid>/status``, and whether ``/proc/<pid>/maps`` holds libtorch.

Prints a table (figure, baseline, ratio, target) and writes JSON (``--json``). Numbers depend on
the machine and its load (the broker, Kafka and the publisher share it).

Rooms: this module is the command line (options, the bundle, the plan, the result);
:mod:`~gapwatch.bench.agent_stream` the messages and the plan, :mod:`~gapwatch.bench.harness`
the publisher, pinned subprocesses and Kafka topics, :mod:`~gapwatch.bench.bare` the baseline
(``python -m gapwatch.bench.agent _bare-subscriber`` runs it), :mod:`~gapwatch.bench.agent_run`
the agent path, :mod:`~gapwatch.bench.measure` the ``/proc`` readers and percentiles, and
:mod:`~gapwatch.bench.agent_report` the table and targets.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.bundle import Manifest, latest_version_dir, read_manifest, set_current_version
from edge.errors import EdgeError
from gapwatch.bench.agent_report import report
from gapwatch.bench.agent_run import run_agent
from gapwatch.bench.agent_stream import PREFIX, Message, Plan, make_messages
from gapwatch.bench.bare import BARE_ROLE, bare_subscriber, run_bare
from gapwatch.bench.cli import MACHINE_NOTE, bench_env, write_json
from gapwatch.bench.harness import REPO_ROOT
from gapwatch.bench.measure import cpu_seconds, percentiles, proc_memory, torch_loaded

__all__ = [
    "Message",
    "cpu_seconds",
    "main",
    "make_messages",
    "percentiles",
    "proc_memory",
    "report",
    "torch_loaded",
]


def resolve_bundle(given: str | None, work: Path) -> tuple[Path, Manifest]:
    """``(bundles root holding only this bundle, its manifest)``.

    ``given``: a bundle version directory (with manifest.json) or a ``<root>/<name>`` directory
    (its CURRENT or newest version); none: the packaged SKAB demo bundle (8 channels).
    """
    if given:
        path = Path(given)
        version = path if (path / "manifest.json").exists() else None
        if version is None:
            from edge.bundle import current_version_dir

            version = current_version_dir(path)
    else:
        version = latest_version_dir(REPO_ROOT / "gapwatch" / "demo" / "model" / "skab")
    if version is None or not (version / "manifest.json").exists():
        raise EdgeError(
            f"--bundle {given!r}: no bundle there; give <root>/<name>/<version> (the directory "
            "with manifest.json and model.onnx) or <root>/<name>"
        )
    manifest = read_manifest(version)
    root = work / "bundles"
    link = root / manifest.name / manifest.version
    link.parent.mkdir(parents=True)
    link.symlink_to(version.resolve(), target_is_directory=True)
    set_current_version(root / manifest.name, manifest.version)
    return root, manifest


# (option, type, default, help): each also read from GAPWATCH_BENCH_<OPTION>
_OPTIONS: list[tuple[str, type, str, str]] = [
    ("mqtt", str, "127.0.0.1:11883", "Mosquitto host:port"),
    ("kafka", str, "127.0.0.1:19092", "Kafka bootstrap servers"),
    ("devices", int, "50", "throughput: devices in the burst"),
    ("ticks", int, "400", "throughput: messages (ticks) per device in the burst"),
    ("rate", float, "2000", "latency: messages (ticks) per second, all devices together"),
    ("seconds", float, "20", "latency: how long that rate is kept up"),
    ("latency_devices", int, "20", "latency: devices sharing --rate"),
    ("missing", float, "0.02", "fraction of values sent as null (gaps the agent fills)"),
    ("lateness", int, "2", "the agent's align.lateness_ticks (its default: 2)"),
    (
        "core",
        int,
        "1",
        "CPU core of the agent and of the bare subscriber; the publisher runs on the other cores",
    ),
    ("timeout", float, "180", "seconds to wait for the agent's records, per phase"),
    ("json", Path, ".gapwatch/bench/agent.json", "where to write the JSON result"),
]

EXAMPLES = """\
examples:
  deploy/local/stack up && gapwatch bench agent            # defaults: about 1-2 minutes
  gapwatch bench agent --quick                             # smoke run, about 15 s
  gapwatch bench agent --set kafka.linger_ms=5 --set inference.batch_max_ms=5
  gapwatch bench agent --bundle /var/lib/gapwatch/bundles/skab   # its CURRENT version

Every option can also be set as GAPWATCH_BENCH_<OPTION> (e.g. GAPWATCH_BENCH_RATE=1000).
What each figure means: docs/edge.md, "Agent benchmark". Exit status: 0 when every record came
back (targets missed or not), 1 when the run failed or records are missing, 2 bad options.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch bench agent",
        description="Measure the edge agent on the local stack (MQTT in, Kafka out): channel "
        "readings/s, publish-to-Kafka latency, and memory, each beside a bare paho-mqtt "
        "subscriber measured in the same run. " + MACHINE_NOTE.capitalize() + ".",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, kind, default, text in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        value = bench_env(name, default) or default
        p.add_argument(flag, type=kind, default=kind(value), help=f"{text} (%(default)s)")
    p.add_argument(
        "--bundle",
        default=bench_env("bundle"),
        help="a bundle version directory, or <root>/<name> for its CURRENT version "
        "(default: the packaged 8-channel SKAB bundle, gapwatch/demo/model)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one agent config value (repeatable; the agent's --set value), e.g. "
        "--set kafka.linger_ms=5 (default: the agent's own defaults)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        default=bool(bench_env("quick")),
        help="smoke run: 10 devices × 60 ticks, then 500 msg/s for 3 s",
    )
    return p


def _ticks(args: argparse.Namespace) -> tuple[int, int]:
    """``(ticks per device in the burst, ticks per device in the paced stream)``."""
    fewest = args.lateness + 3  # every device needs ticks that close by event time
    lat_ticks = max(fewest, round(args.rate * args.seconds / args.latency_devices))
    return max(fewest, args.ticks), lat_ticks


def _plan(args: argparse.Namespace, work: Path, bundles_root: Path, manifest: Manifest) -> Plan:
    host, _, port = args.mqtt.rpartition(":")
    tick_ms = max(1, round(manifest.tick_seconds * 1000))
    now_ms = int(time.time() * 1000)
    base = now_ms - now_ms % tick_ms - 43_200_000  # 12 h ago: replay-like, event-time driven
    thr_ticks, lat_ticks = _ticks(args)
    return Plan(
        host=host,
        port=int(port),
        bootstrap=args.kafka,
        manifest=manifest,
        bundles_root=bundles_root,
        lateness=args.lateness,
        agent_sets=tuple(args.set),
        core=args.core,
        thr=make_messages(
            manifest,
            prefix=PREFIX,
            group="t",
            devices=args.devices,
            ticks=thr_ticks,
            base_ms=base,
            seed=0,
            missing=args.missing,
        ),
        lat=make_messages(
            manifest,
            prefix=PREFIX,
            group="l",
            devices=args.latency_devices,
            ticks=lat_ticks,
            base_ms=base,
            seed=1,
            missing=args.missing,
        ),
        rate=args.rate,
        work=work,
    )


def _run_paths(plan: Plan, timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Both paths, this process kept off the plan's core; ``None`` (said why) when one failed."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores - {plan.core})
    try:
        sys.stderr.write(f"bare subscriber: {len(plan.thr)} + {len(plan.lat)} messages\n")
        bare = run_bare(plan)
        sys.stderr.write("agent: same stream\n")
        agent = run_agent(plan, timeout_s)
    except (EdgeError, OSError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write(f"gapwatch bench agent: {exc}\n")
        return None
    finally:
        os.sched_setaffinity(0, cores)
    return bare, agent


def _setup(args: argparse.Namespace, manifest: Manifest, cores: set[int]) -> dict[str, Any]:
    return {
        "agent": f"subprocess `python -m gapwatch agent`, pinned to core {args.core} "
        "(os.sched_setaffinity); bare subscriber pinned to the same core; publisher (paho, "
        f"QoS 1) on cores {sorted(cores - {args.core})}; Mosquitto and Kafka unpinned",
        "ack": "Kafka LogAppendTime of each causal (revision 0) record",
        "bundle": f"{manifest.name}/{manifest.version}",
        "channels": len(manifest.channels),
        "lateness_ticks": args.lateness,
        "missing": args.missing,
        "agent_overrides": list(args.set),
        "devices": args.devices,
        "ticks": _ticks(args)[0],
        "rate": args.rate,
        "seconds": args.seconds,
        "latency_devices": args.latency_devices,
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


def _measure(args: argparse.Namespace) -> tuple[Manifest, dict[str, Any], dict[str, Any]] | int:
    """``(bundle manifest, bare result, agent result)``, or the exit code when it failed."""
    with tempfile.TemporaryDirectory(prefix="gwbench-agent-") as tmp:
        work = Path(tmp)
        try:
            bundles_root, manifest = resolve_bundle(args.bundle, work)
        except EdgeError as exc:
            sys.stderr.write(f"gapwatch bench agent: {exc}\n")
            return 2
        paths = _run_paths(_plan(args, work, bundles_root, manifest), args.timeout)
    return 1 if paths is None else (manifest, *paths)


def main(argv: list[str]) -> int:
    if argv[:1] == [BARE_ROLE]:
        return bare_subscriber(argv[1:])
    args = _parser().parse_args(argv)
    if args.quick:
        args.devices, args.ticks, args.rate, args.seconds = 10, 60, 500.0, 3.0
        args.latency_devices = 10
    cores = os.sched_getaffinity(0)
    if args.core not in cores or len(cores) < 2:
        sys.stderr.write(
            f"gapwatch bench agent: --core {args.core} must be one of {sorted(cores)} "
            "and leave another core for the publisher\n"
        )
        return 2
    measured = _measure(args)
    if isinstance(measured, int):
        return measured
    manifest, bare, agent = measured
    result: dict[str, Any] = {
        "benchmark": "agent",
        "machine_note": MACHINE_NOTE,
        "setup": _setup(args, manifest, cores),
        "bare": bare,
        "agent": agent,
    }
    text, met = report(result)
    result["targets_met"] = met
    sys.stdout.write(f"{text}\n{MACHINE_NOTE}\n")
    write_json(args.json, result)
    return 0 if agent["complete"] and agent["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
