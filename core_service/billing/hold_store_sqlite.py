"""Holds on SQLite: each operation is one transaction run whole on a dedicated thread with its
own connection, so it costs one thread hop instead of one per statement. BEGIN IMMEDIATE takes
the write lock up front, so concurrent writers (this thread, the ORM, other processes) queue
on SQLite's busy timeout instead of failing half-way."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from core_service.billing.hold_store import (
    USAGE_REVENUE,
    NewHold,
    SettleOrder,
    usage_reason,
)

T = TypeVar("T")


def _stamp(moment: datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime stores (naive UTC, with microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteHoldStore:
    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kyma-holds")
        self._connection: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            self._connection = connection
        return self._connection

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def transaction() -> T:
            connection = self._conn()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, transaction)

    async def place(self, hold: NewHold) -> int | None:
        def work(db: sqlite3.Connection) -> int | None:
            reserved = db.execute(
                "UPDATE balances SET held_nanos = held_nanos + ? "
                "WHERE ledger_account = ? AND balance_nanos - held_nanos >= ?",
                (hold.amount_nanos, hold.account_id, hold.amount_nanos),
            ).rowcount
            if reserved != 1:
                row = db.execute(
                    "SELECT balance_nanos - held_nanos FROM balances WHERE ledger_account = ?",
                    (hold.account_id,),
                ).fetchone()
                return max(int(row[0]) if row else 0, 0)
            db.execute(
                "INSERT INTO credit_holds (id, account_id, amount_nanos, request_id, model, status, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'open', ?, ?)",
                (
                    hold.hold_id,
                    hold.account_id,
                    hold.amount_nanos,
                    hold.request_id[:128],
                    hold.model,
                    _stamp(hold.created_at),
                    _stamp(hold.expires_at),
                ),
            )
            return None

        return await self._run(work)

    async def settle(self, order: SettleOrder) -> int | None:
        settlement = order.settlement
        cost = max(settlement.cost_nanos, 0)
        now = _stamp(order.now)

        def work(db: sqlite3.Connection) -> int | None:
            row = db.execute(
                "UPDATE credit_holds SET status = 'settled', ended_at = ?, "
                "charged_nanos = min(?, amount_nanos) WHERE id = ? AND status = 'open' "
                "RETURNING account_id, amount_nanos, charged_nanos, model, request_id",
                (now, cost, order.hold_id),
            ).fetchone()
            if row is None:
                return None
            account_id, amount, charged, model, request_id = row
            db.execute(
                "UPDATE balances SET balance_nanos = balance_nanos - ?, held_nanos = held_nanos - ? "
                "WHERE ledger_account = ?",
                (charged, amount, account_id),
            )
            if charged > 0:
                db.execute(
                    "INSERT INTO ledger_entries (idempotency_key, kind, debit_account, credit_account, "
                    "amount_nanos, created_at, actor, reason, reference) "
                    "VALUES (?, 'usage', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        f"usage:{order.hold_id}",
                        account_id,
                        USAGE_REVENUE,
                        charged,
                        now,
                        request_id,
                        usage_reason(model, settlement),
                        order.hold_id,
                    ),
                )
            db.execute(
                "INSERT INTO usage_daily (account_id, day, model, requests, prompt_tokens, "
                "completion_tokens, cost_nanos, estimated_requests) VALUES (?, ?, ?, 1, ?, ?, ?, ?) "
                "ON CONFLICT (account_id, day, model) DO UPDATE SET "
                "requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens, "
                "cost_nanos = cost_nanos + excluded.cost_nanos, "
                "estimated_requests = estimated_requests + excluded.estimated_requests",
                (
                    account_id,
                    order.day.isoformat(),
                    model,
                    settlement.prompt_tokens,
                    settlement.completion_tokens,
                    charged,
                    1 if settlement.estimated else 0,
                ),
            )
            return int(charged)

        return await self._run(work)

    async def end(self, hold_id: str, status: str, now: datetime) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "UPDATE credit_holds SET status = ?, ended_at = ?, charged_nanos = 0 "
                "WHERE id = ? AND status = 'open' RETURNING account_id, amount_nanos",
                (status, _stamp(now), hold_id),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE balances SET held_nanos = held_nanos - ? WHERE ledger_account = ?",
                (row[1], row[0]),
            )
            return True

        return await self._run(work)

    async def close(self) -> None:
        def shut() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)
