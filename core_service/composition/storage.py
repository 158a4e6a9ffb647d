"""The database: the engine (migrated before anything serves), the hold store beside it, the
ledger, and the request log's writer and retention."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.hold_store import HoldStore
from core_service.billing.ledger import Ledger
from core_service.billing.stores import open_hold_store
from core_service.clock import Clock
from core_service.db.engine import create_engine, migrate
from core_service.logs.retention import LogRetention
from core_service.logs.writer import RequestLogWriter
from core_service.settings import Settings


@dataclass(frozen=True)
class Storage:
    engine: AsyncEngine
    hold_store: HoldStore
    ledger: Ledger
    request_log: RequestLogWriter
    retention: LogRetention


async def open_storage(
    settings: Settings, clock: Clock, stack: contextlib.AsyncExitStack
) -> Storage:
    engine = create_engine(settings.sqlalchemy_url)
    stack.push_async_callback(engine.dispose)
    await migrate(engine)
    hold_store = await open_hold_store(settings.sqlalchemy_url)
    stack.push_async_callback(hold_store.close)
    return Storage(
        engine=engine,
        hold_store=hold_store,
        ledger=Ledger(engine, clock),
        request_log=RequestLogWriter(engine, clock, capacity=settings.log_buffer_capacity),
        retention=LogRetention(engine, clock, days=settings.log_retention_days),
    )
