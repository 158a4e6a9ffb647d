"""Two-phase holds: set aside a request's worst-case cost before it is forwarded, then settle at
the actual cost and release the rest.

A hold is placed with one conditional UPDATE (available balance >= amount), so however many
requests run at once on however many nodes, the balance never goes below zero. A hold ends
exactly once: the UPDATE that ends it matches only while it is still open. Holds whose request
vanished (a node crashed) expire and are released by `expire_due`, which every core runs
periodically. The writes themselves are the HoldStore's (one per database backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.hold_store import HoldStore, NewHold, Settlement, SettleOrder
from core_service.clock import Clock
from core_service.db.models import CreditHold
from core_service.ids import new_id

__all__ = ["Holds", "Placed", "Settlement"]


@dataclass(frozen=True)
class Placed:
    hold_id: str | None  # None: not placed, the available balance was short
    available_nanos: int


class Holds:
    def __init__(
        self, store: HoldStore, engine: AsyncEngine, clock: Clock, *, ttl_seconds: float
    ) -> None:
        self._store = store
        self._engine = engine
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)

    async def place(
        self, account_id: str, amount_nanos: int, *, request_id: str, model: str
    ) -> Placed:
        now = self._clock.now()
        hold = NewHold(
            hold_id=new_id("hold"),
            account_id=account_id,
            amount_nanos=amount_nanos,
            request_id=request_id,
            model=model,
            created_at=now,
            expires_at=now + self._ttl,
        )
        short = await self._store.place(hold)
        if short is not None:
            return Placed(hold_id=None, available_nanos=short)
        return Placed(hold_id=hold.hold_id, available_nanos=0)

    async def settle(self, hold_id: str, usage: Settlement) -> int | None:
        """End the hold at the actual cost (never more than the hold). Returns the amount
        charged, or None when the hold had already ended."""
        return await self._store.settle(SettleOrder(hold_id, usage, self._clock.now()))

    async def release(self, hold_id: str) -> bool:
        """End the hold charging nothing (the request failed before any usage)."""
        return await self._store.end(hold_id, "released", self._clock.now())

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
            if await self._store.end(hold_id, "expired", now):
                ended += 1
        return ended
