"""The pandas-free table reader used by ``gapwatch score``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.errors import InputError
from edge.table import parse_timestamp, read_table


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2020-02-08 13:30:47", 1581168647000),  # no zone: UTC
        ("2020-02-08T13:30:47Z", 1581168647000),
        ("2020-02-08T14:30:47+01:00", 1581168647000),
        ("2020-02-08T13:30:47.250", 1581168647250),
        ("1581168647", 1581168647000),  # epoch seconds
        ("1581168647250", 1581168647250),  # epoch ms
    ],
)
def test_parse_timestamp(text: str, ms: int) -> None:
    assert parse_timestamp(text) == ms


def test_semicolon_csv_with_gaps_and_text_columns(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        "datetime;flow;site;temp;anomaly\n"
        "2020-02-08 13:30:47;1.5;lab;;0\n"
        "2020-02-08 13:30:48;2.5;lab;20;1\n"
    )
    table = read_table(f)
    assert table.time_column == "datetime"
    assert table.ts_ms.tolist() == [1581168647000, 1581168648000]
    assert set(table.columns) == {"flow", "temp", "anomaly"}  # 'site' is not numeric
    np.testing.assert_array_equal(table.columns["temp"], [np.nan, 20.0])
    np.testing.assert_array_equal(table.matrix(("temp", "flow")), [[np.nan, 1.5], [20.0, 2.5]])


def test_errors_name_the_problem(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("when,x\n2020-01-01,1\n")
    with pytest.raises(InputError, match="no time column"):
        read_table(f)
    f.write_text("ts,x\nlater,1\n")
    with pytest.raises(InputError, match=r"'later' on line 2"):
        read_table(f)
    f.write_text("ts,x,site\n2020-01-01,1,a\n")
    with pytest.raises(InputError, match=r"\['y'\] are missing or not numeric.*\['x', 'site'\]"):
        read_table(f).matrix(("y",))
    with pytest.raises(InputError, match="no such file"):
        read_table(tmp_path / "nope.csv")
