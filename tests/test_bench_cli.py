"""``gapwatch bench``: the registry/dispatcher, and one cheap benchmark run end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gapwatch.bench import cli as bench_cli

DATA = Path(
    os.environ.get("GAPWATCH_DATA_DIR")
    or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
)


def test_help_lists_every_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.main([]) == 0
    out = capsys.readouterr().out
    for name in bench_cli.BENCHMARKS:
        assert f"  {name} " in out


def test_unknown_benchmark_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.main(["warp-speed"]) == 2
    assert "unknown benchmark 'warp-speed'" in capsys.readouterr().err


def test_unbuilt_benchmark_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = dict(bench_cli.BENCHMARKS)
    entries["later"] = bench_cli.Benchmark("edge.no_such_bench:main", "arrives later")
    entries["nopkg"] = bench_cli.Benchmark("no_such_package.bench:main", "elsewhere")
    monkeypatch.setattr(bench_cli, "BENCHMARKS", entries)
    assert bench_cli.main(["later"]) == 2
    assert "not built yet" in capsys.readouterr().err
    assert bench_cli.main(["nopkg"]) == 2
    assert "not built yet" in capsys.readouterr().err
    assert bench_cli.main(["--help"]) == 0
    assert "arrives later  [not built yet]" in capsys.readouterr().out


def test_registered_targets_name_a_function() -> None:
    for name, bench in bench_cli.BENCHMARKS.items():
        module, _, func = bench.target.partition(":")
        assert module and func, name


@pytest.mark.skipif(not (DATA / "skab").is_dir(), reason=f"SKAB data not found under {DATA}")
def test_inference_bench_writes_its_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.data import load_series
    from training.train import TrainConfig
    from training.train_bundle import BundleConfig, train_bundle

    series = load_series([DATA / "skab" / "anomaly-free" / "anomaly-free.csv"])[0].slice(0, 600)
    cfg = BundleConfig(
        train=TrainConfig(window=8, hidden=16, latent=2, epochs=1, batch_size=32),
        name="bench-tiny",
        version="1",
        progress=False,
    )
    bundle = train_bundle([series], tmp_path / "bundles", cfg)
    out = tmp_path / "inference.json"
    rc = bench_cli.main(["inference", "--quick", "--bundle", str(bundle), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["us_per_tick"]) == {
        "onnx_batch64",
        "onnx_batch1",
        "score_series_batch64",
        "numpy_mahalanobis_batch64",
    }
    for timing in result["us_per_tick"].values():
        assert 0 < timing["best"] <= timing["median"]
    assert "× onnx batch 64" in capsys.readouterr().out
