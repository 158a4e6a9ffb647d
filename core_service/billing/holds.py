"""Two-phase holds: set aside a request's worst-case cost before it is forwarded, then settle at
the actual cost and release the rest.

A hold is placed with one conditional UPDATE (available balance >= amount), so however many
requests run at once on however many nodes, the balance never goes below zero. A hold ends
exactly once: the UPDATE that ends it matches only while it is still open. Holds whose request
vanished (a node crashed) expire and are released by `expire_due`, which every core runs
periodically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import case, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core_service.billing.ledger import SYSTEM_USAGE_REVENUE, EntryKind, Transfer, post_in
from core_service.clock import Clock
from core_service.db.models import Balance, CreditHold, UsageDaily
from core_service.ids import new_id


@dataclass(frozen=True)
class Placed:
    hold_id: str | None  # None: not placed, the available balance was short
    available_nanos: int


@dataclass(frozen=True)
class Settlement:
    """What a request used, to settle its hold with."""

    cost_nanos: int
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


class Holds:
    def __init__(self, engine: AsyncEngine, clock: Clock, *, ttl_seconds: float) -> None:
        self._engine = engine
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)

    async def place(self, account_id: str, amount_nanos: int, *, request_id: str, model: str) -> Placed:
        now = self._clock.now()
        hold_id = new_id("hold")
        async with self._engine.begin() as conn:
            reserved = await conn.execute(
                update(Balance)
                .where(Balance.ledger_account == account_id)
                .where(Balance.balance_nanos - Balance.held_nanos >= amount_nanos)
                .values(held_nanos=Balance.held_nanos + amount_nanos)
            )
            if reserved.rowcount != 1:
                available = await conn.scalar(
                    select(Balance.balance_nanos - Balance.held_nanos).where(
                        Balance.ledger_account == account_id
                    )
                )
                return Placed(hold_id=None, available_nanos=max(int(available or 0), 0))
            await conn.execute(
                insert(CreditHold).values(
                    id=hold_id,
                    account_id=account_id,
                    amount_nanos=amount_nanos,
                    request_id=request_id[:128],
                    model=model,
                    status="open",
                    created_at=now,
                    expires_at=now + self._ttl,
                )
            )
        return Placed(hold_id=hold_id, available_nanos=0)

    async def settle(self, hold_id: str, usage: Settlement) -> int | None:
        """End the hold at the actual cost (never more than the hold). Returns the amount
        charged, or None when the hold had already ended."""
        now = self._clock.now()
        cost = max(usage.cost_nanos, 0)
        async with self._engine.begin() as conn:
            hold = await self._end(
                conn,
                hold_id,
                "settled",
                charged_nanos=case(
                    (CreditHold.amount_nanos < cost, CreditHold.amount_nanos), else_=cost
                ),
            )
            if hold is None:
                return None
            charge = min(cost, hold.amount_nanos)
            await self._unhold(conn, hold.account_id, hold.amount_nanos)
            if charge > 0:
                await post_in(
                    conn,
                    Transfer(
                        idempotency_key=f"usage:{hold_id}",
                        kind=EntryKind.USAGE,
                        debit_account=hold.account_id,
                        credit_account=SYSTEM_USAGE_REVENUE,
                        amount_nanos=charge,
                        actor=hold.request_id,
                        reason=f"{hold.model}: {usage.prompt_tokens} prompt + "
                        f"{usage.completion_tokens} completion tokens"
                        + (" (estimated)" if usage.estimated else ""),
                        reference=hold_id,
                    ),
                    now,
                )
            await self._add_usage(conn, hold.account_id, now.date(), hold.model, usage, charge)
        return charge

    async def release(self, hold_id: str) -> bool:
        """End the hold charging nothing (the request failed before any usage)."""
        async with self._engine.begin() as conn:
            hold = await self._end(conn, hold_id, "released")
            if hold is None:
                return False
            await self._unhold(conn, hold.account_id, hold.amount_nanos)
        return True

    async def expire_due(self, *, batch: int = 500) -> int:
        """Release holds past their expiry (their request vanished). Returns how many ended."""
        now = self._clock.now()
        async with self._engine.connect() as conn:
            due = (
                await conn.scalars(
                    select(CreditHold.id)
                    .where(CreditHold.status == "open", CreditHold.expires_at <= now)
                    .limit(batch)
                )
            ).all()
        ended = 0
        for hold_id in due:
            async with self._engine.begin() as conn:
                hold = await self._end(conn, hold_id, "expired")
                if hold is not None:
                    await self._unhold(conn, hold.account_id, hold.amount_nanos)
                    ended += 1
        return ended

    async def _end(
        self, conn: AsyncConnection, hold_id: str, status: str, **values: Any
    ) -> CreditHold | None:
        row = (
            await conn.execute(
                update(CreditHold)
                .where(CreditHold.id == hold_id, CreditHold.status == "open")
                .values(status=status, ended_at=self._clock.now(), **values)
                .returning(CreditHold.account_id, CreditHold.amount_nanos, CreditHold.model, CreditHold.request_id)
            )
        ).one_or_none()
        if row is None:
            return None
        return CreditHold(
            id=hold_id, account_id=row.account_id, amount_nanos=row.amount_nanos,
            model=row.model, request_id=row.request_id,
        )

    @staticmethod
    async def _unhold(conn: AsyncConnection, account_id: str, amount_nanos: int) -> None:
        if amount_nanos:
            await conn.execute(
                update(Balance)
                .where(Balance.ledger_account == account_id)
                .values(held_nanos=Balance.held_nanos - amount_nanos)
            )

    @staticmethod
    async def _add_usage(
        conn: AsyncConnection, account_id: str, day: date, model: str, usage: Settlement, charge: int
    ) -> None:
        values = dict(
            account_id=account_id,
            day=day,
            model=model,
            requests=1,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_nanos=charge,
            estimated_requests=1 if usage.estimated else 0,
        )
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(UsageDaily).values(**values)
        table = UsageDaily.__table__.c
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[table.account_id, table.day, table.model],
                set_={
                    name: table[name] + statement.excluded[name]
                    for name in ("requests", "prompt_tokens", "completion_tokens", "cost_nanos", "estimated_requests")
                },
            )
        )
