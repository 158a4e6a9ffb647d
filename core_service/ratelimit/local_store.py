"""`InProcessRateLimitStore`: the rolling window of `store.py` held in this process, for one node.

Used on its own in single-node deployments and tests, and by `FallbackRateLimitStore` while Redis is
unreachable. Atomicity comes from the event loop: no method awaits between reading and writing, so
an `admit` is checked and consumed in one step (the store is not thread-safe, and needs not be).

Memory stays bounded: each counter is a deque of (second, count) buckets, oldest first, with a running
total (admission is O(1) amortized); buckets that leave the window are pruned on access. Counters are
kept in least-recently-written order, so counters whose newest bucket has left the window are dropped
from the front as time passes, and beyond `max_keys` the least recently written counter is dropped
(losing its counts: a memory bound that errs on the permissive side, and should never be reached).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence

from core_service.clock import Clock
from core_service.ratelimit.store import (
    WINDOW_S,
    Decision,
    Limit,
    LimitState,
    limit_state,
    now_ms,
    retry_after_s,
    window_floor,
)


class _Counter:
    __slots__ = ("buckets", "total", "newest_written")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, count], ascending seconds, counts > 0
        self.total = 0
        self.newest_written = 0

    def prune(self, floor: int) -> None:
        buckets = self.buckets
        while buckets and buckets[0][0] < floor:
            self.total -= buckets.popleft()[1]

    def add(self, second: int, delta: int) -> None:
        """Add `delta` to bucket `second`, clamped at zero; empty buckets are removed."""
        buckets = self.buckets
        index = len(buckets)
        while index > 0 and buckets[index - 1][0] > second:  # almost always zero steps
            index -= 1
        if index > 0 and buckets[index - 1][0] == second:
            bucket = buckets[index - 1]
            new = max(0, bucket[1] + delta)
            self.total += new - bucket[1]
            if new:
                bucket[1] = new
            else:
                del buckets[index - 1]
        elif delta > 0:
            buckets.insert(index, [second, delta])
            self.total += delta

    def newest(self) -> int | None:
        return self.buckets[-1][0] if self.buckets else None

    def items(self) -> Iterator[tuple[int, int]]:
        return ((second, count) for second, count in self.buckets)


class InProcessRateLimitStore:
    def __init__(self, clock: Clock, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._clock = clock
        self._max_keys = max_keys
        self._counters: OrderedDict[str, _Counter] = OrderedDict()
        self._slots: dict[str, dict[str, float]] = {}  # key -> token -> expiry (unix seconds)
        self._slots_swept_at = 0.0

    @property
    def key_count(self) -> int:
        """Counters currently held (for metrics and tests)."""
        return len(self._counters)

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        at_ms = now_ms(self._clock)
        second = at_ms // 1000
        floor = window_floor(second)
        self._drop_idle(floor)

        totals: dict[str, int] = {}
        for limit in limits:
            totals[limit.key] = totals.get(limit.key, 0) + limit.cost
        used: dict[str, int] = {key: self._used(key, floor) for key in totals}
        admitted = all(used[limit.key] + totals[limit.key] <= limit.limit for limit in limits)

        if admitted:
            for key, total in totals.items():
                if total:
                    counter = self._write_counter(key, second)
                    counter.add(second, total)
                    used[key] += total

        states = []
        for limit in limits:
            found = self._counters.get(limit.key)
            newest = found.newest() if found else None
            retry = 0
            if not admitted:
                excess = used[limit.key] + totals[limit.key] - limit.limit
                if excess > 0:
                    items = found.items() if found else iter(())
                    retry = retry_after_s(items, second, excess, totals[limit.key], limit.limit)
            states.append(
                limit_state(
                    limit.key,
                    limit.limit,
                    used=used[limit.key],
                    newest=newest,
                    at_ms=at_ms,
                    refused_retry_s=retry,
                )
            )
        return Decision(admitted=admitted, second=second, states=tuple(states))

    async def adjust(self, key: str, second: int, delta: int) -> None:
        floor = window_floor(now_ms(self._clock) // 1000)
        if second < floor or not delta:
            return
        counter = self._write_counter(key, second) if delta > 0 else self._counters.get(key)
        if counter is None:
            return
        counter.prune(floor)
        counter.add(second, delta)

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        at_ms = now_ms(self._clock)
        floor = window_floor(at_ms // 1000)
        states = []
        for limit in limits:
            used = self._used(limit.key, floor)
            counter = self._counters.get(limit.key)
            states.append(
                limit_state(
                    limit.key,
                    limit.limit,
                    used=used,
                    newest=counter.newest() if counter else None,
                    at_ms=at_ms,
                )
            )
        return tuple(states)

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        now = now_ms(self._clock) / 1000
        self._sweep_slots(now)
        held = self._slots.get(key)
        if held:
            for token in [token for token, expiry in held.items() if expiry <= now]:
                del held[token]
        if len(held or ()) >= limit:
            return None
        token = secrets.token_urlsafe(12)
        self._slots.setdefault(key, {})[token] = now + ttl_s
        return token

    async def release_slot(self, key: str, token: str) -> None:
        held = self._slots.get(key)
        if held is not None:
            held.pop(token, None)
            if not held:
                del self._slots[key]

    async def close(self) -> None:
        self._counters.clear()
        self._slots.clear()

    def _used(self, key: str, floor: int) -> int:
        counter = self._counters.get(key)
        if counter is None:
            return 0
        counter.prune(floor)
        return counter.total

    def _write_counter(self, key: str, second: int) -> _Counter:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = _Counter()
            if len(self._counters) > self._max_keys:
                self._counters.popitem(last=False)
        if second >= counter.newest_written:
            counter.newest_written = second
            self._counters.move_to_end(key)
        return counter

    def _drop_idle(self, floor: int) -> None:
        """Drop counters, least recently written first, whose newest bucket has left the window."""
        counters = self._counters
        while counters:
            key = next(iter(counters))
            if counters[key].newest_written >= floor:
                break
            del counters[key]

    def _sweep_slots(self, now: float) -> None:
        """Once a window, forget slot keys whose slots have all expired."""
        if now - self._slots_swept_at < WINDOW_S:
            return
        self._slots_swept_at = now
        for key in [
            key for key, held in self._slots.items() if all(e <= now for e in held.values())
        ]:
            del self._slots[key]
