"""Grouping flagged ticks into alarm episodes."""

from __future__ import annotations

from pipeline.dashboard.episodes import group_episodes
from pipeline.dashboard.source import AnomalyPoint


def point(ts: int, score: float | None = 1.0, device: str = "p1", top: str = "a") -> AnomalyPoint:
    return AnomalyPoint("lab", device, ts, score, (top,))


def test_consecutive_ticks_form_one_episode_with_the_peak_channels() -> None:
    points = [point(0), point(1000, 5.0, top="b"), point(2000, 2.0)]
    (episode,) = group_episodes(reversed(points), {("lab", "p1"): 1000.0})
    assert (episode.start_ms, episode.end_ms, episode.ticks) == (0, 2000, 3)
    assert (episode.peak_ms, episode.peak_score, episode.top_channels) == (1000, 5.0, ("b",))


def test_a_gap_longer_than_the_tick_period_splits_episodes() -> None:
    points = [point(0), point(1000), point(2000), point(5000), point(6000)]
    episodes = group_episodes(points, {("lab", "p1"): 1000.0})
    assert [(e.start_ms, e.end_ms) for e in episodes] == [(5000, 6000), (0, 2000)]  # newest first
    # a missed tick or two (2.5 periods) still belongs to the same episode
    assert len(group_episodes([point(0), point(2500)], {("lab", "p1"): 1000.0})) == 1


def test_devices_never_share_an_episode() -> None:
    points = [point(0, device="p1"), point(1000, device="p2")]
    episodes = group_episodes(points, {})
    assert sorted(e.device for e in episodes) == ["p1", "p2"]


def test_unknown_period_falls_back_to_the_default_gap() -> None:
    points = [point(0), point(50_000), point(200_000)]
    episodes = group_episodes(points, {("lab", "p1"): None}, default_gap_ms=60_000)
    assert [e.ticks for e in episodes] == [1, 2]


def test_peak_ignores_missing_scores_and_empty_input_is_empty() -> None:
    (episode,) = group_episodes([point(0, None), point(1000, 0.5)], {})
    assert episode.peak_score == 0.5
    assert group_episodes([], {}) == []
    assert episode.to_json()["top_channels"] == ["a"]
