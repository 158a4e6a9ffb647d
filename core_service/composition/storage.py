"""The database: the engine (migrated before anything serves) and its read-only view, the one
writer of holds and settlements with its store, this node's lease, the ledger, and the request
log's writer and retention."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.hold_store import HoldStore
from core_service.billing.ledger import Ledger
from core_service.billing.stores import open_hold_store
from core_service.billing.writer import HoldWriter
from core_service.clock import Clock
from core_service.db.engine import create_engine, migrate, reads
from core_service.logs.retention import LogRetention
from core_service.logs.writer import RequestLogWriter
from core_service.nodes import NodeLease, new_node_id
from core_service.settings import Settings


@dataclass(frozen=True)
class Storage:
    engine: AsyncEngine
    # The same pool for reads: autocommit, and on SQLite without the write lock.
    reads: AsyncEngine
    hold_store: HoldStore
    writer: HoldWriter
    lease: NodeLease
    ledger: Ledger
    request_log: RequestLogWriter
    retention: LogRetention


async def open_storage(
    settings: Settings, clock: Clock, stack: contextlib.AsyncExitStack
) -> Storage:
    engine = create_engine(
        settings.sqlalchemy_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pgbouncer=settings.database_pgbouncer,
    )
    stack.push_async_callback(engine.dispose)
    await migrate(engine)
    hold_store = open_hold_store(settings.sqlalchemy_url, pgbouncer=settings.database_pgbouncer)
    stack.push_async_callback(hold_store.close)
    read_engine = reads(engine, pgbouncer=settings.database_pgbouncer)
    return Storage(
        engine=engine,
        reads=read_engine,
        hold_store=hold_store,
        writer=HoldWriter(hold_store, clock),
        lease=NodeLease(
            engine,
            clock,
            node_id=new_node_id(),
            lease_seconds=settings.node_lease_seconds,
            heartbeat_seconds=settings.node_heartbeat_seconds,
        ),
        ledger=Ledger(engine, clock, reads=read_engine),
        request_log=RequestLogWriter(engine, clock, capacity=settings.log_buffer_capacity),
        retention=LogRetention(engine, clock, days=settings.log_retention_days),
    )
