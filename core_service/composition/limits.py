"""Rate limits: the store (in process, or Redis with per-node fallback), the account limiter
and the deployment gate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core_service.clock import Clock
from core_service.ratelimit.fallback import FallbackRateLimitStore
from core_service.ratelimit.limiter import AccountLimiter, DeploymentGate
from core_service.ratelimit.local_store import InProcessRateLimitStore
from core_service.ratelimit.redis_store import RedisClient, RedisRateLimitStore
from core_service.ratelimit.store import RateLimitStore
from core_service.ratelimit.tiers import TierTable
from core_service.settings import Settings
from core_service.tasks import BackgroundTasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    store: RateLimitStore
    limiter: AccountLimiter
    gate: DeploymentGate
    tiers: TierTable

    @property
    def fallbacks(self) -> int:
        """Limiter calls served per node because Redis was unreachable."""
        return self.store.fallbacks if isinstance(self.store, FallbackRateLimitStore) else 0

    @property
    def unreconciled(self) -> int:
        """Counts admitted per node that Redis has yet to be told of."""
        return self.store.pending if isinstance(self.store, FallbackRateLimitStore) else 0


def _redis_client(settings: Settings, url: str) -> RedisClient:
    """A client for the limiter alone. Its own timeouts are far above the limiter's budget:
    the fallback store decides when Redis is too slow, measuring Redis's time, not this node's
    event loop (fallback.py); a full pool waits rather than fails."""
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
        max_connections=200,
        timeout=patience,
        socket_timeout=patience,
        socket_connect_timeout=patience,
    )
    return redis.asyncio.Redis(connection_pool=pool)


async def _rate_limit_store(settings: Settings, clock: Clock) -> RateLimitStore:
    """In-process on one node; with Redis, shared by every node and falling back to per-node
    limits (limit ÷ expected nodes) while Redis is unreachable. The pool is warmed first; a
    Redis that is down at start-up only means the node starts on per-node limits."""
    local = InProcessRateLimitStore(clock)
    if settings.redis_url is None:
        return local
    shared = RedisRateLimitStore(
        _redis_client(settings, settings.redis_url), clock, key_prefix=settings.redis_key_prefix
    )
    try:
        await asyncio.wait_for(shared.warm(settings.redis_warm_connections), 5)
    except (TimeoutError, redis.exceptions.RedisError, OSError) as error:
        logger.warning("rate-limit store not reachable at start-up (%s)", type(error).__name__)
    return FallbackRateLimitStore(
        shared,
        local,
        clock,
        node_share=settings.expected_nodes,
        timeout_s=settings.redis_timeout_ms / 1000,
        warm=lambda: shared.warm(settings.redis_warm_connections),
    )


async def open_limits(
    settings: Settings, clock: Clock, tasks: BackgroundTasks, stack: contextlib.AsyncExitStack
) -> Limits:
    store = await _rate_limit_store(settings, clock)
    stack.push_async_callback(store.close)

    def shared() -> bool:
        return isinstance(store, FallbackRateLimitStore) and not store.degraded

    return Limits(
        store=store,
        limiter=AccountLimiter(store, tasks, shared=shared),
        gate=DeploymentGate(store, tasks),
        tiers=TierTable(settings.tiers),
    )
