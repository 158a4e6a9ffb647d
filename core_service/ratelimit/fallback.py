"""`FallbackRateLimitStore`: Redis when it answers, per-node limits when it does not.

Every call goes to `primary` (the Redis store) under ``asyncio.timeout(timeout_s)``. A timeout, a
`redis.exceptions.RedisError` or an `OSError` switches the store to *degraded*: the call and all calls
for the next `retry_interval_s` (monotonic clock) are served by `local` (the in-process store) without
trying Redis, with every limit divided by `node_share` (the expected number of nodes, so the fleet as
a whole stays near the global limit; at least 1 per non-zero limit; costs unchanged). After the interval one
call probes Redis again (the others keep going local meanwhile); if it answers, the store recovers.
One WARNING is logged on entering degraded mode and one INFO on leaving it, never one per request;
`degraded` and `fallbacks` (calls to `admit`, `peek` and `acquire_slot` served locally) feed health
and metrics. Callers never see a Redis error.

While degraded, `LimitState.limit` is the per-node limit, which is what applied.

Follow-ups go where the admission was made:

- `adjust(key, second, …)` goes to `local` if that (key, second) was admitted locally (remembered for
  one window), else to `primary`; if that fails, or the store is degraded, the true-up is dropped.
- Slot tokens from `local` carry the prefix ``local:`` (those from Redis ``redis:``), so
  `release_slot` reaches the store that holds the slot, even after recovery.

A call that times out may still have been applied by Redis (the reply was late, not lost): those
requests are then counted twice, which errs on the safe side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.exceptions

from core_service.clock import Clock
from core_service.ratelimit.store import (
    Decision,
    Limit,
    LimitState,
    RateLimitStore,
    window_floor,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PRIMARY_ERRORS = (TimeoutError, redis.exceptions.RedisError, OSError)
_LOCAL_TOKEN = "local:"
_PRIMARY_TOKEN = "redis:"


class FallbackRateLimitStore:
    def __init__(
        self,
        primary: RateLimitStore,
        local: RateLimitStore,
        clock: Clock,
        *,
        node_share: int,
        timeout_s: float = 0.05,
        retry_interval_s: float = 1.0,
    ) -> None:
        if node_share < 1:
            raise ValueError("node_share must be >= 1")
        self._primary = primary
        self._local = local
        self._clock = clock
        self._node_share = node_share
        self._timeout_s = timeout_s
        self._retry_interval_s = retry_interval_s
        self._degraded = False
        self._next_probe = 0.0  # monotonic time before which a degraded store does not try Redis
        self._fallbacks = 0
        # second -> keys admitted locally in that second, kept for one window (routes adjust).
        self._local_admissions: dict[int, set[str]] = {}

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def fallbacks(self) -> int:
        return self._fallbacks

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        if self._should_try_primary():
            try:
                decision = await self._on_primary(lambda: self._primary.admit(limits))
            except _PRIMARY_ERRORS as error:
                self._enter_degraded(error)
            else:
                self._leave_degraded()
                return decision
        self._fallbacks += 1
        decision = await self._local.admit(self._per_node(limits))
        if decision.admitted:
            self._remember_local(decision.second, limits)
        return decision

    async def adjust(self, key: str, second: int, delta: int) -> None:
        if key in self._local_admissions.get(second, ()):
            await self._local.adjust(key, second, delta)
            return
        if self._degraded:
            return  # admitted by Redis, which is away: the true-up is lost
        try:
            await self._on_primary(lambda: self._primary.adjust(key, second, delta))
        except _PRIMARY_ERRORS as error:
            self._enter_degraded(error)

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        if self._should_try_primary():
            try:
                states = await self._on_primary(lambda: self._primary.peek(limits))
            except _PRIMARY_ERRORS as error:
                self._enter_degraded(error)
            else:
                self._leave_degraded()
                return states
        self._fallbacks += 1
        return await self._local.peek(self._per_node(limits))

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        if self._should_try_primary():
            try:
                token = await self._on_primary(
                    lambda: self._primary.acquire_slot(key, limit, ttl_s)
                )
            except _PRIMARY_ERRORS as error:
                self._enter_degraded(error)
            else:
                self._leave_degraded()
                return None if token is None else _PRIMARY_TOKEN + token
        self._fallbacks += 1
        token = await self._local.acquire_slot(key, self._share(limit), ttl_s)
        return None if token is None else _LOCAL_TOKEN + token

    async def release_slot(self, key: str, token: str) -> None:
        if token.startswith(_LOCAL_TOKEN):
            await self._local.release_slot(key, token.removeprefix(_LOCAL_TOKEN))
            return
        if self._degraded:
            return  # Redis expires the slot by itself
        try:
            await self._on_primary(
                lambda: self._primary.release_slot(key, token.removeprefix(_PRIMARY_TOKEN))
            )
        except _PRIMARY_ERRORS as error:
            self._enter_degraded(error)

    async def close(self) -> None:
        try:
            await self._primary.close()
        except _PRIMARY_ERRORS:
            pass
        await self._local.close()

    async def _on_primary(self, call: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self._timeout_s):
            return await call()

    def _should_try_primary(self) -> bool:
        if not self._degraded:
            return True
        now = self._clock.monotonic()
        if now < self._next_probe:
            return False
        # This call probes; concurrent ones stay local until the next interval.
        self._next_probe = now + self._retry_interval_s
        return True

    def _enter_degraded(self, error: BaseException) -> None:
        self._next_probe = self._clock.monotonic() + self._retry_interval_s
        if not self._degraded:
            self._degraded = True
            reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            logger.warning(
                "rate-limit store unreachable (%s): serving per-node limits (1/%d of each) and retrying every %.1fs",
                reason,
                self._node_share,
                self._retry_interval_s,
            )

    def _leave_degraded(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.info("rate-limit store reachable again: serving shared limits")

    def _share(self, limit: int) -> int:
        # At least 1, so a small limit is not closed by rounding; a limit of 0 stays closed.
        return max(1, limit // self._node_share) if limit > 0 else 0

    def _per_node(self, limits: Sequence[Limit]) -> list[Limit]:
        return [Limit(limit.key, self._share(limit.limit), limit.cost) for limit in limits]

    def _remember_local(self, second: int, limits: Sequence[Limit]) -> None:
        floor = window_floor(second)
        for old in [s for s in self._local_admissions if s < floor]:
            del self._local_admissions[old]
        self._local_admissions.setdefault(second, set()).update(limit.key for limit in limits)
