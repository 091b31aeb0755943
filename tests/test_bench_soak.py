"""``gapwatch bench soak``: the summary compares the run's last window with its first."""

from __future__ import annotations

import math

from gapwatch.bench.soak import Sample, _summary


def test_summary_reports_growth_and_throughput_of_first_and_last_windows() -> None:
    samples = [
        Sample(t_s=60.0 * i, rss_mb=100.0 + i, fds=20, cpu_s=float(i), acked=100.0 * i,
               spool_records=0.0, sim_passes=0)
        for i in range(61)  # one hour, one sample a minute, 1 MiB more each minute
    ]  # fmt: skip
    summary = _summary(samples, duplicates=0, records=6000, errors=0)
    assert summary["rss_mb_first"] == 100.0
    assert summary["rss_mb_last"] == 160.0
    assert math.isclose(summary["rss_growth_mb_per_hour"], 60.0)
    assert math.isclose(summary["records_per_s_first"], 100.0 / 60.0)
    assert math.isclose(summary["records_per_s_last"], 100.0 / 60.0)
    assert summary["fds_first"] == summary["fds_last"] == 20
    assert summary["duplicates"] == 0


def test_summary_of_a_stalled_run_shows_zero_throughput_at_the_end() -> None:
    samples = [
        Sample(t_s=10.0 * i, rss_mb=90.0, fds=19, cpu_s=1.0, acked=min(50.0 * i, 500.0),
               spool_records=0.0, sim_passes=0)
        for i in range(40)
    ]  # fmt: skip
    summary = _summary(samples, duplicates=2, records=500, errors=1)
    assert summary["records_per_s_first"] == 5.0
    assert summary["records_per_s_last"] == 0.0
    assert summary["duplicates"] == 2 and summary["error_log_lines"] == 1
