"""Holds on SQLite: each batch is one transaction on one connection. BEGIN IMMEDIATE takes the
write lock up front, so the batch cannot be refused half-way by another writer; the balances
and keys' spend rows it reads are therefore as good as locked. Reads elsewhere never wait for
it (WAL).

Where a batch runs: a small batch (at most `inline_max` operations) runs right on the event
loop when the write lock is free that very instant — in WAL mode with synchronous=NORMAL a
COMMIT appends to the log without an fsync, so a transaction of a few statements costs tens
of microseconds, less than the hop to a thread and back. The loop's connection never waits
for the lock (busy timeout 0) and never checkpoints the log itself (that does fsync): when
another connection holds the lock, or the batch is large, the batch runs whole on the store's
dedicated thread instead (one hop per batch, not per statement), which waits its turn (the
busy timeout) as before; and every `checkpoint_every` batches run on the loop, a PASSIVE
checkpoint is handed to that thread.

Failure semantics are the same on either path: a batch that raises was rolled back whole
(nothing of it happened), and the error goes to the writer (`writer.py`), which retries or
refuses by its kind. Only a lock held elsewhere sends a batch from the loop to the thread;
any other error on the loop is the batch's own and is raised as it is. A connection that a
failure leaves inside its transaction (not even ROLLBACK worked: a broken disk) is closed,
which rolls it back, and the next batch opens a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from core_service.billing.hold_store import (
    USAGE_REVENUE,
    Batch,
    BatchOutcome,
    Ended,
    EndOrder,
    Expired,
    Settlement,
    after_ends,
    balance_deltas,
    daily_usage,
    decide_places,
    keys_after_ends,
    late_settlements,
    reconcile_late,
    tokens_at_end,
    usage_reason,
)
from core_service.billing.key_spend import KeySpendState
from core_service.db.sqlite_transactions import busy, open_wal, transaction

T = TypeVar("T")

log = logging.getLogger(__name__)


def _stamp(moment: datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime stores (naive UTC, with microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_END = (
    "UPDATE credit_holds SET status = ?, ended_at = ?, charged_nanos = "
    "CASE ? WHEN 'settled' THEN min(?, amount_nanos) "
    "WHEN 'expired' THEN min(checkpoint_nanos, amount_nanos) ELSE 0 END "
    "WHERE id = ? AND status = 'open' "
    "RETURNING account_id, amount_nanos, charged_nanos, model, request_id, "
    "checkpoint_prompt_tokens, checkpoint_completion_tokens, key_id"
)
_KEY_COLUMNS = (
    "key_id, cap_nanos, cap_interval, held_nanos, spent_total_nanos, spent_day_nanos, "
    "spent_day, spent_week_nanos, spent_week, spent_month_nanos, spent_month"
)


def _day(value: Any) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _read_keys(db: sqlite3.Connection, key_ids: list[str], into: dict[str, KeySpendState]) -> None:
    if not key_ids:
        return
    marks = ",".join("?" for _ in key_ids)
    for row in db.execute(
        f"SELECT {_KEY_COLUMNS} FROM key_spend WHERE key_id IN ({marks})", key_ids
    ):
        into[row[0]] = KeySpendState(
            key_id=row[0],
            cap_nanos=None if row[1] is None else int(row[1]),
            cap_interval=row[2],
            held_nanos=int(row[3]),
            spent_total_nanos=int(row[4]),
            spent_day_nanos=int(row[5]),
            spent_day=_day(row[6]),
            spent_week_nanos=int(row[7]),
            spent_week=_day(row[8]),
            spent_month_nanos=int(row[9]),
            spent_month=_day(row[10]),
        )


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


class SqliteHoldStore:
    def __init__(
        self, path: pathlib.Path, *, inline_max: int = 64, checkpoint_every: int = 100
    ) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kyma-holds")
        self._connection: sqlite3.Connection | None = None
        self._loop_connection: sqlite3.Connection | None = None
        self._inline_max = inline_max
        self._checkpoint_every = checkpoint_every
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None
        self.stats = StoreStats()

    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = _open(self._path, timeout=30)
        return self._connection

    def _loop_conn(self) -> sqlite3.Connection:
        """The event loop's connection: it never waits for the lock, never checkpoints."""
        if self._loop_connection is None:
            connection = _open(self._path, timeout=0)
            try:
                connection.execute("PRAGMA wal_autocheckpoint=0")
            except BaseException:
                connection.close()
                raise
            self._loop_connection = connection
        return self._loop_connection

    async def _run(self, work: Callable[[sqlite3.Connection], T], size: int) -> T:
        if size <= self._inline_max:
            ran = self._on_loop(work)
            if ran is not None:
                self.stats.inline += 1
                self._after_inline()
                return ran[0]

        def on_thread() -> T:
            db = self._conn()
            try:
                return transaction(db, work)
            except BaseException:
                if db.in_transaction:  # not even ROLLBACK worked: start afresh next time
                    self._connection = None
                    db.close()
                raise

        self.stats.threaded += 1
        return await asyncio.get_running_loop().run_in_executor(self._executor, on_thread)

    def _on_loop(self, work: Callable[[sqlite3.Connection], T]) -> tuple[T] | None:
        """`work` as one transaction on the loop's connection if the write lock is free this
        instant; None (nothing done) if another connection holds it."""
        try:
            db = self._loop_conn()
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if busy(error):
                return None
            raise
        try:
            return (transaction(db, work, begun=True),)
        except BaseException:
            if db.in_transaction:  # not even ROLLBACK worked: start afresh next time
                self._loop_connection = None
                db.close()
            raise

    def _after_inline(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint < self._checkpoint_every:
            return
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        self._since_checkpoint = 0

        def checkpoint() -> None:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

        self._checkpointing = asyncio.get_running_loop().run_in_executor(self._executor, checkpoint)
        self._checkpointing.add_done_callback(_checkpointed)

    async def commit(self, batch: Batch) -> BatchOutcome:
        return await self._run(lambda db: _commit(db, batch), len(batch))

    async def close(self) -> None:
        if self._loop_connection is not None:
            self._loop_connection.close()
            self._loop_connection = None

        def shut() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


@dataclass
class StoreStats:
    """Batches committed on the event loop and on the store's thread."""

    inline: int = 0
    threaded: int = 0


def _open(path: pathlib.Path, *, timeout: float) -> sqlite3.Connection:
    connection = open_wal(path, timeout=timeout, synchronous="NORMAL")
    try:
        connection.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        connection.close()
        raise
    return connection


def _checkpointed(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("a checkpoint of the hold store's log failed: %r", done.exception())


def _commit(db: sqlite3.Connection, batch: Batch) -> BatchOutcome:
    accounts = batch.accounts()
    available: dict[str, int] = {}
    if accounts:
        marks = ",".join("?" for _ in accounts)
        for account, value in db.execute(
            f"SELECT ledger_account, balance_nanos - held_nanos FROM balances "
            f"WHERE ledger_account IN ({marks})",
            accounts,
        ):
            available[account] = int(value)
    keys: dict[str, KeySpendState] = {}
    _read_keys(db, batch.keys(), keys)
    ended = _end(db, batch)
    for checkpoint in batch.checkpoints:
        usage = checkpoint.settlement
        db.execute(
            "UPDATE credit_holds SET checkpoint_nanos = ?, checkpoint_prompt_tokens = ?, "
            "checkpoint_completion_tokens = ?, checkpoint_at = ? WHERE id = ? AND status = 'open'",
            (
                max(usage.cost_nanos, 0),
                usage.prompt_tokens,
                usage.completion_tokens,
                _stamp(checkpoint.now),
                checkpoint.hold_id,
            ),
        )
    left = after_ends(available, ended)
    corrections = _reconcile(db, late_settlements(batch, ended), left)
    charges = ended + corrections
    # Only when a hold's row names a key the batch was not told of (never by Kyma's callers).
    _read_keys(db, sorted({e.key_id for e in charges if e.key_id and e.key_id not in keys}), keys)
    changed = keys_after_ends(keys, charges)
    answers, placed = decide_places(batch.places, left, keys)
    new = [hold for hold in batch.places if answers[hold.hold_id] is None]
    changed |= {hold.key_id for hold in new if hold.key_id in keys}
    db.executemany(
        "INSERT INTO credit_holds (id, account_id, amount_nanos, request_id, model, status, "
        "created_at, expires_at, node_id, key_id) VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?, ?)",
        [
            (
                hold.hold_id,
                hold.account_id,
                hold.amount_nanos,
                hold.request_id[:128],
                hold.model,
                _stamp(hold.created_at),
                _stamp(hold.expires_at),
                hold.node_id,
                hold.key_id,
            )
            for hold in new
        ],
    )
    db.executemany(
        "UPDATE key_spend SET held_nanos = ?, spent_total_nanos = ?, spent_day_nanos = ?, "
        "spent_day = ?, spent_week_nanos = ?, spent_week = ?, spent_month_nanos = ?, "
        "spent_month = ? WHERE key_id = ?",
        [
            (
                k.held_nanos,
                k.spent_total_nanos,
                k.spent_day_nanos,
                _iso(k.spent_day),
                k.spent_week_nanos,
                _iso(k.spent_week),
                k.spent_month_nanos,
                _iso(k.spent_month),
                k.key_id,
            )
            for k in (keys[key] for key in sorted(changed))
        ],
    )
    db.executemany(
        "UPDATE balances SET balance_nanos = balance_nanos + ?, held_nanos = held_nanos + ? "
        "WHERE ledger_account = ?",
        [
            (balance, held, account)
            for account, (balance, held) in balance_deltas(charges, placed).items()
        ],
    )
    db.executemany(
        "INSERT INTO ledger_entries (idempotency_key, kind, debit_account, credit_account, "
        "amount_nanos, created_at, actor, reason, reference) "
        "VALUES (?, 'usage', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
        [
            (
                end.entry_key,
                end.account_id,
                USAGE_REVENUE,
                end.charged_nanos,
                _stamp(end.now),
                end.request_id,
                usage_reason(
                    end.model,
                    Settlement(
                        end.charged_nanos, end.prompt_tokens, end.completion_tokens, end.estimated
                    ),
                ),
                end.hold_id,
            )
            for end in charges
            if end.charged_nanos > 0
        ],
    )
    db.executemany(
        "INSERT INTO usage_daily (account_id, day, model, requests, prompt_tokens, "
        "completion_tokens, cost_nanos, estimated_requests, cached_tokens, cache_write_tokens, "
        "reasoning_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (account_id, day, model) DO UPDATE SET "
        "requests = requests + excluded.requests, "
        "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens, "
        "cost_nanos = cost_nanos + excluded.cost_nanos, "
        "estimated_requests = estimated_requests + excluded.estimated_requests, "
        "cached_tokens = cached_tokens + excluded.cached_tokens, "
        "cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, "
        "reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens",
        [
            (
                row.account_id,
                row.day.isoformat(),
                row.model,
                row.requests,
                row.prompt_tokens,
                row.completion_tokens,
                row.cost_nanos,
                row.estimated_requests,
                row.cached_tokens,
                row.cache_write_tokens,
                row.reasoning_tokens,
            )
            for row in daily_usage(charges)
        ],
    )
    return BatchOutcome(placed=answers, ended={end.hold_id: end.charged_nanos for end in charges})


def _reconcile(db: sqlite3.Connection, late: list[EndOrder], left: dict[str, int]) -> list[Ended]:
    if not late:
        return []
    marks = ",".join("?" for _ in late)
    rows = db.execute(
        "SELECT id, account_id, amount_nanos, charged_nanos, model, request_id, "
        "checkpoint_prompt_tokens, checkpoint_completion_tokens, key_id FROM credit_holds h "
        f"WHERE status = 'expired' AND id IN ({marks}) AND late_settled_at IS NULL",
        [order.hold_id for order in late],
    ).fetchall()
    corrections = reconcile_late(late, [Expired(*row) for row in rows], left)
    extra = {c.hold_id: c.charged_nanos for c in corrections}
    stamp = _stamp(late[0].now)
    db.executemany(
        "UPDATE credit_holds SET charged_nanos = charged_nanos + ?, late_settled_at = ? "
        "WHERE id = ?",
        [(extra.get(row[0], 0), stamp, row[0]) for row in rows],
    )
    return corrections


def _end(db: sqlite3.Connection, batch: Batch) -> list[Ended]:
    ended = []
    for order in batch.ends:
        usage = order.settlement
        row = db.execute(
            _END,
            (
                order.ending.value,
                _stamp(order.now),
                order.ending.value,
                max(usage.cost_nanos, 0) if usage else 0,
                order.hold_id,
            ),
        ).fetchone()
        if row is None:
            continue
        account_id, amount, charged, model, request_id, cp_prompt, cp_completion, key_id = row
        ended.append(
            Ended(
                hold_id=order.hold_id,
                account_id=account_id,
                ending=order.ending,
                amount_nanos=int(amount),
                charged_nanos=int(charged),
                model=model,
                request_id=request_id,
                now=order.now,
                key_id=key_id,
                **tokens_at_end(order, cp_prompt, cp_completion),
            )
        )
    return ended
