"""The core's background chores: hold expiry, request-log retention, database health, probes
of ejected deployments, referral checks, low-balance alerts, keys' and sessions' last use, and
the shared-limits health entry. Each runs until
cancelled; a failed round is logged and tried again at the next interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from grpc_health.v1 import health, health_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.holds import Holds
from core_service.logs.retention import LogRetention
from core_service.nodes import NodeLease
from core_service.ratelimit.limiter import AccountLimiter
from core_service.settings import Settings
from core_service.status.outcomes import OutcomeCounter
from kyma.contract.v1.constants import SHARED_LIMITS_HEALTH_SERVICE

log = logging.getLogger(__name__)

HOLD_EXPIRY_INTERVAL_SECONDS = 2.0
LOG_MAINTENANCE_INTERVAL_SECONDS = 3600.0
DATABASE_CHECK_INTERVAL_SECONDS = 1.0
DATABASE_CHECK_TIMEOUT_SECONDS = 2.0
LIMITER_REPORT_INTERVAL_SECONDS = 0.5
LAST_USED_INTERVAL_SECONDS = 30.0
LOW_BALANCE_INTERVAL_SECONDS = 5.0
OUTCOMES_INTERVAL_SECONDS = 5.0

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


async def last_used(flush: Callable[[], Awaitable[int]]) -> None:
    """Write keys' and sessions' last use, a statement for all of each, every so often."""
    try:
        await periodically(LAST_USED_INTERVAL_SECONDS, flush, "last used")
    finally:
        with contextlib.suppress(Exception):
            await flush()


async def count_outcomes(outcomes: OutcomeCounter) -> None:
    """Add this node's request outcomes to the shared counts every few seconds, and drop
    counts older than the status page looks (hourly)."""
    rounds = 0

    async def work() -> None:
        nonlocal rounds
        await outcomes.flush()
        rounds += 1
        if rounds % int(LOG_MAINTENANCE_INTERVAL_SECONDS / OUTCOMES_INTERVAL_SECONDS) == 1:
            await outcomes.prune()

    try:
        await periodically(OUTCOMES_INTERVAL_SECONDS, work, "request outcomes")
    finally:
        with contextlib.suppress(Exception):
            await outcomes.flush()


async def heartbeat(lease: NodeLease) -> None:
    """Renew this node's lease; a failed renewal (the database away) is retried next time."""
    failing = False
    while True:
        await asyncio.sleep(lease.heartbeat_seconds)
        try:
            await lease.heartbeat()
        except Exception as error:
            if not failing:
                log.warning("cannot renew this node's lease (%s); retrying", type(error).__name__)
            failing = True
        else:
            failing = False


async def prune(holds: Holds, lease: NodeLease, settings: Settings) -> None:
    """Ended holds past their retention, and nodes long dead, go (the ledger stays)."""

    async def work() -> None:
        pruned = await holds.prune_ended(older_than=timedelta(days=settings.hold_retention_days))
        nodes = await lease.prune(older_than=timedelta(days=1))
        if pruned or nodes:
            log.info("pruned %d ended holds and %d dead nodes", pruned, nodes)

    await periodically(LOG_MAINTENANCE_INTERVAL_SECONDS, work, "pruning")


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


async def watch_database(
    engine: AsyncEngine,
    health_servicer: health.aio.HealthServicer,
    on_change: Callable[[bool], None] = lambda serving: None,
) -> None:
    """The core is SERVING (overall health, and so the bridge's /readyz) only while its
    database answers: without it no request can be admitted or billed. `on_change` hears each
    change (the relay drains its streams while the core does not serve).

    A database that refuses or breaks the connection is judged down at once. A check that only
    outlasts its timeout is made again at once, and the database judged down only if that one
    times out too: a core whose own event loop stalled for a moment (a busy machine, a long
    garbage collection) would otherwise tell every bridge to route around it for a second."""
    serving: bool | None = None
    timed_out = False
    while True:
        try:
            async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_SECONDS):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            ok = True
        except TimeoutError:
            if not timed_out:
                timed_out = True
                continue
            ok = False
        except Exception:
            ok = False
        timed_out = False
        if ok != serving:
            serving = ok
            await health_servicer.set("", SERVING if ok else NOT_SERVING)
            on_change(ok)
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
