"""The arithmetic of scripts/bench, kept free of I/O so a fast test can check it
(tests/scripts/test_bench_stats.py): percentiles, the fixed + per-chunk cost of a stream, the slope
of a memory series and whether it is flat, and ratios that tolerate a missing side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[int] | Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100); NaN when it is empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * q // 100)))
    return float(sorted_values[int(rank) - 1])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing, NaN or the denominator is 0."""
    if numerator is None or denominator is None:
        return None
    if numerator != numerator or denominator != denominator or denominator == 0:
        return None
    return numerator / denominator


def difference(a: float | None, b: float | None) -> float | None:
    """a - b, or None when either is missing or NaN."""
    if a is None or b is None or a != a or b != b:
        return None
    return a - b


@dataclass(frozen=True)
class StreamWindow:
    """What one measured window of streams cost: streams started (finished or not), SSE chunks
    received, and the CPU a process (or a gateway's processes) spent, in milliseconds."""

    streams: int
    chunks: int
    cpu_ms: float
    cut: int = 0  # streams of those cut at the end of the window


@dataclass(frozen=True)
class StreamCost:
    """CPU of one stream = fixed_ms + per_chunk_ms x its chunks."""

    fixed_ms: float
    per_chunk_ms: float
    windows: int


def fit_stream_cost(windows: Sequence[StreamWindow]) -> StreamCost | None:
    """Least-squares fit of cpu = fixed x streams + per_chunk x chunks over the windows, with no
    intercept (a window of no streams costs nothing). Fitting totals rather than per-stream means
    lets windows whose last streams were cut at the deadline count with the chunks they carried.
    None when the windows cannot separate the two terms (fewer than two, or all with the same
    chunks per stream)."""
    usable = [w for w in windows if w.streams > 0]
    if len(usable) < 2:
        return None
    ss = sum(w.streams * w.streams for w in usable)
    sk = sum(w.streams * w.chunks for w in usable)
    kk = sum(w.chunks * w.chunks for w in usable)
    sc = sum(w.streams * w.cpu_ms for w in usable)
    kc = sum(w.chunks * w.cpu_ms for w in usable)
    det = ss * kk - sk * sk
    # Same chunks per stream in every window: streams and chunks are proportional (det ~ 0).
    if det <= 1e-9 * ss * kk:
        return None
    fixed = (sc * kk - kc * sk) / det
    per_chunk = (ss * kc - sk * sc) / det
    return StreamCost(fixed_ms=fixed, per_chunk_ms=per_chunk, windows=len(usable))


# A window whose streams were cut in numbers says little about a stream's cost: what the
# gateway did for them but never delivered is in its CPU, not in its chunks.
MAX_CUT_SHARE = 0.25


def judge_stream_cost(windows: Sequence[StreamWindow]) -> tuple[StreamCost | None, str | None]:
    """fit_stream_cost over the windows that cut at most MAX_CUT_SHARE of their streams, and
    only a fit without a negative term (a sign of noise); otherwise None. The note says what
    was left out or why there is no fit."""
    usable = [w for w in windows if w.streams > 0 and w.cut <= MAX_CUT_SHARE * w.streams]
    note = None
    if len(usable) < len(windows):
        note = f"{len(windows) - len(usable)} window(s) left out: over {MAX_CUT_SHARE:.0%} cut"
    cost = fit_stream_cost(usable)
    if cost is None:
        return None, note or "needs two stream lengths"
    if cost.fixed_ms < 0 or cost.per_chunk_ms < 0:
        return None, "a negative term: the windows are too noisy"
    return cost, note


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y) points; None for fewer than two distinct x."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


# A memory series counts as flat when the fitted growth over the judged stretch stays within
# the larger of these: allocator noise of a Python process is a few MB, and a leak worth
# finding grows steadily past both over minutes of load.
FLAT_GROWTH_MB = 2.0
FLAT_GROWTH_SHARE = 0.02


@dataclass(frozen=True)
class Flatness:
    from_s: float
    to_s: float
    samples: int
    slope_mb_per_min: float | None
    growth_mb: float | None
    mean_mb: float | None
    flat: bool | None


def flatness(series: Sequence[tuple[float, float]], last_s: float) -> Flatness:
    """Judge the samples (seconds, MB) of the last `last_s` seconds of a series (all of it when
    shorter): the fitted slope, the growth it implies over that stretch, and whether it is flat:
    growing by no more than max(FLAT_GROWTH_MB, FLAT_GROWTH_SHARE x the mean) (shrinking is
    flat: memory given back is no leak). flat is None with fewer than three samples in it."""
    if not series:
        return Flatness(0.0, 0.0, 0, None, None, None, None)
    end = series[-1][0]
    start = max(series[0][0], end - last_s)
    stretch = [(t, mb) for t, mb in series if t >= start]
    mean = sum(mb for _, mb in stretch) / len(stretch)
    per_s = slope(stretch)
    if per_s is None or len(stretch) < 3:
        return Flatness(start, end, len(stretch), None, None, mean, None)
    growth = per_s * (end - start)
    limit = max(FLAT_GROWTH_MB, FLAT_GROWTH_SHARE * mean)
    return Flatness(start, end, len(stretch), per_s * 60.0, growth, mean, growth <= limit)
