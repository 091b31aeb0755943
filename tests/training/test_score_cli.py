"""``gapwatch score`` with a bundle written by training: output table, modes, errors, no torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import read_manifest
from gapwatch.cli import main as gapwatch
from training.data import load_series


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def skab_file(skab_dir: Path) -> Path:
    return skab_dir / "other" / "1.csv"


def test_score_writes_one_row_per_tick(
    skab_small_bundle: Path, skab_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scored.csv"
    rc = gapwatch(
        ["score", str(skab_file), "--bundle", str(skab_small_bundle.parent), "--out", str(out)]
    )
    assert rc == 0
    rows = read_rows(out)
    (series,) = load_series([skab_file])
    assert len(rows) == len(series)  # first to last input timestamp, every tick
    assert rows[0]["timestamp"] == "2020-03-01T15:44:06Z"
    channels = json.loads((skab_small_bundle / "manifest.json").read_text())["channels"]
    names = [c["name"] for c in channels]
    assert list(rows[0]) == [
        "timestamp", *names, *(f"{n}_imputed" for n in names), *(f"{n}_sigma" for n in names),
        "score", "threshold", "is_anomaly", "top_channels", "smoothed", "warmup",
        "anomaly", "changepoint",
    ]  # fmt: skip
    missing_tick = int(np.flatnonzero(np.isnan(series.values).all(axis=1))[0])
    gap = rows[missing_tick]
    assert gap["score"] == "" and gap["anomaly"] == ""  # no source row: empty labels
    assert all(gap[f"{n}_imputed"] == "1" and float(gap[f"{n}_sigma"]) > 0 for n in names)
    first = rows[0]
    assert float(first["Pressure"]) == series.values[0, names.index("Pressure")]
    assert first["Pressure_imputed"] == "0" and first["Pressure_sigma"] == ""
    assert float(first["score"]) > 0 and first["is_anomaly"] in {"0", "1"}


def test_backfill_mode_revises_imputed_values_only(
    skab_small_bundle: Path, skab_file: Path, tmp_path: Path
) -> None:
    causal, backfill = tmp_path / "c.csv", tmp_path / "b.csv"
    base = ["score", str(skab_file), "--bundle", str(skab_small_bundle)]
    assert gapwatch([*base, "--out", str(causal)]) == 0
    assert gapwatch([*base, "--out", str(backfill), "--mode", "backfill"]) == 0
    c_rows, b_rows = read_rows(causal), read_rows(backfill)
    changed = [i for i, (c, b) in enumerate(zip(c_rows, b_rows, strict=True)) if c != b]
    assert changed
    for i in changed:
        assert any(v == "1" for k, v in c_rows[i].items() if k.endswith("_imputed"))
        assert c_rows[i]["score"] == b_rows[i]["score"]
        assert c_rows[i]["is_anomaly"] == b_rows[i]["is_anomaly"]


def test_warmup_rows_never_alarm(skab_small_bundle: Path, skab_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.csv"
    args = ["--warmup", "200", "--rescale", "--out", str(out)]
    assert gapwatch(["score", str(skab_file), "--bundle", str(skab_small_bundle), *args]) == 0
    rows = read_rows(out)
    assert all(r["warmup"] == "1" and r["is_anomaly"] == "0" for r in rows[:200])
    assert all(r["warmup"] == "0" for r in rows[200:])


def test_missing_channel_is_named(
    skab_small_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "renamed.csv"
    names = list(read_manifest(skab_small_bundle).channel_names)
    header = ["timestamp", *("Pump current" if n == "Current" else n for n in names)]
    f.write_text(",".join(header) + "\n2024-01-01T00:00:00Z" + ",1" * len(names) + "\n")
    rc = gapwatch(["score", str(f), "--bundle", str(skab_small_bundle)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "['Current'] are missing" in err and "['Pump current']" in err


def test_bad_bundle_and_bad_options(
    skab_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gapwatch(["score", str(skab_file), "--bundle", str(tmp_path)]) == 2
    assert "neither a bundle version directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gapwatch(["score", str(skab_file)])
    assert "--bundle is required" in capsys.readouterr().err


def test_score_never_imports_torch_or_pandas(
    skab_small_bundle: Path, skab_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.csv"
    code = (
        "import sys\n"
        "from gapwatch.cli import main\n"
        f"rc = main(['score', {str(skab_file)!r}, '--bundle', {str(skab_small_bundle)!r},"
        f" '--out', {str(out)!r}])\n"
        "assert rc == 0, rc\n"
        "print(sorted(m for m in ('torch', 'pandas', 'training') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert out.stat().st_size > 0
