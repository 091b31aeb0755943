"""The agent's devices: which model each one uses and its per-device state.

A device (``site/device``) is created the first time it speaks, from the first ``[[devices]]``
rule whose pattern matches; it gets an aligner on its model's grid and a
:class:`~edge.scorer.DeviceScorer`. Unknown devices are remembered (bounded) so a stream of
them costs one rule lookup each. After a crash, ``restored`` tick watermarks make new aligners
refuse ticks the previous run already emitted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from edge.align import DeviceAligner
from edge.bundle import Bundle, Manifest
from edge.config import AgentConfig, DeviceRule
from edge.scorer import DeviceScorer

__all__ = ["Device", "DeviceTable", "same_grid"]

log = logging.getLogger(__name__)
_UNKNOWN_CACHE = 10_000


def tick_ms(manifest: Manifest) -> int:
    return max(1, round(manifest.tick_seconds * 1000))


def same_grid(a: Manifest, b: Manifest) -> bool:
    """Whether ticks and channels of ``a`` carry over to ``b`` unchanged."""
    return a.channel_names == b.channel_names and a.tick_seconds == b.tick_seconds


@dataclass
class Device:
    key: str
    site: str
    name: str
    rule: DeviceRule
    bundle: Bundle
    aligner: DeviceAligner
    scorer: DeviceScorer
    index: dict[str, int] = field(default_factory=dict)  # channel name -> model column
    prepared: int = 0  # ticks handed to the scorer by prepare()
    finished: int = 0  # ticks back from finish()


class DeviceTable:
    """Devices by ``site/device`` key."""

    def __init__(self, config: AgentConfig, models: Mapping[str, Bundle]) -> None:
        self._config = config
        self._models = models  # the watcher's current bundles, by model name
        self._devices: dict[str, Device] = {}
        self._unknown: set[str] = set()
        self.restored: dict[str, int] = {}  # device key -> last tick already spooled

    def __iter__(self) -> Iterator[Device]:
        return iter(self._devices.values())

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, site: str, name: str) -> Device | None:
        """The device, created on first use; None when no rule matches it."""
        key = f"{site}/{name}"
        dev = self._devices.get(key)
        if dev is not None or key in self._unknown:
            return dev
        rule = self._config.rule_for(site, name)
        if rule is None:
            if len(self._unknown) >= _UNKNOWN_CACHE:
                self._unknown.clear()
            self._unknown.add(key)
            return None
        bundle = self._models[rule.bundle]
        dev = Device(key, site, name, rule, bundle, *self._fresh(key, rule, bundle))
        dev.index = {c: i for i, c in enumerate(bundle.manifest.channel_names)}
        self._devices[key] = dev
        log.info("devices.added", extra={"device": key, "model": bundle.model_id})
        return dev

    def rebind(self, dev: Device, new: Bundle) -> None:
        """Move a device to another model version.

        On the same grid the new scorer is seeded with the device's recent ticks (no restart
        of its window); otherwise the caller must have drained the aligner, and the device
        starts afresh on the new grid after the last tick it emitted.
        """
        old = dev.bundle.manifest
        if same_grid(old, new.manifest):
            dev.scorer = self._scorer(dev.key, dev.rule, new, dev.scorer.recent())
        else:
            last = dev.aligner.last_closed
            if last is not None:
                self.restored[dev.key] = last * tick_ms(old) // tick_ms(new.manifest)
            dev.aligner, dev.scorer = self._fresh(dev.key, dev.rule, new)
            dev.index = {c: i for i, c in enumerate(new.manifest.channel_names)}
        dev.bundle = new
        dev.prepared = dev.finished = 0

    def _fresh(
        self, key: str, rule: DeviceRule, bundle: Bundle
    ) -> tuple[DeviceAligner, DeviceScorer]:
        m = bundle.manifest
        aligner = DeviceAligner(
            tick_ms(m),
            len(m.channels),
            self._config.align.lateness_ticks,
            m.max_gap_ticks,
            last_closed=self.restored.get(key),
        )
        return aligner, self._scorer(key, rule, bundle, None)

    @staticmethod
    def _scorer(key: str, rule: DeviceRule, bundle: Bundle, history: object) -> DeviceScorer:
        return DeviceScorer(
            bundle.manifest,
            warmup_ticks=rule.warmup_ticks,
            rescale=rule.rescale,
            history=history,  # type: ignore[arg-type]
            name=key,
        )
