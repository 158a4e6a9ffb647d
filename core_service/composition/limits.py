"""Rate limits: the store (in process; a SQLite file shared by the workers of one machine; or
Redis with per-node fallback), the account limiter and the deployment gate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core_service.clock import Clock
from core_service.ratelimit.limiter import AccountLimiter, DeploymentGate
from core_service.ratelimit.local_store import InProcessRateLimitStore
from core_service.ratelimit.sqlite_store import SqliteRateLimitStore
from core_service.ratelimit.store import RateLimitStore
from core_service.ratelimit.tiers import TierTable
from core_service.settings import Settings
from core_service.tasks import BackgroundTasks

if TYPE_CHECKING:  # imported when Redis is configured: the redis client is a large import
    from core_service.ratelimit.fallback import FallbackRateLimitStore
    from core_service.ratelimit.redis_store import RedisClient

logger = logging.getLogger(__name__)

# The workers' shared counters (see core_service/ratelimit/sqlite_store.py).
RATE_LIMIT_FILE = "ratelimit.db"


@dataclass(frozen=True)
class Limits:
    store: RateLimitStore
    limiter: AccountLimiter
    gate: DeploymentGate
    tiers: TierTable
    redis: FallbackRateLimitStore | None = None  # the store, when it is Redis's

    @property
    def fallbacks(self) -> int:
        """Limiter calls served per node because Redis was unreachable."""
        return 0 if self.redis is None else self.redis.fallbacks

    @property
    def unreconciled(self) -> int:
        """Counts admitted per node that Redis has yet to be told of."""
        return 0 if self.redis is None else self.redis.pending


def _redis_client(settings: Settings, url: str) -> RedisClient:
    """A client for the limiter alone. It has no socket timeout, and its connect and pool
    timeouts are far above the limiter's budget: the fallback store decides when Redis is too
    slow, measuring Redis's time, not this node's event loop (fallback.py). The pool holds
    `redis_warm_connections`, all opened at start-up: a burst waits for one of them rather than
    opening connections in the middle of it, whose handshakes (connect, CLIENT SETINFO) would
    count against that budget — a burst of 50 over 16 warm connections through a 5 ms link
    tripped the fallback that way."""
    import redis.asyncio
    import redis.asyncio.cluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    patience = max(1.0, 20 * settings.redis_timeout_ms / 1000)
    if settings.redis_cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(
            url,
            max_connections=200,
            socket_timeout=patience,
            socket_connect_timeout=patience,
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        # A connection that died with a restarted server is replaced once, at once: else each
        # pooled connection would fail one call after Redis is back.
        retry=Retry(NoBackoff(), 1),
        max_connections=settings.redis_warm_connections,
        timeout=patience,
        # No socket timeout of its own: every call of the limiter's store runs under the
        # fallback's Redis-time budget, which cancels it (and redis-py then drops the
        # connection); a socket timeout would make redis-py wrap every command's write in
        # asyncio.wait_for, a task per command.
        socket_timeout=None,
        socket_connect_timeout=patience,
    )
    return redis.asyncio.Redis(connection_pool=pool)


async def _rate_limit_store(
    settings: Settings, clock: Clock
) -> tuple[RateLimitStore, FallbackRateLimitStore | None]:
    """In-process for one core; for several workers of one machine without Redis, a SQLite
    file in the data directory that they all open; with Redis, shared by every node and
    falling back to per-node limits (limit ÷ expected nodes) while Redis is unreachable. The
    pool is warmed first; a Redis that is down at start-up only means the node starts on
    per-node limits."""
    local = InProcessRateLimitStore(clock)
    if settings.redis_url is None:
        if (settings.workers or 1) > 1:
            return SqliteRateLimitStore(settings.data_dir / RATE_LIMIT_FILE, clock), None
        return local, None
    import redis.exceptions

    from core_service.ratelimit.fallback import FallbackRateLimitStore
    from core_service.ratelimit.redis_store import RedisRateLimitStore

    shared = RedisRateLimitStore(
        _redis_client(settings, settings.redis_url), clock, key_prefix=settings.redis_key_prefix
    )
    try:
        await asyncio.wait_for(shared.warm(settings.redis_warm_connections), 5)
    except (TimeoutError, redis.exceptions.RedisError, OSError) as error:
        logger.warning("rate-limit store not reachable at start-up (%s)", type(error).__name__)
    store = FallbackRateLimitStore(
        shared,
        local,
        clock,
        node_share=settings.expected_nodes,
        timeout_s=settings.redis_timeout_ms / 1000,
        warm=lambda: shared.warm(settings.redis_warm_connections),
    )
    return store, store


async def open_limits(
    settings: Settings, clock: Clock, tasks: BackgroundTasks, stack: contextlib.AsyncExitStack
) -> Limits:
    store, shared_store = await _rate_limit_store(settings, clock)
    stack.push_async_callback(store.close)

    def shared() -> bool:
        return shared_store is not None and not shared_store.degraded

    return Limits(
        store=store,
        redis=shared_store,
        limiter=AccountLimiter(store, tasks, shared=shared),
        gate=DeploymentGate(store, tasks),
        tiers=TierTable(settings.tiers),
    )
