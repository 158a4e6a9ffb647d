"""The bench's arithmetic (scripts/bench_stats.py): pure functions, no processes, no clock."""

from __future__ import annotations

import math

import bench_stats
from bench_stats import (
    StreamWindow,
    fit_stream_cost,
    flatness,
    judge_stream_cost,
    percentile,
    slope,
)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))


def test_fit_recovers_fixed_and_per_chunk_costs() -> None:
    fixed, per_chunk = 6.0, 0.7
    windows = [
        StreamWindow(streams, chunks, fixed * streams + per_chunk * chunks)
        for streams, chunks in ((100, 1900), (40, 5240), (37, 4100))  # the last one cut short
    ]
    cost = fit_stream_cost(windows)
    assert cost is not None
    assert math.isclose(cost.fixed_ms, fixed, rel_tol=1e-9)
    assert math.isclose(cost.per_chunk_ms, per_chunk, rel_tol=1e-9)
    assert cost.windows == 3


def test_fit_needs_two_stream_lengths() -> None:
    same_length = [StreamWindow(10, 190, 80.0), StreamWindow(20, 380, 160.0)]
    assert fit_stream_cost(same_length) is None
    assert fit_stream_cost([StreamWindow(10, 190, 80.0)]) is None
    assert fit_stream_cost([StreamWindow(0, 0, 0.0), StreamWindow(10, 190, 80.0)]) is None


def test_windows_mostly_cut_and_negative_terms_give_no_fit() -> None:
    short, long = StreamWindow(100, 1900, 1930.0), StreamWindow(40, 5240, 3908.0)
    cost, note = judge_stream_cost([short, long])
    assert cost is not None and note is None
    mostly_cut = StreamWindow(32, 1520, 3000.0, cut=32)
    cost, note = judge_stream_cost([short, mostly_cut])
    assert cost is None and note is not None and "left out" in note
    cost, note = judge_stream_cost([short, StreamWindow(40, 5240, 100.0)])
    assert cost is None and note is not None and "negative" in note


def test_slope_of_a_line_and_of_too_little() -> None:
    assert slope([(0, 1.0), (10, 3.0), (20, 5.0)]) == 0.2
    assert slope([(5, 1.0)]) is None
    assert slope([(5, 1.0), (5, 2.0)]) is None


def test_flatness_judges_only_the_last_stretch() -> None:
    # grows 1 MB per 10 s for 5 minutes, then steady for 5 minutes
    series = [(float(t), 100.0 + min(t, 300) / 10) for t in range(0, 601, 10)]
    judged = flatness(series, 300)
    assert judged.from_s == 300 and judged.to_s == 600 and judged.samples == 31
    assert judged.flat is True
    assert judged.growth_mb == 0.0
    assert flatness(series, 600).flat is False


def test_flatness_limit_is_the_larger_of_absolute_and_share() -> None:
    def growing(total_mb: float, base: float) -> list[tuple[float, float]]:
        return [(float(t), base + total_mb * t / 300) for t in range(0, 301, 10)]

    small_base = 50.0  # 2 % is 1 MB: the 2 MB floor decides
    assert flatness(growing(1.9, small_base), 300).flat is True
    assert flatness(growing(2.5, small_base), 300).flat is False
    big_base = 500.0  # 2 % is about 10 MB
    assert flatness(growing(9.0, big_base), 300).flat is True
    assert flatness(growing(12.0, big_base), 300).flat is False
    # memory given back is no leak
    assert flatness(growing(-30.0, big_base), 300).flat is True
    assert bench_stats.FLAT_GROWTH_MB == 2.0


def test_flatness_wants_three_samples() -> None:
    assert flatness([], 300).flat is None
    assert flatness([(0.0, 10.0), (10.0, 10.0)], 300).flat is None
