"""Stored responses (OpenAI's Responses API with `store`), read from the request log.

A stored response is its request's log row (`response_id` set; see migration 0013): it is
retrieved, continued (`previous_response_id`) and deleted only by the account that made it,
and it lives and dies with the row — retention purges it with the logs.

Rows are written in batches, off the request path (`writer.py`), so a response may be asked
for before its row is in the database: on the core that served it the writer is flushed at
once; a response made by another core moments ago (its id says when) is waited for until its
core's batch can have landed. Failure semantics: a row the log buffer dropped (the database
was down long enough to fill it) was never stored — it reads as not found; deleting a response
clears its `response_id`, so it is no longer retrievable or continuable, while the log row
itself stays for the retention window like every other.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import Clock
from core_service.logs.query import REQUEST_LOGS
from core_service.logs.writer import RequestLogWriter

_PREFIX = "resp_"
# A conversation longer than this is not continued (each turn is one stored response).
MAX_CHAIN = 10_000
# How long a reader waits, beyond the writer's interval, for another core's fresh row.
SETTLE_SECONDS = 2.0
_POLL_SECONDS = 0.05


def new_response_id(now: datetime) -> str:
    """`resp_` + when it was made (seconds, hex) + 40 random hex digits."""
    return f"{_PREFIX}{int(now.timestamp()):08x}{secrets.token_hex(20)}"


def issued_at(response_id: str) -> float | None:
    """When a response id of Kyma's making was made (None for any other string)."""
    stamp = response_id[len(_PREFIX) : len(_PREFIX) + 8]
    if not response_id.startswith(_PREFIX) or len(stamp) != 8:
        return None
    try:
        return float(int(stamp, 16))
    except ValueError:
        return None


def _stored(account_id: str, response_id: str) -> sa.ColumnElement[bool]:
    table = REQUEST_LOGS
    return sa.and_(
        table.c.response_id == response_id,
        table.c.account_id == account_id,
        table.c.status == "ok",
    )


class StoredResponses:
    def __init__(
        self,
        engine: AsyncEngine,
        reads: AsyncEngine,
        writer: RequestLogWriter,
        clock: Clock,
        *,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self._settle_seconds = settle_seconds
        self._engine = engine
        self._reads = reads
        self._writer = writer
        self._clock = clock

    async def _settled(self, response_id: str, attempt: int) -> bool:
        """Whether to look again for a row not found (`attempt` looks so far)."""
        window = self._writer.flush_interval + self._settle_seconds
        if attempt == 0 and self._writer.pending:
            return await self._writer.flush(timeout=window)
        made = issued_at(response_id)
        # Only an id made moments ago (by the clock of the core that made it, which may run a
        # little ahead of this one) is waited for, and never longer than the window.
        if made is None or abs(self._clock.now().timestamp() - made) > window:
            return False
        if attempt * _POLL_SECONDS > window:
            return False
        await asyncio.sleep(_POLL_SECONDS)
        return True

    async def chain(self, account_id: str, response_id: str) -> list[tuple[str, str]] | None:
        """The conversation a response ends: (request body, response body) of it and every
        stored response it continues, oldest first; None if the account has no such stored
        response, or a response it continues is no longer stored."""
        attempt = 0
        while True:
            found = await self._chain(account_id, response_id)
            if found is not None or not await self._settled(response_id, attempt):
                return found
            attempt += 1

    async def _chain(self, account_id: str, response_id: str) -> list[tuple[str, str]] | None:
        table = REQUEST_LOGS
        first = (
            sa.select(
                table.c.response_id,
                table.c.previous_response_id,
                table.c.request_body,
                table.c.response_body,
                sa.literal(0).label("depth"),
            )
            .where(_stored(account_id, response_id))
            .cte("chain", recursive=True)
        )
        step = sa.select(
            table.c.response_id,
            table.c.previous_response_id,
            table.c.request_body,
            table.c.response_body,
            (first.c.depth + 1).label("depth"),
        ).where(
            table.c.response_id == first.c.previous_response_id,
            table.c.account_id == account_id,
            table.c.status == "ok",
            first.c.depth < MAX_CHAIN,
        )
        chain = first.union_all(step)
        statement = sa.select(
            chain.c.previous_response_id, chain.c.request_body, chain.c.response_body
        ).order_by(chain.c.depth.desc())
        async with self._reads.connect() as conn:
            rows = (await conn.execute(statement)).all()
        if not rows or rows[0].previous_response_id is not None:
            return None  # not stored, or what it continues is gone
        return [(row.request_body, row.response_body) for row in rows]

    async def get(self, account_id: str, response_id: str) -> str | None:
        """The stored response object (JSON), or None."""
        attempt = 0
        statement = sa.select(REQUEST_LOGS.c.response_body).where(_stored(account_id, response_id))
        while True:
            async with self._reads.connect() as conn:
                found = (await conn.execute(statement.limit(1))).scalar_one_or_none()
            if found is not None or not await self._settled(response_id, attempt):
                return found
            attempt += 1

    async def delete(self, account_id: str, response_id: str) -> bool:
        """Stop storing a response (its log row stays); False if there was none to delete."""
        attempt = 0
        statement = (
            sa.update(REQUEST_LOGS).where(_stored(account_id, response_id)).values(response_id=None)
        )
        while True:
            async with self._engine.begin() as conn:
                deleted = (await conn.execute(statement)).rowcount
            if deleted or not await self._settled(response_id, attempt):
                return bool(deleted)
            attempt += 1
