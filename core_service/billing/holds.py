"""Two-phase holds: set aside a request's worst-case cost before it is forwarded, then settle at
the actual cost and release the rest — through the database's one writer (`writer.py`), which
commits them a batch at a time and decides each against the available balance, so however
many requests run at once on however many nodes, a balance never goes below zero.

A hold ends exactly once: the statement that ends it matches only while it is still open.

Failure semantics:

- **The client goes away while its hold is being placed.** The place goes on; once it is
  placed, it is released (`place` is safe to cancel at any point).
- **The database is unavailable.** Placing fails at once with ServiceUnavailable (503); a
  settlement waits in the writer's queue and is retried until it lands.
- **A node dies.** Its holds stay open until its lease lapses (`nodes.py`); then any other
  node ends them at their last checkpoint — for a stream, the tokens it had delivered at most
  a second before — never simply releases them.
- **A hold outlives its TTL on its own node** without the node knowing of it (it cannot
  happen but through a bug): it is ended the same way, at its last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.hold_store import (
    Checkpoint,
    Ending,
    EndOrder,
    NewHold,
    Refusal,
    Settlement,
)
from core_service.billing.writer import HoldWriter
from core_service.clock import Clock
from core_service.db.models import CoreNode, CreditHold
from core_service.ids import new_id
from core_service.nodes import NodeLease

__all__ = ["Holds", "Placed", "Settlement"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placed:
    hold_id: str | None  # None: not placed, the available balance (or the key's cap) was short
    available_nanos: int
    # Not placed because the key's spend cap left only `available_nanos`.
    key_cap: bool = False


class Holds:
    def __init__(
        self,
        writer: HoldWriter,
        reads: AsyncEngine,
        clock: Clock,
        *,
        ttl_seconds: float,
        lease: NodeLease | None = None,
        writes: AsyncEngine | None = None,
    ) -> None:
        self._writer = writer
        self._reads = reads
        self._writes = writes or reads
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)
        self._lease = lease
        # The holds this node placed and has not yet ended (nobody else ends them).
        self._open: set[str] = set()

    @property
    def writer(self) -> HoldWriter:
        return self._writer

    async def place(
        self,
        account_id: str,
        amount_nanos: int,
        *,
        request_id: str,
        model: str,
        key_id: str | None = None,
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
            node_id=self._lease.node_id if self._lease else None,
            key_id=key_id or None,
        )
        decided = self._writer.place(hold)
        self._open.add(hold.hold_id)
        try:
            short = await asyncio.shield(decided)
        except asyncio.CancelledError:
            # The caller is gone; the writer is not. Whatever it decides is undone.
            decided.add_done_callback(lambda done: self._abandon(done, hold))
            raise
        except BaseException:
            self._open.discard(hold.hold_id)
            raise
        if short is not None:
            self._open.discard(hold.hold_id)
            return Placed(
                hold_id=None, available_nanos=short.available_nanos, key_cap=short.key_cap
            )
        return Placed(hold_id=hold.hold_id, available_nanos=0)

    def _abandon(self, decided: asyncio.Future[Refusal | None], hold: NewHold) -> None:
        if decided.cancelled() or decided.exception() is not None or decided.result() is not None:
            self._open.discard(hold.hold_id)
            return  # not placed
        self.release(hold.hold_id, hold.account_id, key_id=hold.key_id)

    def settle(
        self, hold_id: str, account_id: str, usage: Settlement, *, key_id: str | None = None
    ) -> asyncio.Future[int | None]:
        """End the hold at the actual cost (never more than the hold), retried until it lands.
        Resolves to the amount charged, or None when the hold had already ended. `key_id` is
        the key it was placed through (its spend row is locked with the balance)."""
        return self._end(
            EndOrder(hold_id, account_id, Ending.SETTLED, self._clock.now(), usage, key_id)
        )

    def release(
        self, hold_id: str, account_id: str, *, key_id: str | None = None
    ) -> asyncio.Future[int | None]:
        """End the hold charging nothing (the request failed before any usage)."""
        return self._end(
            EndOrder(hold_id, account_id, Ending.RELEASED, self._clock.now(), key_id=key_id)
        )

    def checkpoint(self, hold_id: str, account_id: str, usage: Settlement) -> None:
        """Record what the hold's request has used so far (a stream: what it delivered)."""
        self._writer.checkpoint(Checkpoint(hold_id, account_id, usage, self._clock.now()))

    def _end(self, order: EndOrder) -> asyncio.Future[int | None]:
        ended = self._writer.end(order)
        ended.add_done_callback(lambda _: self._open.discard(order.hold_id))
        return ended

    async def expire_due(self, *, batch: int = 500) -> int:
        """End, at their last checkpoint, the open holds nobody will end: those of dead nodes
        (judged only once this node has reached the database for a whole lease), those of no
        node past their expiry, and this node's own past their expiry that it no longer
        tracks. Returns how many ended."""
        now = self._clock.now()
        mine = self._lease.node_id if self._lease else None
        ownerless = and_(CreditHold.node_id.is_(None), CreditHold.expires_at <= now)
        lost = and_(CreditHold.node_id == mine, CreditHold.expires_at <= now)
        due = [ownerless, lost] if mine else [CreditHold.expires_at <= now]
        if self._lease is not None and self._lease.may_judge_others():
            due.append(and_(CreditHold.node_id != mine, self._lease.lapsed_condition()))
        statement = (
            select(CreditHold.id, CreditHold.account_id, CreditHold.node_id, CreditHold.key_id)
            .outerjoin(CoreNode, CoreNode.node_id == CreditHold.node_id)
            .where(CreditHold.status == "open", or_(*due))
            .limit(batch)
        )
        async with self._reads.connect() as conn:
            rows = (await conn.execute(statement)).all()
        orders = [
            self._writer.end(
                EndOrder(row.id, row.account_id, Ending.EXPIRED, now, key_id=row.key_id)
            )
            for row in rows
            if not (row.node_id == mine and row.id in self._open)
        ]
        results = await asyncio.gather(*orders)
        ended = sum(1 for charged in results if charged is not None)
        if ended:
            log.warning(
                "ended %d holds that no live request will settle (at their last checkpoint)", ended
            )
        return ended

    async def prune_ended(self, *, older_than: timedelta, batch: int = 5000) -> int:
        """Delete holds that ended longer ago than `older_than` (their ledger entries stay:
        the ledger is kept whole), a batch at a time so no delete holds locks for long."""
        cutoff = self._clock.now() - older_than
        pruned = 0
        while True:
            doomed = (
                select(CreditHold.id)
                .where(CreditHold.status != "open", CreditHold.ended_at < cutoff)
                .limit(batch)
                .scalar_subquery()
            )
            async with self._writes.begin() as conn:
                result = await conn.execute(delete(CreditHold).where(CreditHold.id.in_(doomed)))
            deleted = int(result.rowcount or 0)
            pruned += deleted
            if deleted < batch:
                return pruned
