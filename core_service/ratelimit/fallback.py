"""`FallbackRateLimitStore`: Redis when it answers, per-node limits when it does not, and what was
admitted meanwhile counted into Redis when it is back.

When does a node fall back? Only when Redis itself fails: a `redis.exceptions.RedisError`, an
`OSError`, or no answer within `timeout_s` *of Redis time*. A node whose own event loop is late (a
burst of requests, a long callback, CPU starvation) must not mistake its own slowness for Redis's,
so the timeout is not a wall-clock deadline: the call is watched by a chain of `_STEPS` timers
of ``timeout_s / _STEPS`` and each counts only its scheduled length, however late the loop ran
it. If the loop is blocked for a second while the reply sits in the socket, the first late
wake-up finds the reply there (or spends one step); a Redis that does not answer still uses up
the budget in `_STEPS` wake-ups, however busy the loop. (The composition root gives the redis
client no socket timeout and connect and pool timeouts far above this budget, for the same
reason; its pool is its warm connections, opened at start-up and again by each recovery probe:
`warm`, see `RedisRateLimitStore.warm`.)

A failure switches the store to *degraded*: the call and all calls for the next `retry_interval_s`
(monotonic clock) are served by `local` (the in-process store) without trying Redis, with every
limit divided by `node_share` (the expected number of nodes; at least 1 per non-zero limit; costs
unchanged). After the interval the first call starts a probe *in the background* and is served
locally, as are the others meanwhile: the probe warms the pool again and counts the journal into
Redis (below), with `probe_timeout_s` (20 timeouts by default: reconnecting costs round trips a
warm pool does not). No request waits for it — a Redis that hangs instead of refusing would
otherwise add up to `probe_timeout_s` to one request per interval. Once the probe has
succeeded, calls go to Redis again, and the first that Redis answers ends degraded mode. Only a
call that started after the store went degraded can end it: a late reply to a call made before
the failure proves nothing. One WARNING is logged on entering degraded mode and one INFO on leaving it; `degraded`
and `fallbacks` (calls to `admit`, `peek` and `acquire_slot` served locally) feed health and
metrics. Callers never see a Redis error. While degraded, `LimitState.limit` is the per-node limit.

What keeps fallback from multiplying a limit:

1. Seeds. The store remembers, per counter, the most Redis reported as used in the current window
   (from every decision it got). The first time a degraded node counts a key locally it seeds its
   local counter with its share of that, ``ceil(used / node_share)``, so the nodes together start
   from what Redis had counted instead of from zero.
2. Reconciliation. Everything admitted locally (and every true-up made while degraded) is kept in a
   journal of (key, second) -> delta. Before the probe that ends degraded mode, the journal is
   counted into Redis (`adjust` at the admission's own second; the Redis store moves its window
   forward for it, see store.py); only if that succeeds does the store leave degraded mode, so no
   shared admission is decided before Redis knows what the node admitted alone. Entries whose
   second has left the window are dropped: they can no longer matter.

The documented fallback share: in any 60-second window a node admits locally at most
``limit // node_share`` (at least 1) per counter, minus its seed; Redis admits at most ``limit``
including everything reconciled before it decided. So across the fleet a window admits at most
``limit + nodes × (limit // node_share)`` — the limit plus one limit more when ``node_share``
is the real number of nodes — and only while Redis is actually unreachable; with the seeds, a
window Redis had already filled admits nothing more during an outage.

Follow-ups go where the admission was made:

- `adjust(key, second, …)` goes to `local` (and the journal) if that (key, second) was admitted
  locally and not yet reconciled, else to `primary`; while degraded, it is journaled for Redis.
- Slot tokens from `local` carry the prefix ``local:`` (those from Redis ``redis:``), so
  `release_slot` reaches the store that holds the slot, even after recovery. Concurrency slots are
  not reconciled: they are instantaneous, and Redis's own expire their holders' leftovers.

A call that times out may still have been applied by Redis (the reply was late, not lost): those
requests are then counted twice, which errs on the safe side; likewise a reconciliation that timed
out is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.exceptions

from core_service.clock import Clock
from core_service.ratelimit.store import (
    Decision,
    Limit,
    LimitState,
    RateLimitStore,
    now_ms,
    window_floor,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PRIMARY_ERRORS = (TimeoutError, redis.exceptions.RedisError, OSError)
_LOCAL_TOKEN = "local:"
_PRIMARY_TOKEN = "redis:"
_STEPS = 5
# Bounds on what is remembered per counter (seeds) and kept for Redis (journal).
_MAX_SEEN = 100_000
_MAX_JOURNAL = 100_000


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
        probe_timeout_s: float | None = None,
        warm: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        if node_share < 1:
            raise ValueError("node_share must be >= 1")
        self._primary = primary
        self._local = local
        self._clock = clock
        self._node_share = node_share
        self._timeout_s = timeout_s
        self._retry_interval_s = retry_interval_s
        self._probe_timeout_s = 20 * timeout_s if probe_timeout_s is None else probe_timeout_s
        self._warm = warm
        self._degraded = False
        self._next_probe = 0.0  # monotonic time before which a degraded store does not try Redis
        self._fallbacks = 0
        # second -> keys admitted locally in that second, not yet reconciled (routes adjust).
        self._local_admissions: dict[int, set[str]] = {}
        # key -> (newest second, most used) Redis reported in the window: the seeds.
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._seeded: set[str] = set()  # keys seeded in this degraded episode
        # (key, second) -> what Redis has yet to count.
        self._journal: dict[tuple[str, int], int] = {}
        self._reconciled = 0
        self._reconciling = False
        self._episode = 0  # counts the times the store went degraded
        self._probe: asyncio.Task[None] | None = None
        self._probed = False  # degraded, but a probe has reconnected and counted the journal

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def fallbacks(self) -> int:
        return self._fallbacks

    @property
    def reconciled(self) -> int:
        """Journal entries counted into Redis after an outage (for metrics and tests)."""
        return self._reconciled

    @property
    def pending(self) -> int:
        """Journal entries Redis has yet to count."""
        return len(self._journal)

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        if await self._primary_usable():
            episode = self._episode
            try:
                decision = await self._on_primary(lambda: self._primary.admit(limits))
            except _PRIMARY_ERRORS as error:
                self._enter_degraded(error)
            else:
                self._leave_degraded(episode)
                self._remember_seen(decision.second, decision.states)
                return decision
        self._fallbacks += 1
        await self._seed(limits)
        decision = await self._local.admit(self._per_node(limits))
        if decision.admitted:
            self._remember_local(decision.second, limits)
        return decision

    async def adjust(self, key: str, second: int, delta: int) -> None:
        if not delta:
            return
        if key in self._local_admissions.get(second, ()):
            await self._local.adjust(key, second, delta)
            self._journal_add(key, second, delta)
            return
        if self._degraded:
            self._journal_add(key, second, delta)  # counted into Redis when it is back
            return
        try:
            await self._on_primary(lambda: self._primary.adjust(key, second, delta))
        except _PRIMARY_ERRORS as error:
            self._enter_degraded(error)
            if delta > 0:
                # Maybe applied already (a late reply): sending it again errs on the safe side;
                # a give-back is not repeated, for the same reason.
                self._journal_add(key, second, delta)

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        if await self._primary_usable():
            episode = self._episode
            try:
                states = await self._on_primary(lambda: self._primary.peek(limits))
            except _PRIMARY_ERRORS as error:
                self._enter_degraded(error)
            else:
                self._leave_degraded(episode)
                return states
        self._fallbacks += 1
        await self._seed(limits)
        return await self._local.peek(self._per_node(limits))

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        if await self._primary_usable():
            episode = self._episode
            try:
                token = await self._on_primary(
                    lambda: self._primary.acquire_slot(key, limit, ttl_s)
                )
            except _PRIMARY_ERRORS as error:
                self._enter_degraded(error)
            else:
                self._leave_degraded(episode)
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

    async def probe_finished(self) -> None:
        """Wait for the probe under way, if any (for tests: requests never wait for it)."""
        if self._probe is not None:
            await asyncio.shield(self._probe)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        try:
            await self._primary.close()
        except _PRIMARY_ERRORS:
            pass
        await self._local.close()

    async def _on_primary(self, call: Callable[[], Awaitable[T]], budget: float = 0.0) -> T:
        """`call()`, given `budget` (default `timeout_s`) of Redis time (module docstring): a
        chain of `_STEPS` timers, each counting its scheduled length however late the loop ran
        it, and the call cancelled (TimeoutError) when the last one fires. The call runs in the
        caller's task, with no watcher task and no `asyncio.wait` per step."""
        loop = asyncio.get_running_loop()
        step = (budget or self._timeout_s) / _STEPS
        steps = 0
        timer: asyncio.TimerHandle | None = None
        async with asyncio.timeout(None) as deadline:

            def tick() -> None:
                nonlocal steps, timer
                steps += 1
                if steps < _STEPS:
                    timer = loop.call_later(step, tick)
                else:
                    deadline.reschedule(loop.time())  # expires now: the call is cancelled

            timer = loop.call_later(step, tick)
            try:
                return await call()
            finally:
                timer.cancel()
        raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises

    async def _primary_usable(self) -> bool:
        """Whether this call goes to Redis: when healthy, yes (after counting in any journal
        left over, within `timeout_s`); when degraded, only once a probe (started in the
        background by the first call after each retry interval) has reconnected and Redis has
        counted what was admitted without it."""
        if self._degraded and not self._probed:
            now = self._clock.monotonic()
            if now >= self._next_probe and (self._probe is None or self._probe.done()):
                self._next_probe = now + self._retry_interval_s
                self._probe = asyncio.get_running_loop().create_task(self._run_probe(self._episode))
            return False
        if not self._journal or self._reconciling:
            return True
        self._reconciling = True
        try:
            await self._on_primary(self._reconcile, self._timeout_s)
        except _PRIMARY_ERRORS as error:
            self._enter_degraded(error)
            return False
        finally:
            self._reconciling = False
        return True

    async def _run_probe(self, episode: int) -> None:
        # No call reaches the journal meanwhile: degraded and not yet probed, they go local.
        try:
            await self._on_primary(self._recover, self._probe_timeout_s)
        except _PRIMARY_ERRORS as error:
            self._enter_degraded(error)
            return
        except Exception:  # a bug, not Redis: stay degraded, and say so
            logger.exception("the rate-limit store's recovery probe failed")
            return
        if self._degraded and self._episode == episode:
            self._probed = True

    async def _recover(self) -> None:
        if self._degraded and self._warm is not None:
            await self._warm()
        await self._reconcile()

    async def _reconcile(self) -> None:
        """Count the journal into Redis; what was sent is removed from it as it succeeds."""
        floor = window_floor(now_ms(self._clock) // 1000)
        for entry in [entry for entry in self._journal if entry[1] < floor]:
            del self._journal[entry]
        entries = list(self._journal.items())

        async def send(key: str, second: int, delta: int) -> None:
            await self._primary.adjust(key, second, delta)
            rest = self._journal.pop((key, second), 0) - delta
            if rest:  # changed meanwhile: the rest is sent next time
                self._journal[(key, second)] = rest
            else:  # Redis holds it now: its true-ups go there
                self._local_admissions.get(second, set()).discard(key)
            self._reconciled += 1

        results = await asyncio.gather(
            *(send(key, second, delta) for (key, second), delta in entries),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _enter_degraded(self, error: BaseException) -> None:
        self._next_probe = self._clock.monotonic() + self._retry_interval_s
        self._probed = False
        if not self._degraded:
            self._degraded = True
            self._episode += 1
            self._seeded.clear()
            reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            logger.warning(
                "rate-limit store unreachable (%s): serving per-node limits (1/%d of each) and retrying every %.1fs",
                reason,
                self._node_share,
                self._retry_interval_s,
            )

    def _leave_degraded(self, episode: int) -> None:
        if self._degraded and episode == self._episode:
            self._degraded = False
            self._probed = False
            logger.info(
                "rate-limit store reachable again: serving shared limits (%d fallback counts reconciled so far)",
                self._reconciled,
            )

    def _share(self, limit: int) -> int:
        # At least 1, so a small limit is not closed by rounding; a limit of 0 stays closed.
        return max(1, limit // self._node_share) if limit > 0 else 0

    def _per_node(self, limits: Sequence[Limit]) -> list[Limit]:
        return [Limit(limit.key, self._share(limit.limit), limit.cost) for limit in limits]

    def _remember_seen(self, second: int, states: Sequence[LimitState]) -> None:
        floor = window_floor(second)
        seen = self._seen
        for state in states:
            used = state.limit - state.remaining
            before = seen.pop(state.key, None)
            if before is not None and before[0] >= floor:
                used = max(used, before[1])
            seen[state.key] = (max(second, before[0] if before else second), used)
        while seen and (len(seen) > _MAX_SEEN or next(iter(seen.values()))[0] < floor):
            seen.popitem(last=False)

    async def _seed(self, limits: Sequence[Limit]) -> None:
        for limit in limits:
            if limit.key in self._seeded:
                continue
            self._seeded.add(limit.key)
            found = self._seen.get(limit.key)
            if found is not None and found[1] > 0:
                second, used = found
                share = -(-used // self._node_share)
                await self._local.adjust(limit.key, second, share)

    def _remember_local(self, second: int, limits: Sequence[Limit]) -> None:
        floor = window_floor(second)
        for old in [s for s in self._local_admissions if s < floor]:
            del self._local_admissions[old]
        self._local_admissions.setdefault(second, set()).update(limit.key for limit in limits)
        totals: dict[str, int] = {}
        for limit in limits:
            totals[limit.key] = totals.get(limit.key, 0) + limit.cost
        for key, cost in totals.items():
            self._journal_add(key, second, cost)

    def _journal_add(self, key: str, second: int, delta: int) -> None:
        entry = (key, second)
        total = self._journal.get(entry, 0) + delta
        if total:
            self._journal[entry] = total
        else:
            self._journal.pop(entry, None)
        if len(self._journal) > _MAX_JOURNAL:  # a memory bound: the oldest entries go first
            del self._journal[next(iter(self._journal))]
