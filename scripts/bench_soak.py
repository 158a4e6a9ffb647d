"""The memory soak of scripts/bench (`--soak MINUTES`): a steady load on Kyma for that long, half
of the connections non-streaming, half streaming, while the RSS of every process of the bench
(core, bridge, upstream, and an idle peer if one runs) is sampled every `interval_s` seconds,
and with it the PSS of core and bridge together (`pair_pss_mb`), which counts the pages they
share once: RSS added up counts every library both map twice.

It reports the series and, for each process and for core + bridge together, the fitted slope
over the last 5 minutes (the last half of a shorter soak) and whether that stretch is flat
(bench_stats.flatness: growing by no more than max(2 MB, 2 %)). The load generator is the
bench's own (bench_client.run_load), closed-loop: the soak runs as fast as the machine lets it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench_client import Result, run_load
from bench_proc import HOST, loadavg, tree_rss_mb, trees_pss_mb
from bench_stats import flatness

JUDGED_S = 300.0  # the target: flat over the soak's last 5 minutes
PAIR = "core+bridge"


async def soak(
    *,
    port: int,
    plain: Sequence[bytes],
    stream: Sequence[bytes],
    processes: dict[str, int],
    minutes: float,
    interval_s: float,
    concurrency: int,
) -> dict[str, Any]:
    duration = minutes * 60.0
    judged = JUDGED_S if duration >= 2 * JUDGED_S else duration / 2
    series: list[dict[str, Any]] = []
    start = time.monotonic()

    def sample() -> None:
        rss = {name: round(tree_rss_mb(pid)[0], 1) for name, pid in processes.items()}
        point: dict[str, Any] = {"t_s": round(time.monotonic() - start, 1), "rss_mb": rss}
        if "core" in rss and "bridge" in rss:
            rss[PAIR] = round(rss["core"] + rss["bridge"], 1)
            point["pair_pss_mb"] = round(trees_pss_mb(processes["core"], processes["bridge"]), 1)
        point["load1"] = loadavg()[0]
        series.append(point)

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            sample()
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass

    print(
        f"bench: soak: {minutes:g} min on Kyma, {concurrency} connections, RSS every "
        f"{interval_s:g}s",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop))
    common = dict(host=HOST, port=port, duration_s=duration, max_requests=10**12, drain_s=30.0)
    try:
        plain_result, stream_result = await asyncio.gather(
            run_load(**common, raw_request=plain, stream=False, concurrency=concurrency // 2),
            run_load(
                **common,
                raw_request=stream,
                stream=True,
                concurrency=concurrency - concurrency // 2,
            ),
        )
    finally:
        stop.set()
        await sampling
    if time.monotonic() - start - series[-1]["t_s"] >= 1.0:
        sample()  # after the load: what is left once it stopped
    return summary(series, judged, minutes, interval_s, concurrency, plain_result, stream_result)


def summary(
    series: list[dict[str, Any]],
    judged_s: float,
    minutes: float,
    interval_s: float,
    concurrency: int,
    plain: Result,
    stream: Result,
) -> dict[str, Any]:
    names = list(series[0]["rss_mb"]) if series else []
    judged = {}
    for name in names:
        points = [(s["t_s"], s["rss_mb"][name]) for s in series if name in s["rss_mb"]]
        judged[name] = asdict(flatness(points, judged_s))
    elapsed = max(plain.elapsed_s, stream.elapsed_s)
    return {
        "minutes": minutes,
        "interval_s": interval_s,
        "concurrency": {"nonstream": concurrency // 2, "stream": concurrency - concurrency // 2},
        "judged_last_s": judged_s,
        "requests": plain.requests + stream.requests,
        "errors": plain.errors + stream.errors,
        "error_samples": (plain.error_samples + stream.error_samples)[:5],
        "rps": (plain.ok + stream.ok) / elapsed if elapsed else 0.0,
        "chunks": stream.chunks,
        "series": series,
        "rss_mb_after": series[-1]["rss_mb"] if series else {},
        "pair_pss_mb_after": series[-1].get("pair_pss_mb") if series else None,
        "flatness": judged,
    }
