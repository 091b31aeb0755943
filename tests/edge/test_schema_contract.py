"""The scored-tick contract: typed refusal reasons, and the cheap check beside the strict reader."""

from __future__ import annotations

import json

import pytest

from edge.errors import SchemaError
from edge.schema import ScoredTick, canonical_fields


def _tick(**over: object) -> dict[str, object]:
    body = ScoredTick(
        site="lab",
        device="pump-1",
        ts_ms=1_700_000_000_000,
        values={"a": 1.5, "b": 2.0},
        imputed=("b",),
        sigma={"b": 0.25},
        score=0.5,
        smoothed=0.4,
        threshold=3.0,
        anomaly=False,
        top_channels=(),
        model="skab",
        model_version="1",
    ).to_dict()
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not json", "not_json"),
        (json.dumps(_tick(schema=7)).encode(), "bad_schema"),
        (json.dumps(_tick(ts_ms="soon")).encode(), "bad_schema"),
        (json.dumps(_tick(device="pump-\ud800")).encode(), "bad_name"),
    ],
)
def test_every_refusal_carries_a_typed_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(SchemaError) as err:
        ScoredTick.decode(raw)
    assert err.value.reason == reason


def test_the_agent_s_own_shape_passes_the_cheap_check_with_its_numbers_in_line_order() -> None:
    checked = canonical_fields(_tick())
    assert checked is not None
    fields, numbers = checked
    assert fields[1:3] == ("lab", "pump-1")
    assert numbers == [1.5, 2.0, 0.25, 0.5, 0.4, 3.0]


@pytest.mark.parametrize(
    "over",
    [{"score": None}, {"values": {"a": None, "b": 2.0}}, {"sigma": {}}, {"threshold": 3}],
)
def test_any_other_shape_is_left_to_the_strict_reader(over: dict[str, object]) -> None:
    assert canonical_fields(_tick(**over)) is None
    ScoredTick.from_dict(_tick(**over))  # and the strict reader accepts these
