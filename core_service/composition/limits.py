"""Rate limits: the store (in process; a SQLite file shared by the workers of one machine; or
Redis with per-node fallback), the account limiter and the deployment gate."""

from __future__ import annotations

import contextlib
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


def _rate_limit_store(
    settings: Settings, clock: Clock
) -> tuple[RateLimitStore, FallbackRateLimitStore | None]:
    """In-process for one core; for several workers of one machine without Redis, a SQLite
    file in the data directory that they all open; with Redis, shared by every node and
    falling back to per-node limits (limit ÷ expected nodes) while Redis is unreachable."""
    local = InProcessRateLimitStore(clock)
    if settings.redis_url is None:
        if (settings.workers or 1) > 1:
            return SqliteRateLimitStore(settings.data_dir / RATE_LIMIT_FILE, clock), None
        return local, None
    import redis.asyncio

    from core_service.ratelimit.fallback import FallbackRateLimitStore
    from core_service.ratelimit.redis_store import RedisRateLimitStore

    timeout = settings.redis_timeout_ms / 1000
    # A full pool waits (within the timeout) instead of failing, so a burst is not mistaken
    # for Redis being down.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=200,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    store = FallbackRateLimitStore(
        RedisRateLimitStore(
            redis.asyncio.Redis(connection_pool=pool), clock, key_prefix=settings.redis_key_prefix
        ),
        local,
        clock,
        node_share=settings.expected_nodes,
        timeout_s=timeout,
    )
    return store, store


def open_limits(
    settings: Settings, clock: Clock, tasks: BackgroundTasks, stack: contextlib.AsyncExitStack
) -> Limits:
    store, shared_store = _rate_limit_store(settings, clock)
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
