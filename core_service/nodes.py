"""Core nodes and their leases: which processes are alive, as the database sees them.

Each core registers a row in `core_nodes` when it starts and renews its heartbeat every
`heartbeat_seconds`; a node whose heartbeat is older than `lease_seconds` (or that has no row)
is taken for dead, and the open holds it placed are ended by the others (at their last
checkpoint). While a node lives, it alone ends its holds — however long its settlements wait
for the database.

A node judges others dead only once it has itself reached the database for a whole lease
without a break: after an outage every heartbeat looks old, and each live node gets that long
to renew its own before anyone takes it for dead.
"""

from __future__ import annotations

import logging
import secrets
import socket
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import Clock
from core_service.db.models import CoreNode

log = logging.getLogger(__name__)


def new_node_id() -> str:
    return f"node_{secrets.token_hex(8)}"


class NodeLease:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        node_id: str,
        lease_seconds: float,
        heartbeat_seconds: float,
    ) -> None:
        if heartbeat_seconds * 2 > lease_seconds:
            raise ValueError("the lease must outlast at least two heartbeats")
        self.node_id = node_id
        self._engine = engine
        self._clock = clock
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._reachable_since: float | None = None

    async def register(self) -> None:
        now = self._clock.now()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(CoreNode).values(
                    node_id=self.node_id,
                    host=socket.gethostname()[:200],
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        self._reachable_since = self._clock.monotonic()

    async def heartbeat(self) -> None:
        """Renew the lease (and the row, if a long outage let another node prune it)."""
        try:
            now = self._clock.now()
            async with self._engine.begin() as conn:
                renewed = await conn.execute(
                    update(CoreNode)
                    .where(CoreNode.node_id == self.node_id)
                    .values(heartbeat_at=now)
                )
                if renewed.rowcount == 0:
                    await conn.execute(
                        insert(CoreNode).values(
                            node_id=self.node_id,
                            host=socket.gethostname()[:200],
                            started_at=now,
                            heartbeat_at=now,
                        )
                    )
        except Exception:
            self._reachable_since = None
            raise
        if self._reachable_since is None:
            self._reachable_since = self._clock.monotonic()

    def may_judge_others(self) -> bool:
        """Whether this node has reached the database for a whole lease without a break."""
        since = self._reachable_since
        return since is not None and self._clock.monotonic() - since >= self.lease_seconds

    async def leave(self) -> None:
        """At a clean stop, after this node's settlements have landed."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(CoreNode).where(CoreNode.node_id == self.node_id))

    async def prune(self, *, older_than: timedelta) -> int:
        """Forget nodes dead for longer than `older_than` (their holds have long ended)."""
        cutoff = self._clock.now() - older_than
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(CoreNode).where(CoreNode.heartbeat_at < cutoff))
        return int(result.rowcount or 0)

    def lapsed_condition(self) -> ColumnElement[bool]:
        """SQL: the node of a hold (`CoreNode` outer-joined on it) is dead."""
        cutoff = self._clock.now() - timedelta(seconds=self.lease_seconds)
        return or_(CoreNode.node_id.is_(None), CoreNode.heartbeat_at < cutoff)

    async def live_nodes(self) -> list[str]:
        cutoff = self._clock.now() - timedelta(seconds=self.lease_seconds)
        async with self._engine.connect() as conn:
            rows = await conn.scalars(
                select(CoreNode.node_id).where(CoreNode.heartbeat_at >= cutoff)
            )
            return list(rows)
