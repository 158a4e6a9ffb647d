"""The sizing guide's tables from a bench run: what one request costs, measured, and what a
given rate of requests needs, derived from it.

    ./scripts/bench --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 --accounts 64 --concurrency 32 \\
        --modes nonstream,stream --json docs/sizing-bench.json
    .venv/bin/python scripts/sizing.py docs/sizing-bench.json --update docs/sizing.md

`--update FILE` replaces what stands between `<!-- sizing:begin -->` and `<!-- sizing:end -->`
in FILE; without it the tables are printed. The derivation (docs/sizing.md says why):
processes at `UTILISATION` of one CPU each (Kyma's processes are single-threaded event loops
until KYMA_WORKERS); Redis on its one thread; PostgreSQL's numbers as rates.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
from typing import Any

RATES = (100, 1_000, 3_000, 10_000)  # requests per second
UTILISATION = 0.7  # of a CPU, the most a process is planned to use (headroom for bursts)
CONNECTIONS_PER_CORE = 10 + 10 + 2  # pool + overflow (the defaults) + writer + log batch
SECONDS_PER_DAY = 86_400
RETENTION_DAYS = 90  # KYMA_LOG_RETENTION_DAYS' default
BEGIN, END = "<!-- sizing:begin -->", "<!-- sizing:end -->"


def _rows(bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {r["mode"]: r for r in bench["rows"] if r["target"] == "kyma" and r.get("db")}
    if not rows:
        raise SystemExit(
            "sizing: no Kyma row with database figures (run the bench with --database-url)"
        )
    return rows


def per_request(row: dict[str, Any]) -> dict[str, float]:
    """One request's costs, as the bench measured them."""
    db, redis, cpu = (
        row["db"]["per_request"],
        (row.get("redis") or {}).get("per_request", {}),
        row["cpu_ms_per_req"],
    )
    return {
        "core_cpu_ms": cpu["core"],
        "bridge_cpu_ms": cpu["bridge"],
        "pg_cpu_ms": cpu.get("postgres") or 0.0,
        "pg_transactions": db["transactions"],
        "pg_statements": db["statements"] if db["statements"] is not None else math.nan,
        "pg_wal_bytes": db["wal_bytes"],
        "request_log_bytes": db.get("request_log_bytes", math.nan),
        "redis_commands": redis.get("commands", math.nan),
        "redis_cpu_us": redis.get("cpu_us", math.nan),
    }


def _n(value: float, digits: int = 2) -> str:
    if value != value:  # NaN: not measured in this run
        return "–"
    return f"{value:,.{digits}f}"


def measured_table(bench: dict[str, Any]) -> str:
    machine = bench["machine"]
    lines = [
        f"Measured {bench['timestamp'][:16].replace('T', ' ')} UTC at commit {bench['git']}, on "
        f"{machine['cpus']} CPUs with a load average of {machine['loadavg_at_start'][0]:.1f} at "
        f"the start and {machine['loadavg_at_end'][0]:.1f} at the end, by:",
        "",
        f"    {bench['command']}",
        "",
        "| per request | core CPU ms | bridge CPU ms | PostgreSQL CPU ms | transactions | statements "
        "| WAL bytes | request-log bytes | Redis commands | Redis CPU µs | req/s reached |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, row in _rows(bench).items():
        cost = per_request(row)
        name = {"nonstream": "chat completion", "stream": "streamed chat completion"}.get(
            mode, mode
        )
        lines.append(
            f"| {name} | {_n(cost['core_cpu_ms'])} | {_n(cost['bridge_cpu_ms'])} | "
            f"{_n(cost['pg_cpu_ms'])} | {_n(cost['pg_transactions'])} | "
            f"{_n(cost['pg_statements'])} | {_n(cost['pg_wal_bytes'], 0)} | "
            f"{_n(cost['request_log_bytes'], 0)} | {_n(cost['redis_commands'], 1)} | "
            f"{_n(cost['redis_cpu_us'], 0)} | {_n(row['rps'], 0)} |"
        )
    return "\n".join(lines)


def needs(cost: dict[str, float], rate: int) -> dict[str, float]:
    """What `rate` requests per second of this kind need."""
    return {
        "cores": math.ceil(rate * cost["core_cpu_ms"] / 1000 / UTILISATION),
        "bridges": math.ceil(rate * cost["bridge_cpu_ms"] / 1000 / UTILISATION),
        "pg_cpus": rate * cost["pg_cpu_ms"] / 1000,
        "pg_transactions": rate * cost["pg_transactions"],
        "pg_statements": rate * cost["pg_statements"],
        "wal_mb_s": rate * cost["pg_wal_bytes"] / 1e6,
        "log_gb_day": rate * cost["request_log_bytes"] * SECONDS_PER_DAY / 1e9,
        "redis_commands": rate * cost["redis_commands"],
        "redis_thread": rate * cost["redis_cpu_us"] / 1e6,
    }


def derived_table(bench: dict[str, Any], mode: str) -> str:
    cost = per_request(_rows(bench)[mode])
    lines = [
        "| requests/s | core processes | bridge processes | PostgreSQL connections (direct) "
        "| PostgreSQL CPUs | transactions/s | statements/s | WAL MB/s | request log GB/day "
        f"(× {RETENTION_DAYS} days kept) | Redis commands/s | Redis's one thread |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rate in RATES:
        need = needs(cost, rate)
        cores = max(2, int(need["cores"]))
        lines.append(
            f"| {rate:,} | {cores} | {max(2, int(need['bridges']))} | "
            f"{cores * CONNECTIONS_PER_CORE:,} | {_n(need['pg_cpus'], 1)} | "
            f"{_n(need['pg_transactions'], 0)} | {_n(need['pg_statements'], 0)} | "
            f"{_n(need['wal_mb_s'], 1)} | {_n(need['log_gb_day'], 0)} "
            f"({_n(need['log_gb_day'] * RETENTION_DAYS / 1000, 1)} TB) | "
            f"{_n(need['redis_commands'], 0)} | {_n(100 * need['redis_thread'], 0)}% |"
        )
    one_core = 1000 * UTILISATION / cost["core_cpu_ms"]
    one_bridge = 1000 * UTILISATION / cost["bridge_cpu_ms"]
    one_redis = (
        1e6 / cost["redis_cpu_us"] if cost["redis_cpu_us"] == cost["redis_cpu_us"] else math.nan
    )
    lines += [
        "",
        f"One core process serves {_n(one_core, 0)} of these requests a second at "
        f"{UTILISATION:.0%} of a CPU, one bridge {_n(one_bridge, 0)}; Redis's one thread "
        f"saturates at {_n(one_redis, 0)}.",
    ]
    return "\n".join(lines)


def tables(bench: dict[str, Any]) -> str:
    rows = _rows(bench)
    parts = ["### Measured", "", measured_table(bench)]
    for mode in rows:
        title = {"nonstream": "chat completions", "stream": "streamed chat completions"}.get(
            mode, mode
        )
        parts += ["", f"### Derived: {title}", "", derived_table(bench, mode)]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_json", type=pathlib.Path)
    parser.add_argument("--update", type=pathlib.Path, help="rewrite the tables in this file")
    args = parser.parse_args(argv)
    text = tables(json.loads(args.bench_json.read_text()))
    if args.update is None:
        print(text)
        return 0
    document = args.update.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(document):
        raise SystemExit(f"sizing: {args.update} has no {BEGIN} … {END} section")
    args.update.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", document))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
