"""``gapwatch evaluate``: happy paths on small real slices with a tiny bundle, the evaluation
core with a fake model of known output, and clear errors on bad input.

Uses the training suite's session fixtures ``skab_dir`` and ``skab_small_bundle``
(tests/training/conftest.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.bundle import Channel, Manifest
from edge.fakes import CenterModel
from training.cli.evaluate import main
from training.data import Series
from training.errors import DataError
from training.evaluate import MASK_TYPES, ImputationSetup, evaluate_imputation, split_series
from training.evaluate_anomaly import AnomalySetup, LabelledFile, evaluate_anomaly, load_labelled
from training.metrics import segments


def test_anomaly_happy_path(skab_dir: Path, skab_small_bundle: Path, tmp_path: Path) -> None:
    files = [skab_dir / "other" / "1.csv", skab_dir / "valve1" / "2.csv"]
    out_json, out_md = tmp_path / "a.json", tmp_path / "a.md"
    args = ["--bundle", str(skab_small_bundle), "--warmup", "300", "--no-progress"]
    rc = main(
        ["anomaly", *map(str, files), *args, "--json", str(out_json), "--markdown", str(out_md)]
    )
    assert rc == 0
    report = json.loads(out_json.read_text())
    rows = sum(len(f.read_text().splitlines()) - 1 - 300 for f in files)  # header, warm-up
    assert report["setup"]["scored_rows"] == rows
    results = report["results"]
    assert set(results) == {"vae", "mahalanobis", "pca_t2q", "isolation_forest", "flag_all"}
    for r in results.values():
        assert r["rows"] == rows
        assert 0.0 <= r["f1"] <= 1.0 and 0.0 <= r["far"] <= 1.0 and 0.0 <= r["mar"] <= 1.0
        assert r["segments"] == 2
    assert results["flag_all"]["far"] == 1.0 and results["flag_all"]["mar"] == 0.0
    assert "| vae |" in out_md.read_text()


def test_imputation_happy_path(skab_dir: Path, skab_small_bundle: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "i.json"
    args = ["--seeds", "1", "--mask-types", "mcar20", "device", "--length", "8", "--no-progress"]
    args += ["--baselines", "mean", "locf", "linear", "--json", str(out_json)]
    rc = main(
        ["imputation", str(skab_dir / "other" / "5.csv"), "--bundle", str(skab_small_bundle), *args]
    )
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert set(report["mae"]) == {"mean", "locf", "linear", "vae_causal", "vae_backfill"}
    for per_mask in report["mae"].values():
        assert set(per_mask) == {"mcar20", "device"}
        assert all(np.isfinite(v) and v >= 0 for v in per_mask.values())
    assert report["ratio_vs_locf"]["locf"]["mcar20"] == pytest.approx(1.0)
    assert report["hidden_entries_per_seed"]["mcar20"] > 0
    assert report["hidden_entries_per_seed"]["device"] > 0


def test_unknown_mask_type_is_refused(skab_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["imputation", str(skab_dir / "other" / "1.csv"), "--mask-types", "mcar20", "gaps"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'gaps'" in err and "mcar20" in err and "device" in err


def test_file_without_the_bundle_channels(
    skab_small_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "other.csv"
    data.write_text(
        "timestamp,Pressure,Flow\n"
        + "".join(f"2024-01-01T00:00:{i:02d},1.0,{i}\n" for i in range(60))
    )
    rc = main(["imputation", str(data), "--bundle", str(skab_small_bundle), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Accelerometer1RMS" in err and "missing" in err


def test_anomaly_needs_a_label_column(
    skab_dir: Path, skab_small_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unlabelled = str(skab_dir / "anomaly-free" / "anomaly-free.csv")
    rc = main(["anomaly", unlabelled, "--no-progress", "--bundle", str(skab_small_bundle)])
    assert rc == 2
    assert "label column" in capsys.readouterr().err


def test_unknown_anomaly_baseline(skab_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["anomaly", str(skab_dir / "other" / "1.csv"), "--baselines", "lof", "--no-progress"])
    assert rc == 2
    assert "lof" in capsys.readouterr().err


# -- the evaluation core with a fake model whose output is known ------------------------------


def _manifest(bundle: Path, center: np.ndarray, scale: np.ndarray) -> Manifest:
    from edge.bundle import read_manifest

    m = read_manifest(bundle)
    names = [f"c{i}" for i in range(center.size)]
    channels = tuple(
        Channel(n, "", float(c), float(s)) for n, c, s in zip(names, center, scale, strict=True)
    )
    return replace(m, channels=channels, max_gap_ticks=100)


def test_vae_path_maps_model_output_back_to_z(skab_small_bundle: Path) -> None:
    """A model that decodes the train mean must score exactly like the mean baseline."""
    rng = np.random.default_rng(3)
    values = np.cumsum(rng.normal(size=(600, 3)), axis=0)
    values[rng.random(values.shape) < 0.05] = np.nan
    series = Series("s", np.arange(600, dtype=np.int64) * 1000, values, ("c0", "c1", "c2"), 1.0)
    part = split_series(series, fraction=0.5)
    center, scale = np.nanmean(part.train, axis=0), np.nanstd(part.train, axis=0)
    model = CenterModel(_manifest(skab_small_bundle, center, scale))
    setup = ImputationSetup(
        mask_types=("mcar20", "device"), seeds=2, length=5, baselines=("mean", "locf")
    )
    report = evaluate_imputation([part], model, setup)
    for kind in ("mcar20", "device"):
        assert report.mae["vae_causal"][kind] == pytest.approx(report.mae["mean"][kind])
        assert report.mae["vae_backfill"][kind] == pytest.approx(report.mae["mean"][kind])
        assert report.mae["locf"][kind] != pytest.approx(report.mae["mean"][kind])
    assert report.entries["mcar20"] > 0


@pytest.mark.parametrize("kind", ["channel", "device"])
def test_outages_are_separate_stretches_of_exactly_l_ticks(kind: str) -> None:
    rng = np.random.default_rng(5)
    hide = MASK_TYPES[kind].draw((1000, 3), rng, 10, 0.1)
    per_tick = hide.sum(axis=1)
    assert set(np.unique(per_tick)) == {0, 1 if kind == "channel" else 3}
    runs = segments(per_tick > 0)
    assert len(runs) == 10  # coverage 0.1 of 1000 ticks in outages of 10
    assert all(end - start == 10 for start, end in runs)
    if kind == "channel":  # one channel per outage
        assert all(len(set(np.flatnonzero(hide[start:end])[:] % 3)) == 1 for start, end in runs)


def test_split_rejects_a_cut_outside_the_data() -> None:
    series = Series("s", np.arange(10, dtype=np.int64) * 1000, np.zeros((10, 1)), ("c",), 1.0)
    with pytest.raises(DataError, match="--split"):
        split_series(series, fraction=1.5)
    with pytest.raises(DataError, match="no train or no test"):
        split_series(series, test_from_ms=10**9)


def _labelled_csv(path: Path, rng: np.random.Generator) -> None:
    """900 rows at 1 s, every 10th step 2 s (gaps on the tick grid); rows 600..750 shifted."""
    steps = np.where(np.arange(900) % 10 == 9, 2, 1)
    ts = 1_700_000_000 + np.cumsum(steps)
    x = rng.normal(size=(900, 2))
    label = np.zeros(900, int)
    label[600:750] = 1
    x[600:750, 0] += 6.0
    lines = ["datetime;c0;c1;anomaly"] + [
        f"{t};{a:.4f};{b:.4f};{y}" for t, (a, b), y in zip(ts, x, label, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_anomaly_metrics_are_on_rows_not_ticks(skab_small_bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "run.csv"
    _labelled_csv(path, rng)
    model = CenterModel(_manifest(skab_small_bundle, np.zeros(2), np.ones(2)))
    f: LabelledFile = load_labelled(path, ("c0", "c1"), 1.0, _load_options())
    assert f.labels.size == 900
    assert len(f.series) > 900  # the 2 s steps leave empty ticks on the grid
    report = evaluate_anomaly([f], model, AnomalySetup(warmup=400, baselines=("mahalanobis",)))
    vae = report.results["vae"]
    assert vae.rows == 500 and vae.positives == 150
    # a 6 σ shift is found by a z² score; the EWMA keeps the alarm on a little after it ends
    assert vae.roc_auc > 0.99 and vae.mar == 0.0 and vae.far < 0.2
    assert vae.detected == 1 and vae.mean_delay_s < 30
    assert report.results["flag_all"].far == 1.0


class ClipModel(CenterModel):
    """Reproduces every input within ±3 (z units) and nothing beyond, like a model that only
    knows its training range: an entry scores above the floor only outside ±3."""

    def run(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.clip(x, -3.0, 3.0) * mask, np.zeros_like(x)


def test_rescale_scale_weight_reaches_the_vae(skab_small_bundle: Path, tmp_path: Path) -> None:
    """Bundle scale 100 vs a warm-up spread of 1: only the warm-up's scale sees the 6 σ shift."""
    rng = np.random.default_rng(0)
    path = tmp_path / "run.csv"
    _labelled_csv(path, rng)
    model = ClipModel(_manifest(skab_small_bundle, np.zeros(2), np.full(2, 100.0)))
    f = load_labelled(path, ("c0", "c1"), 1.0, _load_options())
    found = {}
    for weight in (0.0, 1.0):
        setup = AnomalySetup(warmup=400, rescale=(True,), baselines=(), rescale_scale_weight=weight)
        report = evaluate_anomaly([f], model, setup)
        assert report.setup["rescale_scale_weight"] == weight
        found[weight] = report.results["vae_rescaled"]
    assert found[1.0].detected == 1 and found[1.0].mar < 0.05
    assert found[0.0].detected == 0 and found[0.0].mar == 1.0


def test_anomaly_cli_passes_the_warmup_rule(
    skab_dir: Path, skab_small_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "a.json"
    args = ["--bundle", str(skab_small_bundle), "--warmup", "300", "--no-progress", "--rescale"]
    args += ["--baselines", "--rescale-scale-weight", "0.8", "--warmup-margin", "0.25"]
    assert main(["anomaly", str(skab_dir / "other" / "1.csv"), *args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["rescale_scale_weight"] == 0.8
    assert report["setup"]["warmup_margin"] == 0.25
    assert set(report["results"]) == {"vae_rescaled", "flag_all"}
    assert "scale weight 0.8" in report["methods"][0]["summary"]
    bad = main(
        ["anomaly", str(skab_dir / "other" / "1.csv"), *args[:-4], "--rescale-scale-weight", "2"]
    )
    assert bad == 2


def _load_options() -> Any:
    from training.data import LoadOptions

    return LoadOptions()
