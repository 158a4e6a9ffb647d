"""The printed report of scripts/bench: markdown tables of the rows, the stream cost fits, Kyma
against its peer, memory, the soak, and (with --database-url / --redis-url) the database's and
Redis's work per request, each followed by what its columns mean. The JSON holds all of it and more.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import bench_db

if TYPE_CHECKING:
    from bench import Row


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:.{digits}f}"


def render(
    rows: Sequence[Row],
    fits: Sequence[dict[str, Any]],
    soak: dict[str, Any] | None,
    args: argparse.Namespace,
    db: bench_db.BenchDatabase | None,
) -> str:
    parts = [load_line(args)]
    if rows:
        parts += ["", main_table(rows), "", *notes_main()]
    streams = [r for r in rows if r.mode != "nonstream"]
    if streams:
        parts += ["", "Streams:", "", stream_table(streams), "", *notes_streams()]
    if fits:
        parts += [
            "",
            "Cost of a stream, fitted: cpu = fixed + per chunk x chunks:",
            "",
            fit_table(fits),
        ]
    if any(r.vs_peer for r in rows):
        parts += ["", "Kyma against its peer, same scenario, same load:", "", peer_table(rows)]
    if rows:
        parts += ["", "Memory after each window (RSS, MB; a process tree counts whole):", ""]
        parts.append(memory_table(rows))
    if soak:
        parts += ["", *soak_report(soak)]
    if db is not None:
        parts += ["", "PostgreSQL per request (Kyma rows):", "", db_table(rows), ""]
        parts += [f"- {note}" for note in db_notes(db, args)]
    if args.redis_url:
        parts += [
            "",
            "Redis per request (Kyma rows; commands run by Lua scripts included):",
            "",
            redis_table(rows),
            "",
            "- Redis CPU = used_cpu_sys + used_cpu_user of the whole server in the window "
            "(other clients' work too: see the last two columns; connections opened counts "
            "everyone's, the bench's INFO connection excluded).",
        ]
    return "\n".join(parts)


def main_table(rows: Sequence[Row]) -> str:
    head = (
        "target",
        "scenario",
        "conc",
        "requests",
        "errors",
        "cut",
        "req/s",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "req/s vs direct",
        "gateway cpu ms/req",
        "core",
        "bridge",
        "upstream cpu ms/req",
        "direct upstream cpu ms/req",
        "gateway ÷ direct upstream",
        "load1",
        "other cores",
    )
    cells = []
    for r in rows:
        cpu = r.cpu_ms_per_req
        cells.append(
            (
                r.target,
                r.scenario,
                str(r.concurrency),
                str(r.requests),
                str(r.errors),
                str(r.cut),
                fmt(r.rps, 1),
                fmt(r.p50_ms),
                fmt(r.p99_ms),
                fmt(r.added_p50_ms),
                fmt(r.rps_ratio, 3),
                fmt(cpu.get("gateway")),
                fmt(cpu.get("core")),
                fmt(cpu.get("bridge")),
                fmt(cpu.get("upstream"), 3),
                fmt(r.upstream_direct_cpu_ms_per_req, 3),
                fmt(r.gateway_per_upstream_cpu, 1),
                fmt(r.loadavg[0]),
                fmt(r.foreign_cpu_cores),
            )
        )
    return markdown(head, cells)


def notes_main() -> list[str]:
    return [
        "- cpu ms/req = CPU time (utime + stime, /proc) of the process trees in the window ÷ the "
        "requests started; gateway = the target's own processes (Kyma: core + bridge). cut = "
        "requests still running when the window's drain time ran out (counted in requests, not "
        "in latencies).",
        "- direct upstream cpu ms/req = the test upstream's own CPU per request in the direct row "
        "of the same scenario: the yardstick to compare machines by (gateway ÷ direct upstream).",
        "- load1 = the 1-minute load average when the window began; other cores = CPU used in the "
        "window by processes other than the bench's (its children, idle or not, and the load "
        "generator excluded), in cores: above ~0.2 the row is noisy.",
    ]


def stream_table(rows: Sequence[Row]) -> str:
    head = (
        "target",
        "scenario",
        "conc",
        "streams",
        "chunks",
        "chunks/s",
        "gateway cpu ms/chunk",
        "direct upstream cpu ms/chunk",
        "ttft p50 ms",
        "ttft p99 ms",
        "added ttft p50",
        "added ttft p99",
        "gap p50 ms",
        "gap p99 ms",
        "added gap p50",
        "added gap p99",
        "gap max ms",
    )
    cells = []
    for r in rows:
        cells.append(
            (
                r.target,
                r.scenario,
                str(r.concurrency),
                str(r.requests),
                str(r.chunks),
                fmt(r.chunks_per_s, 0),
                fmt(r.cpu_ms_per_chunk.get("gateway"), 3),
                fmt(r.upstream_direct_cpu_ms_per_chunk, 3),
                fmt(r.ttft_p50_ms),
                fmt(r.ttft_p99_ms),
                fmt(r.added_ttft_p50_ms),
                fmt(r.added_ttft_p99_ms),
                fmt(r.gap_p50_ms),
                fmt(r.gap_p99_ms),
                fmt(r.added_gap_p50_ms),
                fmt(r.added_gap_p99_ms),
                fmt(r.gap_max_ms),
            )
        )
    return markdown(head, cells)


def notes_streams() -> list[str]:
    return [
        "- chunks = SSE events received ([DONE] not counted); cpu ms/chunk = the window's CPU ÷ "
        "them (fixed costs per stream included: see the fit below).",
        "- ttft = time from sending the request to the first chunk with non-empty content; gap = "
        "time between consecutive chunks of a stream as the client read them (chunks that came "
        "in one read: 0). added = this row's minus the direct row's, same scenario.",
        "- A row with many cut streams (a gateway that cannot keep up) spent CPU on chunks it never "
        "delivered: its cpu per chunk is high, and the fit below leaves such windows out.",
    ]


def fit_table(fits: Sequence[dict[str, Any]]) -> str:
    head = ("target", "cpu of", "conc", "lengths (tokens)", "fixed ms/stream", "ms/chunk", "note")
    cells = [
        (
            f["target"],
            f["process"],
            str(f["concurrency"]),
            ",".join(str(n) for n in f["lengths"]),
            fmt(f["fixed_ms_per_stream"]),
            fmt(f["cpu_ms_per_chunk"], 4),
            f["note"] or "",
        )
        for f in fits
    ]
    return markdown(head, cells)


def peer_table(rows: Sequence[Row]) -> str:
    peers = sorted({peer for r in rows for peer in r.vs_peer})
    head = (
        "scenario",
        "conc",
        "peer",
        "kyma cpu ms/req",
        "peer cpu ms/req",
        "peer ÷ kyma cpu",
        "kyma req/s",
        "peer req/s",
        "kyma ÷ peer req/s",
        "peer ÷ kyma cpu/chunk",
    )
    by_key = {(r.target, r.scenario, r.concurrency): r for r in rows}
    cells = []
    for r in rows:
        if r.target != "kyma":
            continue
        for peer in peers:
            vs = r.vs_peer.get(peer)
            other = by_key.get((peer, r.scenario, r.concurrency))
            if vs is None or other is None:
                continue
            cells.append(
                (
                    r.scenario,
                    str(r.concurrency),
                    peer,
                    fmt(r.cpu_ms_per_req.get("gateway")),
                    fmt(other.cpu_ms_per_req.get("gateway")),
                    fmt(vs["cpu_ratio"], 1),
                    fmt(r.rps, 1),
                    fmt(other.rps, 1),
                    fmt(vs["rps_ratio"], 1),
                    fmt(vs["cpu_per_chunk_ratio"], 1),
                )
            )
    return markdown(head, cells, text_columns=3)


def memory_table(rows: Sequence[Row]) -> str:
    names = list(dict.fromkeys(name for r in rows for name in r.rss_mb))
    head = ("target", "scenario", "conc", *names)
    cells = [
        (r.target, r.scenario, str(r.concurrency), *(fmt(r.rss_mb.get(n), 1) for n in names))
        for r in rows
    ]
    return markdown(head, cells, text_columns=2)


def soak_report(soak: dict[str, Any]) -> list[str]:
    series = soak["series"]
    names = list(series[0]["rss_mb"]) if series else []
    lines = [
        f"Soak: {soak['minutes']:g} min on Kyma, {soak['concurrency']['nonstream']} non-streaming "
        f"+ {soak['concurrency']['stream']} streaming connections: {soak['requests']} requests "
        f"({soak['rps']:.1f}/s), {soak['errors']} errors. RSS (MB) every {soak['interval_s']:g}s:",
        "",
        markdown(
            ("t s", *names, "core+bridge PSS", "load1"),
            [
                (
                    fmt(s["t_s"], 0),
                    *(fmt(s["rss_mb"].get(n), 1) for n in names),
                    fmt(s.get("pair_pss_mb"), 1),
                    fmt(s["load1"]),
                )
                for s in series
            ],
            text_columns=0,
        ),
        "",
        f"Over the last {soak['judged_last_s']:g} s (flat = growing by at most max(2 MB, 2 %)):",
        "",
    ]
    judged = soak["flatness"]
    lines.append(
        markdown(
            ("process", "samples", "mean MB", "slope MB/min", "growth MB", "flat"),
            [
                (
                    name,
                    str(j["samples"]),
                    fmt(j["mean_mb"], 1),
                    fmt(j["slope_mb_per_min"], 3),
                    fmt(j["growth_mb"], 2),
                    "–" if j["flat"] is None else ("yes" if j["flat"] else "NO"),
                )
                for name, j in judged.items()
            ],
            text_columns=1,
        )
    )
    return lines


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 2) -> str:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(head))) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def db_table(rows: Sequence[Row]) -> str:
    """PostgreSQL's work per request in the Kyma rows (--database-url)."""
    head = (
        "scenario",
        "conc",
        "accounts",
        "requests",
        "req/s",
        "xact/req",
        "commits/req",
        "rollbacks/req",
        "write xact/req",
        "rows written/req",
        "WAL bytes/req",
        "request-log bytes/req",
        "statements/req",
        "pg cpu ms/req",
        "gateway+pg cpu ms/req",
        "idle xact/s",
        "other-db xact",
    )
    cells = []
    for r in rows:
        if r.target != "kyma" or not r.db:
            continue
        per = r.db["per_request"]
        cells.append(
            (
                r.scenario,
                str(r.concurrency),
                str(r.accounts),
                str(r.requests),
                fmt(r.rps, 1),
                fmt(per["transactions"]),
                fmt(per["commits"]),
                fmt(per["rollbacks"]),
                fmt(per["write_transactions"]),
                fmt(per["rows_written"]),
                fmt(per["wal_bytes"], 0)
                + ("" if r.db["wal_source"].startswith("pg_walinspect") else " (server)"),
                fmt(per.get("request_log_bytes"), 0),
                fmt(per["statements"]),
                fmt(r.cpu_ms_per_req.get("postgres")),
                fmt(r.cpu_ms_per_req.get("gateway_and_postgres")),
                fmt(r.db.get("background_xacts_per_s")),
                str(r.db["other_databases_xacts"]),
            )
        )
    return markdown(head, cells)


def redis_table(rows: Sequence[Row]) -> str:
    """Redis's work per request in the Kyma rows (--redis-url)."""
    head = (
        "scenario",
        "conc",
        "accounts",
        "requests",
        "req/s",
        "redis commands/req",
        "scripts/req",
        "redis cpu us/req",
        "top commands (total)",
        "other clients active",
        "connections opened",
    )
    cells = []
    for r in rows:
        if r.target != "kyma" or not r.redis:
            continue
        per = r.redis["per_request"]
        top = ", ".join(f"{k} {v}" for k, v in list(r.redis["commands_by_name"].items())[:4])
        cells.append(
            (
                r.scenario,
                str(r.concurrency),
                str(r.accounts),
                str(r.requests),
                fmt(r.rps, 1),
                fmt(per["commands"]),
                fmt(per["scripts"]),
                fmt(per["cpu_us"], 1),
                top or "–",
                str(len(r.redis["other_clients_active"])),
                str(r.redis["connections_received"]),
            )
        )
    return markdown(head, cells)


def load_line(args: argparse.Namespace) -> str:
    if args.accounts == 1:
        who = "every request of a scenario comes from ONE account (one API key on all connections)"
    else:
        who = (
            f"requests come from {args.accounts} accounts (connection i uses account i mod "
            f"{args.accounts})"
        )
    return f"Load: {who}."


def db_notes(db: bench_db.BenchDatabase, args: argparse.Namespace) -> list[str]:
    return [
        f"PostgreSQL {db.server_version}, fresh database {db.name} in {bench_db.redact(db.admin_url)}; "
        f"counters read {args.pg_stats_wait:g} s after Kyma went idle (PostgreSQL's statistics "
        "flush delay), so the database window is the load window plus that wait.",
        "xact = commits + rollbacks in the bench database (pg_stat_database); write xact = "
        "transactions that wrote WAL in it; rows written = rows inserted + updated + deleted; "
        f"WAL: {db.walinspect_note or 'whole server'} (a value marked (server) is the whole "
        f"server's: pg_walinspect could not read that window); statements: {db.statements_note}.",
        "pg cpu = CPU of the PostgreSQL processes serving the bench database (backends, "
        "autovacuum; not the WAL writer, checkpointer or other shared processes), in the load "
        "window like the core's; gateway+pg is comparable with SQLite's gateway cpu, where the "
        "database's work is in the core.",
        "idle xact/s = the core's own database transactions per second while only the direct "
        "upstream was loaded; other-db xact = transactions of other databases of the server in "
        "the window (other users: server-wide numbers are noisy when it is large).",
        *db.notes,
    ]
