"""The account-event feed: what every node must learn within seconds of it happening on any
node — a key revoked, an account suspended, banned, reinstated, re-tiered or credited.

A change is recorded in `account_events` in the same transaction as the change itself, and
every node follows the feed (`follow`), polling every `poll_seconds` with one indexed read,
so key lookups can be cached for minutes while a revocation still takes effect everywhere
within about a poll. PostgreSQL may commit ids out of order (a lower id committing after a
higher one was read), so each poll also re-reads the last `LOOKBACK` of events by time and
applies only those it has not seen.

Failure semantics: while the database is unreachable nothing new is learned (and nothing
can be served either: every request needs its hold); once it answers, the feed catches up
from where it was, within the lookback, and further back by id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core_service.clock import Clock
from core_service.db.models import AccountEvent

log = logging.getLogger(__name__)

KEY_REVOKED = "key_revoked"
KEY_CHANGED = "key_changed"  # its limits: every node drops its cached lookup
SESSION_ENDED = "session_ended"  # key_hash holds the session token's hash
SESSIONS_ENDED = "sessions_ended"  # every session of account_id
ACCOUNT_CHANGED = "account_changed"
LOOKBACK = timedelta(seconds=30)


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    account_id: str | None
    key_hash: bytes | None


class AccountEvents:
    def __init__(self, engine: AsyncEngine, reads: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._reads = reads
        self._clock = clock
        self._last_id = 0
        self._seen: dict[int, datetime] = {}

    async def record_in(
        self,
        conn: AsyncConnection,
        kind: str,
        *,
        account_id: str | None = None,
        key_hash: bytes | None = None,
    ) -> None:
        """Record a change inside the caller's transaction (so it is seen iff it happened)."""
        await conn.execute(
            insert(AccountEvent).values(
                kind=kind, account_id=account_id, key_hash=key_hash, created_at=self._clock.now()
            )
        )

    async def record(
        self, kind: str, *, account_id: str | None = None, key_hash: bytes | None = None
    ) -> None:
        async with self._engine.begin() as conn:
            await self.record_in(conn, kind, account_id=account_id, key_hash=key_hash)

    async def start_from_now(self) -> None:
        """Follow only what happens from now on (nothing is cached before the node starts)."""
        async with self._reads.connect() as conn:
            self._last_id = int(await conn.scalar(select(func.max(AccountEvent.id))) or 0)

    async def poll(self) -> list[Event]:
        """The events not seen yet, oldest first."""
        now = self._clock.now()
        since = now - LOOKBACK
        statement = (
            select(
                AccountEvent.id, AccountEvent.kind, AccountEvent.account_id, AccountEvent.key_hash
            )
            .where(or_(AccountEvent.id > self._last_id, AccountEvent.created_at >= since))
            .order_by(AccountEvent.id)
            .limit(10_000)
        )
        async with self._reads.connect() as conn:
            rows = (await conn.execute(statement)).all()
        fresh = [
            Event(row.id, row.kind, row.account_id, row.key_hash)
            for row in rows
            if row.id not in self._seen
        ]
        for event in fresh:
            self._seen[event.id] = now
            self._last_id = max(self._last_id, event.id)
        for old in [i for i, at in self._seen.items() if at < now - 2 * LOOKBACK]:
            del self._seen[old]
        return fresh

    async def follow(self, apply: Callable[[Event], None], *, poll_seconds: float) -> None:
        """Apply every new event as it appears, until cancelled."""
        failing = False
        while True:
            try:
                for event in await self.poll():
                    apply(event)
                failing = False
            except Exception as error:
                if not failing:
                    log.warning(
                        "cannot read the account-event feed (%s); retrying", type(error).__name__
                    )
                failing = True
            await asyncio.sleep(poll_seconds)

    async def prune(self, *, older_than: timedelta) -> int:
        cutoff = self._clock.now() - older_than
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(AccountEvent).where(AccountEvent.created_at < cutoff)
            )
        return int(result.rowcount or 0)
