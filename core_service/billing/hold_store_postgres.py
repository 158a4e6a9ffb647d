"""Holds on PostgreSQL through asyncpg: each operation is a single statement (data-modifying
CTEs), so one round trip, atomic, and free of the ORM's per-statement cost."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from core_service.billing.hold_store import (
    USAGE_REVENUE,
    NewHold,
    SettleOrder,
    usage_reason,
)

_PLACE = """
WITH reserved AS (
    UPDATE balances SET held_nanos = held_nanos + $2
    WHERE ledger_account = $1 AND balance_nanos - held_nanos >= $2
    RETURNING ledger_account
), placed AS (
    INSERT INTO credit_holds (id, account_id, amount_nanos, request_id, model, status, created_at, expires_at)
    SELECT $3, ledger_account, $2, $4, $5, 'open', $6, $7 FROM reserved
    RETURNING id
)
SELECT (SELECT count(*) FROM placed) AS placed,
       (SELECT balance_nanos - held_nanos FROM balances WHERE ledger_account = $1) AS available
"""

_SETTLE = """
WITH ended AS (
    UPDATE credit_holds
    SET status = 'settled', ended_at = $2, charged_nanos = LEAST($3::bigint, amount_nanos)
    WHERE id = $1 AND status = 'open'
    RETURNING account_id, amount_nanos, charged_nanos, model, request_id
), balance AS (
    UPDATE balances b
    SET balance_nanos = b.balance_nanos - e.charged_nanos, held_nanos = b.held_nanos - e.amount_nanos
    FROM ended e WHERE b.ledger_account = e.account_id
    RETURNING b.ledger_account
), entry AS (
    INSERT INTO ledger_entries
        (idempotency_key, kind, debit_account, credit_account, amount_nanos, created_at, actor, reason, reference)
    SELECT 'usage:' || $1, 'usage', e.account_id, $4, e.charged_nanos, $2, e.request_id,
           e.model || $5, $1
    FROM ended e WHERE e.charged_nanos > 0
    RETURNING id
), usage AS (
    INSERT INTO usage_daily AS u
        (account_id, day, model, requests, prompt_tokens, completion_tokens, cost_nanos, estimated_requests)
    SELECT e.account_id, $6, e.model, 1, $7, $8, e.charged_nanos, $9 FROM ended e
    ON CONFLICT (account_id, day, model) DO UPDATE SET
        requests = u.requests + 1,
        prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = u.completion_tokens + excluded.completion_tokens,
        cost_nanos = u.cost_nanos + excluded.cost_nanos,
        estimated_requests = u.estimated_requests + excluded.estimated_requests
    RETURNING 1
)
SELECT charged_nanos, (SELECT count(*) FROM balance) AS balances, (SELECT count(*) FROM usage) AS usage
FROM ended
"""

_END = """
WITH ended AS (
    UPDATE credit_holds SET status = $2, ended_at = $3, charged_nanos = 0
    WHERE id = $1 AND status = 'open'
    RETURNING account_id, amount_nanos
), balance AS (
    UPDATE balances b SET held_nanos = b.held_nanos - e.amount_nanos
    FROM ended e WHERE b.ledger_account = e.account_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM ended) AS ended, (SELECT count(*) FROM balance) AS balances
"""


def _naive(moment: datetime) -> datetime:
    """The columns are `timestamp without time zone`, holding UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)


class PostgresHoldStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str) -> PostgresHoldStore:
        return cls(
            await asyncpg.create_pool(dsn, min_size=2, max_size=20, statement_cache_size=100)
        )

    async def place(self, hold: NewHold) -> int | None:
        row = await self._pool.fetchrow(
            _PLACE,
            hold.account_id,
            hold.amount_nanos,
            hold.hold_id,
            hold.request_id[:128],
            hold.model,
            _naive(hold.created_at),
            _naive(hold.expires_at),
        )
        if row["placed"]:
            return None
        return max(int(row["available"] or 0), 0)

    async def settle(self, order: SettleOrder) -> int | None:
        settlement = order.settlement
        # The reason's text after the model name; the model comes from the hold row.
        suffix = usage_reason("", settlement)
        row = await self._pool.fetchrow(
            _SETTLE,
            order.hold_id,
            _naive(order.now),
            max(settlement.cost_nanos, 0),
            USAGE_REVENUE,
            suffix,
            order.day,
            settlement.prompt_tokens,
            settlement.completion_tokens,
            1 if settlement.estimated else 0,
        )
        return None if row is None else int(row["charged_nanos"])

    async def end(self, hold_id: str, status: str, now: datetime) -> bool:
        row = await self._pool.fetchrow(_END, hold_id, status, _naive(now))
        return bool(row["ended"])

    async def close(self) -> None:
        await self._pool.close()
