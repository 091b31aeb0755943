"""``gapwatch train``: the happy path on real data and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gapwatch.cli import main as gapwatch
from training.data import Series

TINY = ["--window", "8", "--epochs", "1", "--hidden", "16", "--latent", "4", "--no-progress"]


def skab_csv(series: Series, path: Path, rows: int = 800) -> Path:
    """Write the first rows of a SKAB series back out in SKAB's own format."""
    from datetime import UTC, datetime

    lines = ["datetime;" + ";".join(series.channels)]
    for ts, row in zip(series.ts_ms[:rows], series.values[:rows], strict=True):
        if row[0] != row[0]:  # a missing tick: no row, as in the source file
            continue
        stamp = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(stamp + ";" + ";".join(repr(float(v)) for v in row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_writes_a_bundle_and_prints_its_path(
    skab_normal_small: Series, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = skab_csv(skab_normal_small, tmp_path / "pump-7.csv")
    out = tmp_path / "models"
    rc = gapwatch(["train", str(data), "--out", str(out), "--version", "v1", "--seed", "3", *TINY])
    printed = capsys.readouterr().out.strip()
    assert rc == 0
    assert printed == str(out / "pump-7" / "v1")
    manifest = json.loads((Path(printed) / "manifest.json").read_text())
    assert manifest["window"] == 8 and manifest["training"]["seed"] == 3
    assert manifest["channels"][0]["name"] == "Accelerometer1RMS"


def test_options_come_from_the_environment(
    skab_normal_small: Series,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = skab_csv(skab_normal_small, tmp_path / "a.csv", rows=500)
    monkeypatch.setenv("GAPWATCH_TRAIN_OUT", str(tmp_path / "env-models"))
    monkeypatch.setenv("GAPWATCH_TRAIN_NAME", "from-env")
    monkeypatch.setenv("GAPWATCH_TRAIN_CHANNELS", "Pressure,Current")
    rc = gapwatch(["train", str(data), "--version", "1", *TINY])
    assert rc == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "env-models" / "from-env" / "1"
    channels = [c["name"] for c in json.loads((path / "manifest.json").read_text())["channels"]]
    assert channels == ["Pressure", "Current"]


def test_bad_input_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "a.csv"
    f.write_text("when,x\n2024-01-01,1\n2024-01-02,2\n")
    rc = gapwatch(["train", str(f), "--out", str(tmp_path), *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "no time column" in err and "--time-column" in err

    rc = gapwatch(["train", str(f), *TINY])
    assert rc == 2 and "--out is required" in capsys.readouterr().err

    rc = gapwatch(["train", str(f), "--out", str(tmp_path), "--backfill-delay", "8", *TINY])
    assert rc == 2 and "--backfill-delay 8 must be in [0, window=8)" in capsys.readouterr().err


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gapwatch(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--false-alarm-rate", "GAPWATCH_TRAIN_", "examples:", "time column"):
        assert needle in text
