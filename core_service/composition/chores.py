"""The core's background chores: hold expiry, request-log retention, database health, probes
of ejected deployments, referral checks, and the shared-limits health entry. Each runs until
cancelled; a failed round is logged and tried again at the next interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grpc_health.v1 import health, health_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.holds import Holds
from core_service.logs.retention import LogRetention
from core_service.ratelimit.limiter import AccountLimiter
from kyma.contract.v1.constants import SHARED_LIMITS_HEALTH_SERVICE

log = logging.getLogger(__name__)

HOLD_EXPIRY_INTERVAL_SECONDS = 10.0
LOG_MAINTENANCE_INTERVAL_SECONDS = 3600.0
DATABASE_CHECK_INTERVAL_SECONDS = 1.0
DATABASE_CHECK_TIMEOUT_SECONDS = 2.0
LIMITER_REPORT_INTERVAL_SECONDS = 0.5

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def periodically(interval: float, work: Callable[[], Awaitable[Any]], name: str) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await work()
        except Exception:
            log.exception("%s failed; trying again in %.0fs", name, interval)


async def expire_holds(holds: Holds) -> None:
    await periodically(HOLD_EXPIRY_INTERVAL_SECONDS, holds.expire_due, "hold expiry")


async def maintain_logs(retention: LogRetention) -> None:
    async def maintain() -> None:
        await retention.ensure_partitions(days_ahead=2)
        report = await retention.purge()
        if report.rows or report.partitions:
            log.info(
                "request logs purged before %s: %d rows, partitions %s",
                report.cutoff,
                report.rows,
                report.partitions,
            )

    try:
        await maintain()
    except Exception:
        log.exception("log retention failed; trying again in an hour")
    await periodically(LOG_MAINTENANCE_INTERVAL_SECONDS, maintain, "log retention")


async def watch_database(engine: AsyncEngine, health_servicer: health.aio.HealthServicer) -> None:
    """The core is SERVING (overall health, and so the bridge's /readyz) only while its
    database answers: without it no request can be admitted or billed."""
    serving: bool | None = None
    while True:
        try:
            async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_SECONDS):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            ok = True
        except Exception:
            ok = False
        if ok != serving:
            serving = ok
            await health_servicer.set("", SERVING if ok else NOT_SERVING)
            if not ok:
                log.error("the database does not answer: reporting NOT_SERVING")
            else:
                log.info("the database answers: SERVING")
        await asyncio.sleep(DATABASE_CHECK_INTERVAL_SECONDS)


async def report_limiter(
    limiter: AccountLimiter, health_servicer: health.aio.HealthServicer
) -> None:
    """Keep the shared-limits health entry in step with the limiter (requests are served
    either way)."""
    shared: bool | None = None
    while True:
        if limiter.shared != shared:
            shared = limiter.shared
            await health_servicer.set(
                SHARED_LIMITS_HEALTH_SERVICE, SERVING if shared else NOT_SERVING
            )
        await asyncio.sleep(LIMITER_REPORT_INTERVAL_SECONDS)
