"""SenML (RFC 8428) JSON payloads -> readings (the ``senml`` input format).

A pack is a JSON array of records. Base fields (``bn`` base name, ``bt`` base time, ``bv``
base value) apply to the records that follow until changed; each record resolves to

- name = ``bn`` + ``n``: the channel (with ``device_key = "bn"``: the device is ``bn`` without
  its trailing ``:``, ``/``, ``.``, ``-`` or ``_``, and the channel is ``n``);
- time = ``bt`` + ``t`` in seconds; below 2**28 it is relative to now (the arrival time), so a
  record without any time is stamped on arrival;
- value = ``bv`` + ``v``. String, boolean and data values (``vs``, ``vb``, ``vd``) and sums
  (``s``) are rejected per channel as ``bad_value``.

A record with only base fields is allowed (it sets them); a record with a name but no value is
``bad_value``; a field whose name ends in ``_`` (RFC 8428's must-understand extension) or a
mistyped field refuses the pack as ``bad_shape``. Records of one time and device merge.
"""

from __future__ import annotations

import math
from typing import Any

from edge.config import InputConfig
from edge.decode import Limits, Reading, loads, number
from edge.errors import PayloadError
from edge.formats import Batch, ident, name_parts

__all__ = ["RELATIVE_BELOW_S", "decode_senml"]

RELATIVE_BELOW_S = 2**28  # RFC 8428 section 4.5.3: smaller times are relative to now
_MAX_TIME_S = 1e15  # seconds; beyond, not a time (and * 1000 may overflow)
_BASE = ("bn", "bt", "bv", "bu", "bver", "bs")
_OTHER_VALUES = ("vs", "vb", "vd", "s")


def _num(rec: dict[str, Any], key: str, default: float) -> float:
    raw = rec.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PayloadError("bad_shape", f"SenML {key!r} must be a number, got {raw!r:.40}")
    try:
        return float(raw)
    except OverflowError as exc:
        raise PayloadError("bad_shape", f"SenML {key!r} {raw!r:.40} is out of range") from exc


def _text(rec: dict[str, Any], key: str, default: str) -> str:
    raw = rec.get(key, default)
    if not isinstance(raw, str):
        raise PayloadError("bad_shape", f"SenML {key!r} must be text, got {raw!r:.40}")
    return raw


def _base_only(rec: dict[str, Any]) -> bool:
    return not any(k in rec for k in _OTHER_VALUES) and any(k in rec for k in _BASE)


def decode_senml(
    c: InputConfig,
    fields: dict[str, str],
    per_channel: bool,
    payload: bytes,
    received_ms: int,
    *,
    limits: Limits,
    default_site: str,
) -> tuple[Reading, ...]:
    """The readings of a SenML pack (merged by device and time)."""
    pack, lenient = loads(payload)
    if not isinstance(pack, list) or not pack:
        raise PayloadError("bad_shape", "SenML is a non-empty JSON array of records")
    site = fields.get("site", default_site)
    by_bn = c.device_key == "bn"
    before, after = name_parts(c.channel_name, "")
    skip = set(c.exclude)
    bn, bt, bv = "", 0.0, 0.0
    device = fields.get("device", "")
    batch = Batch()
    for rec in pack:
        if not isinstance(rec, dict):
            raise PayloadError("bad_shape", f"SenML record {rec!r:.40} is not an object")
        for key in rec:
            if key[-1:] == "_":
                raise PayloadError("bad_shape", f"SenML field {key!r} must be understood")
        if "bn" in rec:
            bn = _text(rec, "bn", bn)
            if by_bn:
                device = ident(bn.rstrip(":/.-_"), "SenML base name")
        if "bt" in rec:
            bt = _num(rec, "bt", bt)
        if "bv" in rec:
            bv = _num(rec, "bv", bv)
        if "n" not in rec and "v" not in rec and _base_only(rec):
            continue  # a base record
        n = _text(rec, "n", "")
        name = n if by_bn else bn + n
        if not name:
            raise PayloadError("bad_shape", "a SenML record without a name (bn + n)")
        if name in skip:
            continue
        when = bt + _num(rec, "t", 0.0) if "t" in rec else bt
        if not abs(when) < _MAX_TIME_S:  # also NaN
            raise PayloadError("bad_ts", f"SenML time bt + t = {when} is out of range")
        if abs(when) < RELATIVE_BELOW_S:
            ts_ms = received_ms + round(when * 1000.0)
        else:
            ts_ms = round(when * 1000.0)
        if not device:
            raise PayloadError("no_device", "no SenML base name (bn) names the device")
        channel = f"{before}{name}{after}"
        values, rejected = batch.group(site, device, ts_ms)
        if "v" in rec:
            v = number(channel, rec["v"], rejected)
            if v is not None:
                v += bv
                if math.isfinite(v) or math.isnan(v):
                    values[channel] = v
                else:
                    rejected.append((channel, "non_finite"))
        else:
            rejected.append((channel, "bad_value"))
    if not batch.groups:
        raise PayloadError("bad_shape", "a SenML pack without a value record")
    return batch.readings(received_ms, limits, lenient=lenient)
