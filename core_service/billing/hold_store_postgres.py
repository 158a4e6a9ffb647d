"""Holds on PostgreSQL through asyncpg: each batch is one transaction on the writer's own
connection (no pool, so no reset round trip after each use), in at most six statements
whatever the batch's size: BEGIN; lock the balance rows and the keys' spend rows (one
statement); end the holds that end; record checkpoints; insert holds, update balances and
keys' spend, insert usage entries and daily usage in one statement of data-modifying CTEs;
COMMIT. Rows go in as arrays (`unnest`), so a statement's text never depends on the batch and
PostgreSQL plans it once.

Behind PgBouncer in transaction mode (`pgbouncer=True`), asyncpg keeps no prepared
statements across transactions (statement_cache_size=0): each statement is parsed in the
transaction that runs it, so any server connection can serve the next one.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg

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

# Balance rows, then keys' spend rows, each in a fixed order, so no two batches can deadlock;
# in one statement (one round trip). A spend row exists from its key's creation on (it is never
# inserted while a batch runs), so FOR UPDATE returns its newest version even when another
# transaction changed it while this one waited (READ COMMITTED re-reads an updated row).
_KEY_COLUMNS = """key_id, cap_nanos, cap_interval, held_nanos, spent_total_nanos, spent_day_nanos,
    spent_day, spent_week_nanos, spent_week, spent_month_nanos, spent_month"""
_LOCK = f"""
WITH b AS (
    SELECT ledger_account, balance_nanos - held_nanos AS available
    FROM balances WHERE ledger_account = ANY($1::text[])
    ORDER BY ledger_account FOR UPDATE
), k AS (
    SELECT {_KEY_COLUMNS} FROM key_spend WHERE key_id = ANY($2::text[])
    ORDER BY key_id FOR UPDATE
)
SELECT 'b' AS kind, ledger_account AS id, available, NULL::bigint AS cap_nanos,
       NULL::text AS cap_interval, NULL::bigint AS held_nanos, NULL::bigint AS spent_total_nanos,
       NULL::bigint AS spent_day_nanos, NULL::date AS spent_day,
       NULL::bigint AS spent_week_nanos, NULL::date AS spent_week,
       NULL::bigint AS spent_month_nanos, NULL::date AS spent_month
FROM b
UNION ALL
SELECT 'k', {_KEY_COLUMNS.replace("key_id, ", "key_id, NULL, ")} FROM k
"""
# Only when a hold's row names a key the batch was not told of (never by Kyma's own callers).
_LOCK_KEYS = f"""
SELECT {_KEY_COLUMNS} FROM key_spend WHERE key_id = ANY($1::text[]) ORDER BY key_id FOR UPDATE
"""

_END = """
UPDATE credit_holds h
SET status = o.ending, ended_at = o.at,
    charged_nanos = CASE o.ending
        WHEN 'settled' THEN LEAST(o.cost, h.amount_nanos)
        WHEN 'expired' THEN LEAST(h.checkpoint_nanos, h.amount_nanos)
        ELSE 0 END
FROM unnest($1::text[], $2::text[], $3::timestamp[], $4::bigint[]) AS o(id, ending, at, cost)
WHERE h.id = o.id AND h.status = 'open'
RETURNING h.id, h.account_id, h.amount_nanos, h.charged_nanos, h.model, h.request_id,
          h.checkpoint_prompt_tokens, h.checkpoint_completion_tokens, h.key_id
"""

_CHECKPOINT = """
UPDATE credit_holds h
SET checkpoint_nanos = c.cost, checkpoint_prompt_tokens = c.prompt,
    checkpoint_completion_tokens = c.completion, checkpoint_at = c.at
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::timestamp[])
    AS c(id, cost, prompt, completion, at)
WHERE h.id = c.id AND h.status = 'open'
"""

_APPLY = """
WITH placed AS (
    INSERT INTO credit_holds
        (id, account_id, amount_nanos, request_id, model, status, created_at, expires_at, node_id,
         key_id)
    SELECT id, account_id, amount, request_id, model, 'open', created_at, expires_at, node_id,
           key_id
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                $6::timestamp[], $7::timestamp[], $8::text[], $31::text[])
        AS p(id, account_id, amount, request_id, model, created_at, expires_at, node_id, key_id)
    RETURNING 1
), keys_changed AS (
    UPDATE key_spend s
    SET held_nanos = k.held, spent_total_nanos = k.total,
        spent_day_nanos = k.day_spent, spent_day = k.day,
        spent_week_nanos = k.week_spent, spent_week = k.week,
        spent_month_nanos = k.month_spent, spent_month = k.month
    FROM unnest($32::text[], $33::bigint[], $34::bigint[], $35::bigint[], $36::date[],
                $37::bigint[], $38::date[], $39::bigint[], $40::date[])
        AS k(id, held, total, day_spent, day, week_spent, week, month_spent, month)
    WHERE s.key_id = k.id
    RETURNING 1
), balances_changed AS (
    UPDATE balances b
    SET balance_nanos = b.balance_nanos + d.balance, held_nanos = b.held_nanos + d.held
    FROM unnest($9::text[], $10::bigint[], $11::bigint[]) AS d(account, balance, held)
    WHERE b.ledger_account = d.account
    RETURNING 1
), entries AS (
    INSERT INTO ledger_entries
        (idempotency_key, kind, debit_account, credit_account, amount_nanos, created_at, actor,
         reason, reference)
    SELECT entry_key, 'usage', account_id, $12, amount, at, request_id, reason, hold_id
    FROM unnest($13::text[], $14::text[], $15::bigint[], $16::timestamp[], $17::text[],
                $18::text[], $27::text[])
        AS e(hold_id, account_id, amount, at, request_id, reason, entry_key)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
)
INSERT INTO usage_daily AS u
    (account_id, day, model, requests, prompt_tokens, completion_tokens, cost_nanos,
     estimated_requests, cached_tokens, cache_write_tokens, reasoning_tokens)
SELECT * FROM unnest($19::text[], $20::date[], $21::text[], $22::bigint[], $23::bigint[],
                     $24::bigint[], $25::bigint[], $26::bigint[], $28::bigint[],
                     $29::bigint[], $30::bigint[])
ON CONFLICT (account_id, day, model) DO UPDATE SET
    requests = u.requests + excluded.requests,
    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens,
    cost_nanos = u.cost_nanos + excluded.cost_nanos,
    estimated_requests = u.estimated_requests + excluded.estimated_requests,
    cached_tokens = u.cached_tokens + excluded.cached_tokens,
    cache_write_tokens = u.cache_write_tokens + excluded.cache_write_tokens,
    reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens
"""


def _naive(moment: datetime) -> datetime:
    """The columns are `timestamp without time zone`, holding UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)


class PostgresHoldStore:
    """The writer's connection: opened on first use and again after it breaks."""

    def __init__(self, dsn: str, *, pgbouncer: bool = False, connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._pgbouncer = pgbouncer
        self._connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                # Prepared statements outlive a transaction; behind PgBouncer in transaction
                # mode the next one may run on another server connection.
                statement_cache_size=0 if self._pgbouncer else 100,
            )
        return self._conn

    async def commit(self, batch: Batch) -> BatchOutcome:
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction():
                    return await _commit(conn, batch)
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
                # The connection is gone (or its state unknown): the next batch opens a new one.
                await self._discard()
                raise
            except asyncpg.InternalClientError as error:
                # The connection's protocol is in a state no statement can use: e.g. the server
                # sent an error while it was idle (the FATAL of a dying server) and its close has
                # not been seen yet. As for a broken connection: a new one next time, and to the
                # writer an outage (retried; a place is answered 503 and then released) — not a
                # batch the database refuses, which the writer would drop.
                await self._discard()
                raise ConnectionResetError(
                    f"the database connection is unusable: {error}"
                ) from error

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except (OSError, TimeoutError, asyncpg.InterfaceError):
                    conn.terminate()


def _key_state(row: Any, key_id: str) -> KeySpendState:
    """A key's spend row, by column name (from _LOCK or _LOCK_KEYS)."""
    return KeySpendState(
        key_id=key_id,
        cap_nanos=None if row["cap_nanos"] is None else int(row["cap_nanos"]),
        cap_interval=row["cap_interval"],
        held_nanos=int(row["held_nanos"]),
        spent_total_nanos=int(row["spent_total_nanos"]),
        spent_day_nanos=int(row["spent_day_nanos"]),
        spent_day=row["spent_day"],
        spent_week_nanos=int(row["spent_week_nanos"]),
        spent_week=row["spent_week"],
        spent_month_nanos=int(row["spent_month_nanos"]),
        spent_month=row["spent_month"],
    )


async def _lock(
    conn: asyncpg.Connection, batch: Batch
) -> tuple[dict[str, int], dict[str, KeySpendState]]:
    available: dict[str, int] = {}
    keys: dict[str, KeySpendState] = {}
    accounts = batch.accounts()
    if accounts:
        for row in await conn.fetch(_LOCK, accounts, batch.keys()):
            if row["kind"] == "b":
                available[row["id"]] = int(row["available"])
            else:
                keys[row["id"]] = _key_state(row, row["id"])
    return available, keys


async def _lock_missing_keys(
    conn: asyncpg.Connection, ended: list[Ended], keys: dict[str, KeySpendState]
) -> None:
    missing = sorted({e.key_id for e in ended if e.key_id is not None and e.key_id not in keys})
    if missing:
        for row in await conn.fetch(_LOCK_KEYS, missing):
            keys[row["key_id"]] = _key_state(row, row["key_id"])


async def _commit(conn: asyncpg.Connection, batch: Batch) -> BatchOutcome:
    available, keys = await _lock(conn, batch)
    ended = await _end(conn, batch)
    if batch.checkpoints:
        points = batch.checkpoints
        await conn.execute(
            _CHECKPOINT,
            [c.hold_id for c in points],
            [max(c.settlement.cost_nanos, 0) for c in points],
            [c.settlement.prompt_tokens for c in points],
            [c.settlement.completion_tokens for c in points],
            [_naive(c.now) for c in points],
        )
    left = after_ends(available, ended)
    corrections = await _reconcile(conn, late_settlements(batch, ended), left)
    charges = ended + corrections
    await _lock_missing_keys(conn, charges, keys)
    changed = keys_after_ends(keys, charges)
    answers, placed = decide_places(batch.places, left, keys)
    new = [hold for hold in batch.places if answers[hold.hold_id] is None]
    changed |= {h.key_id for h in new if h.key_id in keys}
    deltas = balance_deltas(charges, placed)
    charged = [end for end in charges if end.charged_nanos > 0]
    daily = daily_usage(charges)
    spends = [keys[key] for key in sorted(changed)]
    if new or deltas or charged or daily or spends:
        args: list[Any] = [
            [h.hold_id for h in new],
            [h.account_id for h in new],
            [h.amount_nanos for h in new],
            [h.request_id[:128] for h in new],
            [h.model for h in new],
            [_naive(h.created_at) for h in new],
            [_naive(h.expires_at) for h in new],
            [h.node_id for h in new],
            list(deltas),
            [balance for balance, _ in deltas.values()],
            [held for _, held in deltas.values()],
            USAGE_REVENUE,
            [e.hold_id for e in charged],
            [e.account_id for e in charged],
            [e.charged_nanos for e in charged],
            [_naive(e.now) for e in charged],
            [e.request_id for e in charged],
            [
                usage_reason(
                    e.model,
                    Settlement(e.charged_nanos, e.prompt_tokens, e.completion_tokens, e.estimated),
                )
                for e in charged
            ],
            [d.account_id for d in daily],
            [d.day for d in daily],
            [d.model for d in daily],
            [d.requests for d in daily],
            [d.prompt_tokens for d in daily],
            [d.completion_tokens for d in daily],
            [d.cost_nanos for d in daily],
            [d.estimated_requests for d in daily],
            [e.entry_key for e in charged],
            [d.cached_tokens for d in daily],
            [d.cache_write_tokens for d in daily],
            [d.reasoning_tokens for d in daily],
            [h.key_id for h in new],
            *_spend_columns(spends),
        ]
        await conn.execute(_APPLY, *args)
    return BatchOutcome(placed=answers, ended={end.hold_id: end.charged_nanos for end in charges})


def _spend_columns(spends: list[KeySpendState]) -> list[list[Any]]:
    return [
        [k.key_id for k in spends],
        [k.held_nanos for k in spends],
        [k.spent_total_nanos for k in spends],
        [k.spent_day_nanos for k in spends],
        [k.spent_day for k in spends],
        [k.spent_week_nanos for k in spends],
        [k.spent_week for k in spends],
        [k.spent_month_nanos for k in spends],
        [k.spent_month for k in spends],
    ]


_EXPIRED = """
SELECT id, account_id, amount_nanos, charged_nanos, model, request_id,
       checkpoint_prompt_tokens, checkpoint_completion_tokens, key_id
FROM credit_holds WHERE status = 'expired' AND id = ANY($1::text[]) AND late_settled_at IS NULL
"""


async def _reconcile(
    conn: asyncpg.Connection, late: list[EndOrder], left: dict[str, int]
) -> list[Ended]:
    if not late:
        return []
    rows = await conn.fetch(_EXPIRED, [order.hold_id for order in late])
    corrections = reconcile_late(late, [Expired(*row) for row in rows], left)
    if rows:
        # Every late settlement is reconciled once, whether it owed more or not.
        extra = {c.hold_id: c.charged_nanos for c in corrections}
        await conn.execute(
            "UPDATE credit_holds h SET charged_nanos = h.charged_nanos + c.extra, "
            "late_settled_at = $3 "
            "FROM unnest($1::text[], $2::bigint[]) AS c(id, extra) WHERE h.id = c.id",
            [row["id"] for row in rows],
            [extra.get(row["id"], 0) for row in rows],
            _naive(late[0].now),
        )
    return corrections


async def _end(conn: asyncpg.Connection, batch: Batch) -> list[Ended]:
    if not batch.ends:
        return []
    orders = {order.hold_id: order for order in batch.ends}
    rows = await conn.fetch(
        _END,
        list(orders),
        [order.ending.value for order in orders.values()],
        [_naive(order.now) for order in orders.values()],
        [
            max(order.settlement.cost_nanos, 0) if order.settlement else 0
            for order in orders.values()
        ],
    )
    ended = []
    for row in rows:
        order = orders[row["id"]]
        ended.append(
            Ended(
                hold_id=order.hold_id,
                account_id=row["account_id"],
                ending=order.ending,
                amount_nanos=int(row["amount_nanos"]),
                charged_nanos=int(row["charged_nanos"]),
                model=row["model"],
                request_id=row["request_id"],
                now=order.now,
                key_id=row["key_id"],
                **tokens_at_end(
                    order, row["checkpoint_prompt_tokens"], row["checkpoint_completion_tokens"]
                ),
            )
        )
    return ended
