"""Keeping request logs for a window, cheaply at any volume.

PostgreSQL: `request_logs` is partitioned by UTC day (`request_logs_pYYYYMMDD`); days are created
ahead and dropped whole once entirely older than the window — never deleted row by row.
SQLite: one plain table, purged by batched deletes so no transaction grows with the volume.
Only `request_logs` and its partitions are ever touched: the ledger and usage tables are not.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core_service.clock import Clock

log = logging.getLogger(__name__)

_PARTITION_NAME = re.compile(r"^request_logs_p(\d{8})$")
# Serialises partition DDL between nodes (and between the writer and the maintenance job).
_PARTITION_LOCK_ID = 0x4B594C47
# DDL on a partition locks the parent: give up rather than queue every insert behind a long query.
_DDL_LOCK_TIMEOUT = "5s"
_SQLITE_DELETE_BATCH = 5000

_PARTITIONS_SQL = text(
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'request_logs'::regclass"
)


@dataclass(frozen=True)
class PurgeReport:
    rows: int
    partitions: list[str]  # PostgreSQL partitions dropped (or that would be); empty on SQLite
    cutoff: datetime


def partition_name(day: date) -> str:
    return f"request_logs_p{day:%Y%m%d}"


def sqlite_timestamp(moment: datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime stores (naive UTC, with microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


async def _partitions(conn: AsyncConnection) -> dict[date, str]:
    found: dict[date, str] = {}
    for (name,) in (await conn.execute(_PARTITIONS_SQL)).all():
        match = _PARTITION_NAME.match(name)
        if match:
            found[datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return found


async def ensure_day_partitions(engine: AsyncEngine, days: Iterable[date]) -> list[str]:
    """Create the PostgreSQL partitions missing among `days`; returns the names created."""
    wanted = set(days)
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL lock_timeout = '{_DDL_LOCK_TIMEOUT}'"))
        if not wanted - (await _partitions(conn)).keys():
            return []
        await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PARTITION_LOCK_ID})
        existing = await _partitions(conn)  # another node may have created some meanwhile
        created = []
        for day in sorted(wanted - existing.keys()):
            name = partition_name(day)
            # Names and bounds come from a date, never from input: safe to format in.
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF request_logs "
                    f"FOR VALUES FROM ('{day.isoformat()} 00:00:00') "
                    f"TO ('{(day + timedelta(days=1)).isoformat()} 00:00:00')"
                )
            )
            created.append(name)
    if created:
        log.info("created request log partitions %s", ", ".join(created))
    return created


class LogRetention:
    def __init__(self, engine: AsyncEngine, clock: Clock, *, days: int = 90) -> None:
        if days < 1:
            raise ValueError("request log retention must be at least one day")
        self._engine = engine
        self._clock = clock
        self._days = days
        self._postgres = engine.dialect.name == "postgresql"

    def cutoff(self) -> datetime:
        """Rows created before this are due for purging."""
        return self._clock.now().astimezone(UTC) - timedelta(days=self._days)

    async def ensure_partitions(self, days_ahead: int = 2) -> list[str]:
        """Create today's and the next `days_ahead` days' partitions (PostgreSQL; else a no-op)."""
        if not self._postgres:
            return []
        if days_ahead < 0:
            raise ValueError("days_ahead must not be negative")
        today = self._clock.now().astimezone(UTC).date()
        return await ensure_day_partitions(
            self._engine, (today + timedelta(days=offset) for offset in range(days_ahead + 1))
        )

    async def purge(self, dry_run: bool = False) -> PurgeReport:
        """Remove request logs older than the window; `dry_run` only reports what would go.

        On PostgreSQL a day goes once all of it is older than the cutoff, so rows outlive the
        window by less than a day."""
        cutoff = self.cutoff()
        if self._postgres:
            return await self._drop_partitions(cutoff, dry_run)
        return await self._delete_rows(cutoff, dry_run)

    async def _drop_partitions(self, cutoff: datetime, dry_run: bool) -> PurgeReport:
        naive_cutoff = cutoff.replace(tzinfo=None)
        async with self._engine.connect() as conn:
            partitions = await _partitions(conn)
        expired = [
            name
            for day, name in sorted(partitions.items())
            if datetime.combine(day + timedelta(days=1), time()) <= naive_cutoff
        ]
        rows = 0
        dropped: list[str] = []
        for name in expired:
            async with self._engine.begin() as conn:
                await conn.execute(text(f"SET LOCAL lock_timeout = '{_DDL_LOCK_TIMEOUT}'"))
                if not dry_run:
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PARTITION_LOCK_ID}
                    )
                    if name not in (await _partitions(conn)).values():
                        continue  # another node dropped it first
                # `name` matched _PARTITION_NAME: safe to format in.
                count = (await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one()
                if not dry_run:
                    await conn.execute(text(f"DROP TABLE {name}"))
            rows += int(count)
            dropped.append(name)
        if dropped and not dry_run:
            log.info(
                "purged request logs before %s: dropped %s (%d rows)",
                cutoff.isoformat(),
                ", ".join(dropped),
                rows,
            )
        return PurgeReport(rows=rows, partitions=dropped, cutoff=cutoff)

    async def _delete_rows(self, cutoff: datetime, dry_run: bool) -> PurgeReport:
        stamp = sqlite_timestamp(cutoff)
        if dry_run:
            async with self._engine.connect() as conn:
                result = await conn.exec_driver_sql(
                    "SELECT count(*) FROM request_logs WHERE created_at < ?", (stamp,)
                )
                return PurgeReport(rows=int(result.scalar_one()), partitions=[], cutoff=cutoff)
        rows = 0
        while True:
            # One short transaction per batch: the write lock is never held for long.
            async with self._engine.begin() as conn:
                result = await conn.exec_driver_sql(
                    "DELETE FROM request_logs WHERE rowid IN "
                    "(SELECT rowid FROM request_logs WHERE created_at < ? LIMIT ?)",
                    (stamp, _SQLITE_DELETE_BATCH),
                )
                deleted = result.rowcount
            rows += deleted
            if deleted < _SQLITE_DELETE_BATCH:
                break
            await asyncio.sleep(0)
        if rows:
            log.info("purged %d request log rows before %s", rows, cutoff.isoformat())
        return PurgeReport(rows=rows, partitions=[], cutoff=cutoff)
