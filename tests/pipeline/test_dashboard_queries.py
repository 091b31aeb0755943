"""Pure InfluxQL builders of the dashboard: quoting, windows, shapes of the statements."""

from __future__ import annotations

import pytest

from pipeline.dashboard import queries as q
from pipeline.dashboard.queries import Window


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        ("pump-1", "'pump-1'"),
        ("x' OR 'a'='a", "'x\\' OR \\'a\\'=\\'a'"),
        ("back\\slash", "'back\\\\slash'"),
        ("two\nlines", "'two\\nlines'"),
    ],
)
def test_quote_string_keeps_one_literal(raw: str, quoted: str) -> None:
    assert q.quote_string(raw) == quoted


def test_quote_ident_escapes_double_quotes() -> None:
    assert q.quote_ident('Volume "Flow"') == '"Volume \\"Flow\\""'
    assert q.quote_ident("PM2.5") == '"PM2.5"'


def test_window_rejects_start_after_end() -> None:
    with pytest.raises(ValueError, match="after its end"):
        Window(10, 5)
    assert Window(5, 10).bounded
    assert not Window(5, None).bounded


def test_time_conditions_leave_open_sides_out() -> None:
    assert q.time_conditions(Window()) == []
    assert q.time_conditions(Window(1, None)) == ["time >= 1ms"]
    assert q.time_conditions(Window(1, 2)) == ["time >= 1ms", "time <= 2ms"]


def test_split_channels_drops_reserved_typed_and_companion_fields() -> None:
    rows = [
        ("Pressure", "float"),
        ("Pressure_imputed", "boolean"),
        ("Pressure_sigma", "float"),
        ("imputed_frac", "float"),
        ("score", "float"),
        ("revision", "integer"),
        ("model_version", "string"),
        ("anomaly", "boolean"),
        ("count", "integer"),
        ("lonely_sigma", "float"),  # no "lonely" field: a channel of its own name
    ]
    assert q.split_channels(rows) == ["Pressure", "count", "lonely_sigma"]


def test_fleet_queries_count_ticks_inside_the_window_only() -> None:
    stmts = q.fleet_queries(Window(1000, 2000))
    assert len(stmts) == 6
    assert "time" not in stmts[0] and "time" not in stmts[1]  # last seen ever, any window
    for stmt in stmts[2:]:
        assert "time >= 1000ms AND time <= 2000ms" in stmt
        assert stmt.endswith('GROUP BY "site", "device"')
    assert '"anomaly" = true' in stmts[5]
    assert 'mean("imputed_frac") AS imputed' in stmts[2]


def test_extent_queries_filter_by_device_with_escaped_names() -> None:
    first, last, count = q.extent_queries("lab", "x' OR 'a'='a", Window(None, 5))
    assert first.startswith('SELECT first("revision")')
    assert last.startswith('SELECT last("revision")')
    assert count.startswith('SELECT count("revision")')
    assert "\"device\" = 'x\\' OR \\'a\\'=\\'a'" in first
    assert "time <= 5ms" in count and "time >=" not in count


def test_series_query_raw_aliases_channels_by_position() -> None:
    stmt = q.series_query("lab", "p1", Window(0, 10), ["a b", "c"], 0)
    assert '"a b" AS v0, "a b_imputed" AS m0, "a b_sigma" AS s0' in stmt
    assert '"c" AS v1' in stmt
    assert stmt.endswith("ORDER BY time ASC")
    assert "GROUP BY" not in stmt


def test_series_query_aggregates_in_buckets() -> None:
    stmt = q.series_query("lab", "p1", Window(0, 10), ["a"], 60_000)
    for part in (
        'max("score") AS score',
        'mean("threshold") AS threshold',
        'max("anomaly") AS anomaly',
        'mean("a") AS v0',
        'count("a") AS n0',
        'count("a_sigma") AS i0',
        'mean("a_sigma") AS s0',
    ):
        assert part in stmt
    assert stmt.endswith("GROUP BY time(60000ms) fill(none)")


def test_series_query_needs_a_bounded_window() -> None:
    with pytest.raises(ValueError, match="bounded"):
        q.series_query("s", "d", Window(0, None), ["a"], 0)
    with pytest.raises(ValueError, match="interval_ms"):
        q.series_query("s", "d", Window(0, 1), ["a"], -1)


def test_anomalies_query_reads_active_points_newest_first() -> None:
    stmt = q.anomalies_query(Window(0, 9), "lab", None, 50)
    assert '"active" = true' in stmt
    assert "\"site\" = 'lab'" in stmt and '"device" =' not in stmt
    assert stmt.endswith("ORDER BY time DESC LIMIT 50")
    with pytest.raises(ValueError):
        q.anomalies_query(Window(), None, None, 0)


@pytest.mark.parametrize(
    ("span", "points", "expected"),
    [
        (0, 100, 1_000),
        (100_000, 100, 1_000),
        (100_001, 100, 2_000),
        (3_600_000, 800, 5_000),
        (7 * 86_400_000, 800, 900_000),
        (4 * 365 * 86_400_000, 800, 172_800_000),
    ],
)
def test_choose_interval_is_nice_and_keeps_within_max_points(
    span: int, points: int, expected: int
) -> None:
    width = q.choose_interval_ms(span, points)
    assert span / width <= points
    assert width == expected


def test_choose_interval_beyond_the_ladder_uses_multiples_of_its_widest_step() -> None:
    span = 1000 * 365 * 86_400_000
    width = q.choose_interval_ms(span, 10)
    assert span / width <= 10
    assert width % q.NICE_INTERVALS_MS[-1] == 0
    with pytest.raises(ValueError):
        q.choose_interval_ms(1, 0)


@pytest.mark.parametrize(
    ("stored", "channels"),
    [
        ("Pressure,Current", ("Pressure", "Current")),
        (" a , b ,", ("a", "b")),
        ('["x", "y"]', ("x", "y")),
        ("", ()),
        (None, ()),
    ],
)
def test_parse_top_channels(stored: str | None, channels: tuple[str, ...]) -> None:
    assert q.parse_top_channels(stored) == channels
