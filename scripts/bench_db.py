"""PostgreSQL and Redis for scripts/bench: a fresh PostgreSQL database per run, and what the
database and Redis did per request, from counters read before and after each scenario.

PostgreSQL (`--database-url`, an admin URL): `create_database` makes ``kyma_bench_<random>`` in
that server and `drop_database` drops it at the end. Around each window `PostgresProbe` reads:

- ``pg_stat_database`` of the bench database (commits, rollbacks, rows inserted/updated/deleted,
  ...). These counters are not live: a backend adds its counts to them when it flushes its
  pending statistics, at most once a second while busy; on PostgreSQL 15 a backend that goes idle
  with counts pending flushes them only when its idle timer fires, 10 s later (measured: the last
  second of a busy connection appeared 9.8 s after it went idle). So each read waits `stats_wait`
  (default 11 s) after Kyma went idle; the bench's own connections call
  ``pg_stat_force_next_flush()`` and ``pg_stat_clear_snapshot()``. A transaction that touches no
  table (SQLAlchemy's pre-ping ``SELECT 1``) is counted only at the backend's next flush that has
  table counts too, so at window edges a handful can land on the neighbouring window.
- ``pg_current_wal_lsn()``: WAL bytes written by the whole server (other databases too). With the
  extension ``pg_walinspect`` (PostgreSQL 15 contrib) the WAL records between the two positions
  are also attributed to the bench database: records with a block in it, and every record of a
  transaction that has one (its commit record); that also counts its writing transactions. A
  temporary replication slot of the inspecting connection keeps the window's WAL from being
  recycled by a checkpoint before it is read (advanced after each window; it goes away with the
  connection, also if the bench dies).
- ``pg_stat_statements`` (statements executed), if the server loads it (it needs
  ``shared_preload_libraries``; ``CREATE EXTENSION`` alone is not enough: then it is reported as
  unavailable, with PostgreSQL's reason).
- Optionally the server's log file (``pg_log``): errors of the bench database, and with
  ``count_statements`` the statements it ran (``log_statement = 'all'`` is set for the bench
  database only; logging every statement costs PostgreSQL CPU, so such runs are a little slower).
- The transactions of all other databases in the window: other users of the server make the
  server-wide numbers (WAL without pg_walinspect, PostgreSQL's CPU) noisy.

When the server runs on this machine, `BackendCpu` also sums the CPU time (from /proc) of the
server processes working for the bench database (its backends and autovacuum workers, found by
their process titles), sampled through the window so that backends which exit are counted up to
their last sample: with PostgreSQL the database's work is not in the core's CPU as it is with
SQLite.

Redis (`--redis-url`): `RedisProbe` reads ``INFO commandstats`` (commands executed, those run by
Lua scripts included, without the bench's own INFO/CLIENT calls) and ``INFO cpu``
(used_cpu_sys + used_cpu_user of the server) before and after a window, and lists the clients
other than the core's connections and its own that were active in the window.

The bench's own queries carry the marker comment ``/* kyma-bench */`` and are left out of the
statement counts.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio

MARK = "/* kyma-bench */"
PG_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "tup_returned",
    "tup_fetched",
    "blks_read",
    "blks_hit",
    "conflicts",
    "deadlocks",
    "temp_bytes",
)
DEFAULT_STATS_WAIT_S = 11.0


# --- PostgreSQL: the bench database ---------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead of its own."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def redact(url: str) -> str:
    """`url` without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _pg_dsn(url: str) -> str:
    """A URL asyncpg accepts (SQLAlchemy spellings such as postgresql+asyncpg:// too)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise ValueError(f"--database-url must be a postgresql:// URL, not {redact(url)!r}")
    return "postgresql://" + rest


@dataclass
class BenchDatabase:
    """The database made for one bench run, and what its server offers for measuring it."""

    admin_url: str
    name: str
    url: str
    oid: int
    server_version: str
    server_version_num: int
    force_flush: bool  # pg_stat_force_next_flush() exists (PostgreSQL 15+)
    statements_source: str | None  # "pg_stat_statements", "server log" or None
    statements_note: str
    walinspect: bool
    walinspect_note: str
    pg_log: str | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "admin_url": redact(self.admin_url),
            "database": self.name,
            "server_version": self.server_version,
            "statements_source": self.statements_source,
            "statements_note": self.statements_note,
            "pg_walinspect": self.walinspect,
            "pg_walinspect_note": self.walinspect_note,
            "pg_log": self.pg_log,
            "notes": self.notes,
        }


async def _create(admin_url: str, pg_log: str | None, count_statements: bool) -> BenchDatabase:
    admin = await asyncpg.connect(_pg_dsn(admin_url))
    try:
        name = f"kyma_bench_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        oid = await admin.fetchval("SELECT oid FROM pg_database WHERE datname = $1", name)
        version = await admin.fetchval("SHOW server_version")
        version_num = int(await admin.fetchval("SHOW server_version_num"))
        force_flush = bool(
            await admin.fetchval("SELECT to_regproc('pg_stat_force_next_flush') IS NOT NULL")
        )
        if count_statements:
            await admin.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    conn = await asyncpg.connect(_pg_dsn(url))
    try:
        statements_source, statements_note = None, ""
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.fetchval(f"{MARK} SELECT count(*) FROM pg_stat_statements")
            statements_source = "pg_stat_statements"
            statements_note = "pg_stat_statements (sum of calls in the bench database)"
        except asyncpg.PostgresError as error:
            statements_note = f"pg_stat_statements unavailable: {error}"
            try:
                await conn.execute("DROP EXTENSION IF EXISTS pg_stat_statements")
            except asyncpg.PostgresError:
                pass
        if statements_source is None and count_statements and pg_log:
            statements_source = "server log"
            statements_note += (
                f"; counted from the server log {pg_log} (log_statement = 'all' for the bench "
                "database: its own cost is in these runs)"
            )
        walinspect, walinspect_note = False, ""
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            walinspect = True
            walinspect_note = "WAL of the bench database from pg_walinspect"
        except asyncpg.PostgresError as error:
            walinspect_note = f"pg_walinspect unavailable ({error}): WAL is the whole server's"
    finally:
        await conn.close()
    return BenchDatabase(
        admin_url=admin_url,
        name=name,
        url=url,
        oid=oid,
        server_version=version,
        server_version_num=version_num,
        force_flush=force_flush,
        statements_source=statements_source,
        statements_note=statements_note,
        walinspect=walinspect,
        walinspect_note=walinspect_note,
        pg_log=pg_log,
    )


def create_database(
    admin_url: str, *, pg_log: str | None = None, count_statements: bool = False
) -> BenchDatabase:
    """Make a fresh database for the run (its own event loop: call it outside the bench's)."""
    return asyncio.run(_create(admin_url, pg_log, count_statements))


async def _drop(db: BenchDatabase) -> None:
    admin = await asyncpg.connect(_pg_dsn(db.admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        await admin.close()


def drop_database(db: BenchDatabase) -> None:
    asyncio.run(_drop(db))


# --- PostgreSQL: counters around a window ---------------------------------------------------


_STAT_QUERY = (
    f"{MARK} SELECT datname, "
    + ", ".join(PG_COUNTERS)
    + ", pg_current_wal_lsn()::text AS lsn FROM pg_stat_database WHERE datname IS NOT NULL"
)


class PostgresProbe:
    """Two connections: `reader` to the admin database (its reads are not the bench database's
    transactions), `inspector` to the bench database (pg_stat_statements, pg_walinspect)."""

    def __init__(self, db: BenchDatabase, stats_wait: float) -> None:
        self.db = db
        self.stats_wait = stats_wait
        self.reader: asyncpg.Connection | None = None
        self.inspector: asyncpg.Connection | None = None
        self.slot: str | None = None

    async def open(self) -> None:
        self.reader = await asyncpg.connect(_pg_dsn(self.db.admin_url))
        # No caching of statistics within a transaction: every read is fresh.
        await self.reader.execute("SET stats_fetch_consistency = none")
        self.inspector = await asyncpg.connect(_pg_dsn(self.db.url))
        if self.db.walinspect:
            self.slot = self.db.name  # a valid slot name too: lower case letters, digits, "_"
            await self._ensure_slot()

    async def _ensure_slot(self) -> None:
        """The inspector's temporary replication slot, made again if an error released it."""
        assert self.inspector is not None
        if not self.slot:
            return
        try:
            exists = await self.inspector.fetchval(
                f"{MARK} SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", self.slot
            )
            if not exists:
                await self.inspector.execute(
                    f"{MARK} SELECT pg_create_physical_replication_slot($1, true, true)", self.slot
                )
        except asyncpg.PostgresError as error:
            self.db.notes.append(
                f"no temporary replication slot ({error}): a checkpoint may recycle a "
                "window's WAL before pg_walinspect reads it (then WAL is the server's)"
            )
            self.slot = None

    async def close(self) -> None:
        for conn in (self.reader, self.inspector):
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except (TimeoutError, OSError, asyncpg.PostgresError):
                    conn.terminate()
        self.reader = self.inspector = None

    def backend_cpu(self) -> BackendCpu:
        assert self.inspector is not None
        return BackendCpu(self.db.name, exclude=[self.inspector.get_server_pid()])

    async def _flush_own(self, conn: asyncpg.Connection) -> None:
        if self.db.force_flush:
            await conn.execute(f"{MARK} SELECT pg_stat_force_next_flush()")

    async def snapshot(self) -> dict[str, Any]:
        """The counters once every backend has flushed its statistics (see the module
        docstring): waits `stats_wait` seconds first."""
        assert self.reader is not None and self.inspector is not None
        await self._ensure_slot()
        statements = None
        if self.db.statements_source == "pg_stat_statements":
            statements = await self.inspector.fetchval(
                f"{MARK} SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements "
                "WHERE dbid = $1 AND query NOT LIKE $2",
                self.db.oid,
                f"%{MARK}%",
            )
        await self._flush_own(self.inspector)
        await asyncio.sleep(self.stats_wait)
        await self.reader.execute(f"{MARK} SELECT pg_stat_clear_snapshot()")
        rows = await self.reader.fetch(_STAT_QUERY)
        await self._flush_own(self.reader)
        ours: dict[str, int] = {}
        others: dict[str, int] = {}
        lsn = ""
        for row in rows:
            lsn = row["lsn"]
            if row["datname"] == self.db.name:
                ours = {name: int(row[name] or 0) for name in PG_COUNTERS}
            else:
                others[row["datname"]] = int(row["xact_commit"] or 0) + int(
                    row["xact_rollback"] or 0
                )
        # What the request log holds, every partition with its TOAST and indexes.
        request_log_bytes = await self.inspector.fetchval(
            f"{MARK} SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint "
            "FROM pg_inherits i WHERE i.inhparent = to_regclass('request_logs')"
        )
        log_offset = None
        if self.db.pg_log:
            try:
                log_offset = os.path.getsize(self.db.pg_log)
            except OSError:
                log_offset = None
        return {
            "t": time.monotonic(),
            "counters": ours,
            "others_xacts": others,
            "lsn": lsn,
            "statements": statements,
            "log_offset": log_offset,
            "request_log_bytes": int(request_log_bytes or 0),
        }

    async def _wal_of_database(self, start: str, end: str) -> dict[str, int] | None:
        assert self.inspector is not None
        if not self.db.walinspect:
            return None
        block = rf"rel \d+/{self.db.oid}/"
        zero = {"bytes": 0, "fpi_bytes": 0, "records": 0, "write_xacts": 0}
        # (an error would also release the temporary slot: no query for an empty range)
        if await self.inspector.fetchval(
            f"{MARK} SELECT $2::text::pg_lsn <= $1::text::pg_lsn", start, end
        ):
            return zero
        try:
            row = await self.inspector.fetchrow(
                f"""{MARK}
                WITH r AS (
                    SELECT xid::text::bigint AS xid, record_length, fpi_length, block_ref
                    FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)
                ), ours AS (
                    SELECT DISTINCT xid FROM r WHERE xid <> 0 AND block_ref ~ $3
                )
                SELECT coalesce(sum(record_length), 0)::bigint AS bytes,
                       coalesce(sum(fpi_length), 0)::bigint AS fpi_bytes,
                       count(*) AS records,
                       (SELECT count(*) FROM ours) AS write_xacts
                FROM r
                WHERE block_ref ~ $3 OR (xid <> 0 AND xid IN (SELECT xid FROM ours))
                """,
                start,
                end,
                block,
            )
        except asyncpg.PostgresError as error:
            self.db.notes.append(f"pg_walinspect failed for {start}..{end}: {error}")
            return None
        finally:
            if self.slot:
                try:  # release the WAL read
                    await self.inspector.execute(
                        f"{MARK} SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                        self.slot,
                        end,
                    )
                except asyncpg.PostgresError as error:
                    self.db.notes.append(f"could not advance the replication slot: {error}")
            await self._flush_own(self.inspector)
        return {k: int(row[k]) for k in ("bytes", "fpi_bytes", "records", "write_xacts")}

    def _read_log(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
        path, start, end = self.db.pg_log, before["log_offset"], after["log_offset"]
        if not path or start is None or end is None:
            return None
        if end < start:  # rotated
            return {"note": "server log rotated during the window"}
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read(end - start)
        name = re.escape(self.db.name.encode())
        statements = 0
        errors: list[str] = []
        for line in text.splitlines():
            if not re.search(rb"@" + name + rb" ", line) or MARK.encode() in line:
                continue
            if re.search(rb" LOG:  (?:statement|execute [^:]*): ", line):
                statements += 1
            elif re.search(rb" (?:ERROR|FATAL|PANIC|WARNING):  ", line):
                errors.append(line.decode(errors="replace")[:300])
        return {"statements": statements, "errors": len(errors), "error_samples": errors[:5]}

    async def measure(
        self, before: dict[str, Any], after: dict[str, Any], requests: int
    ) -> dict[str, Any]:
        """What the bench database did between two snapshots, in total and per request."""
        assert self.reader is not None
        delta = {k: after["counters"].get(k, 0) - before["counters"].get(k, 0) for k in PG_COUNTERS}
        wal_cluster = int(
            await self.reader.fetchval(
                f"{MARK} SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::bigint",
                after["lsn"],
                before["lsn"],
            )
        )
        wal_db = await self._wal_of_database(before["lsn"], after["lsn"])
        log = self._read_log(before, after)
        statements = None
        if self.db.statements_source == "pg_stat_statements":
            statements = after["statements"] - before["statements"]
        elif self.db.statements_source == "server log" and log and "statements" in log:
            statements = log["statements"]
        n = max(requests, 1)
        transactions = delta["xact_commit"] + delta["xact_rollback"]
        rows_written = delta["tup_inserted"] + delta["tup_updated"] + delta["tup_deleted"]
        wal = wal_db["bytes"] if wal_db else wal_cluster
        per_request = {
            "transactions": transactions / n,
            "commits": delta["xact_commit"] / n,
            "rollbacks": delta["xact_rollback"] / n,
            "write_transactions": wal_db["write_xacts"] / n if wal_db else None,
            "rows_written": rows_written / n,
            "rows_inserted": delta["tup_inserted"] / n,
            "rows_updated": delta["tup_updated"] / n,
            "rows_deleted": delta["tup_deleted"] / n,
            "wal_bytes": wal / n,
            "wal_bytes_server": wal_cluster / n,
            "statements": statements / n if statements is not None else None,
            "blocks_hit": delta["blks_hit"] / n,
            "blocks_read": delta["blks_read"] / n,
            # Growth of the request-log tables (8 kB pages: meaningful over many requests).
            "request_log_bytes": (after["request_log_bytes"] - before["request_log_bytes"]) / n,
        }
        return {
            "window_s": after["t"] - before["t"],
            "delta": {
                **delta,
                "wal_bytes_server": wal_cluster,
                "wal_bytes_database": wal_db["bytes"] if wal_db else None,
                "wal_fpi_bytes_database": wal_db["fpi_bytes"] if wal_db else None,
                "wal_records_database": wal_db["records"] if wal_db else None,
                "write_transactions": wal_db["write_xacts"] if wal_db else None,
                "statements": statements,
            },
            "wal_source": "pg_walinspect (bench database)" if wal_db else "server (all databases)",
            "statements_source": self.db.statements_source if statements is not None else None,
            # databases made in the window count whole, dropped ones not at all
            "other_databases_xacts": sum(
                count - before["others_xacts"].get(name, 0)
                for name, count in after["others_xacts"].items()
            ),
            "server_log": log,
            "per_request": per_request,
        }


# --- PostgreSQL: CPU of the bench database's server processes ------------------------------


def _ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


class BackendCpu:
    """CPU ticks of the local PostgreSQL processes whose title names database `name` (backends:
    "postgres: ... user name host(port) state"; "autovacuum worker name"), but `exclude`."""

    def __init__(self, name: str, exclude: Iterable[int] = ()) -> None:
        self.pattern = re.compile(rb"^postgres: .*[ ]" + re.escape(name.encode()) + rb"(?: |$)")
        self.exclude = set(exclude)
        self.base: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.started = False

    def _pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in self.exclude:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read().rstrip(b"\0")
            except OSError:
                continue
            if self.pattern.match(title):
                pids.append(int(entry))
        return pids

    def sample(self) -> None:
        for pid in self._pids():
            ticks = _ticks(pid)
            if ticks is None:
                continue
            # a process seen first at the start counts from there, one born later from 0
            self.base.setdefault(pid, ticks if not self.started else 0)
            self.last[pid] = ticks
        self.started = True

    def total(self) -> tuple[int, int]:
        """(ticks used since the first sample, processes seen)."""
        return sum(self.last[pid] - self.base[pid] for pid in self.last), len(self.last)

    async def run(self, stop: asyncio.Event, every: float = 0.25) -> None:
        while not stop.is_set():
            self.sample()
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
        self.sample()


# --- Redis ----------------------------------------------------------------------------------


def _own_commands(name: str) -> bool:
    """Commands the bench itself sends (INFO, CLIENT ...) or a client sends on connecting."""
    return name in ("info", "hello") or name.startswith("client|")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def local_tcp_ports(pids: Iterable[int]) -> set[int]:
    """Local ports of the TCP sockets the processes `pids` hold."""
    inodes: set[str] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


class RedisProbe:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client: redis.asyncio.Redis | None = None
        self.own_id: int | None = None

    async def open(self) -> None:
        self.client = redis.asyncio.Redis.from_url(self.url)
        self.own_id = int(await self.client.client_id())

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def snapshot(self) -> dict[str, Any]:
        assert self.client is not None
        stats = await self.client.info("commandstats")
        cpu = await self.client.info("cpu")
        server = await self.client.info("stats")
        calls = {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in stats.items()
            if key.startswith("cmdstat_")
        }
        return {
            "t": time.monotonic(),
            "calls": calls,
            "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "connections_received": int(server.get("total_connections_received", 0)),
        }

    async def other_clients(self, ours: set[int], window_s: float) -> list[str]:
        """Clients other than the core's connections (local ports `ours`) and the bench's own
        that ran a command during the last `window_s` seconds."""
        assert self.client is not None
        active = []
        for client in await self.client.client_list():
            if int(client.get("id", -1)) == self.own_id:
                continue
            addr = str(client.get("addr", ""))
            port = int(addr.rsplit(":", 1)[1]) if ":" in addr else -1
            if port in ours:
                continue
            if int(client.get("idle", 10**9)) <= window_s:
                active.append(f"{addr} (last command {client.get('cmd')})")
        return active

    @staticmethod
    def measure(
        before: dict[str, Any], after: dict[str, Any], requests: int, other_clients: list[str]
    ) -> dict[str, Any]:
        calls = {
            name: count - before["calls"].get(name, 0)
            for name, count in after["calls"].items()
            if not _own_commands(name) and count - before["calls"].get(name, 0) > 0
        }
        total = sum(calls.values())
        scripts = sum(
            calls.get(name, 0) for name in ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")
        )
        cpu_s = after["cpu_s"] - before["cpu_s"]
        n = max(requests, 1)
        return {
            "window_s": after["t"] - before["t"],
            "commands": total,
            "commands_by_name": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
            "scripts": scripts,
            "cpu_s": cpu_s,
            "other_clients_active": other_clients,
            # by anyone (the core's pool may open some too): a sign of other users when large
            "connections_received": after["connections_received"] - before["connections_received"],
            "per_request": {
                "commands": total / n,
                "scripts": scripts / n,
                "cpu_us": cpu_s * 1e6 / n,
            },
        }
