"""The rate-limit stores against the window semantics of `core_service/ratelimit/store.py`.

Shared behaviour runs on the in-process store and on the Redis store (the real server on
127.0.0.1:6379, a fresh key prefix per test), both on a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
import pytest_asyncio
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from core_service.ratelimit.local_store import InProcessRateLimitStore
from core_service.ratelimit.redis_store import RedisRateLimitStore
from core_service.ratelimit.store import Decision, Limit, LimitState, RateLimitStore, rate_key

T0 = 1_800_000_000  # a whole unix second; the fake clock starts 250 ms into it


class FakeClock:
    def __init__(self) -> None:
        self.ms = T0 * 1000 + 250
        self.mono = 1000.0

    def now(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.ms)

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)
        self.mono += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def delete_prefix(prefix: str) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"kyma:test:{secrets.token_hex(6)}:"
    yield prefix
    await delete_prefix(prefix)


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[RateLimitStore]:
    if request.param == "local":
        yield InProcessRateLimitStore(clock)
        return
    prefix = f"kyma:test:{secrets.token_hex(6)}:"
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    store = RedisRateLimitStore(client, clock, key_prefix=prefix)
    try:
        yield store
    finally:
        await store.close()
        await delete_prefix(prefix)


async def admit_one(store: RateLimitStore, *limits: Limit) -> Decision:
    decision = await store.admit(limits)
    assert len(decision.states) == len(limits)
    assert [state.key for state in decision.states] == [limit.key for limit in limits]
    return decision


async def test_admits_exactly_the_limit_within_a_second(
    store: RateLimitStore, clock: FakeClock
) -> None:
    rpm = Limit("acct:a:rpm", 5, 1)
    for i in range(5):
        decision = await admit_one(store, rpm)
        assert decision.admitted and decision.second == T0
        assert decision.states[0].remaining == 4 - i
        assert decision.states[0].reset_ms == 59_750
        assert decision.retry_after_s == 0 and decision.states[0].retry_after_s == 0
    refused = await admit_one(store, rpm)
    assert not refused.admitted
    assert refused.states[0].remaining == 0
    assert refused.states[0].retry_after_s == 60 and refused.retry_after_s == 60
    clock.advance(0.5)
    refused = await admit_one(store, rpm)
    assert not refused.admitted
    assert refused.states[0].reset_ms == 59_250 and refused.retry_after_s == 60


async def test_a_refusal_consumes_nothing(store: RateLimitStore) -> None:
    tpm = Limit("acct:a:tpm", 100, 10)
    model_rpm = Limit("acct:a:model:m:rpm", 2, 1)
    assert (await admit_one(store, tpm, model_rpm)).admitted
    assert (await admit_one(store, tpm, model_rpm)).admitted
    refused = await admit_one(store, tpm, model_rpm)
    assert not refused.admitted
    assert refused.states[0].retry_after_s == 0 and refused.states[0].remaining == 80
    assert refused.states[1].retry_after_s == 60 and refused.retry_after_s == 60
    assert [s.remaining for s in await store.peek([tpm, model_rpm])] == [80, 0]

    # Refused by the first limit: the second keeps its room.
    rpm = Limit("acct:a:rpm", 10, 1)
    refused = await admit_one(store, Limit("acct:a:tpm", 100, 81), rpm)
    assert not refused.admitted and refused.states[1].retry_after_s == 0
    assert [s.remaining for s in await store.peek([tpm, rpm])] == [80, 10]


async def test_the_window_frees_after_60_seconds(store: RateLimitStore, clock: FakeClock) -> None:
    rpm = Limit("acct:a:rpm", 3, 1)
    for _ in range(3):
        assert (await admit_one(store, rpm)).admitted
    clock.advance(59)
    refused = await admit_one(store, rpm)
    assert not refused.admitted and refused.retry_after_s == 1
    clock.advance(1)
    assert [(await admit_one(store, rpm)).admitted for _ in range(4)] == [True, True, True, False]


async def test_the_rolling_window_frees_exactly_the_oldest_bucket(
    store: RateLimitStore, clock: FakeClock
) -> None:
    rpm = Limit("acct:a:rpm", 60, 1)
    for _ in range(3):
        assert (await admit_one(store, rpm)).admitted  # second 0 holds 3
    for _ in range(1, 58):
        clock.advance(1)
        assert (await admit_one(store, rpm)).admitted  # seconds 1..57 hold 1 each: 60 in all
    clock.advance(1)
    refused = await admit_one(store, rpm)
    assert not refused.admitted and refused.retry_after_s == 2  # second 58: bucket 0 leaves at 60
    clock.advance(1)
    assert (await admit_one(store, rpm)).retry_after_s == 1
    clock.advance(1)  # second 60: bucket 0 has left, freeing exactly 3
    assert [(await admit_one(store, rpm)).admitted for _ in range(4)] == [True, True, True, False]
    assert (await store.peek([rpm]))[0].remaining == 0


async def test_retry_after_is_accurate_to_the_second(
    store: RateLimitStore, clock: FakeClock
) -> None:
    key = "acct:a:tpm"
    for seconds, cost in [(0, 30), (10, 20), (10, 40)]:
        clock.advance(seconds)
        assert (await admit_one(store, Limit(key, 100, cost))).admitted  # s0: 30, s10: 20, s20: 40
    clock.advance(10)  # s30: 90 used; 50 more needs 40 freed: buckets 0 and 10, gone at s70
    request = Limit(key, 100, 50)
    refused = await admit_one(store, request)
    assert not refused.admitted and refused.retry_after_s == 40
    clock.advance(39)
    refused = await admit_one(store, request)
    assert not refused.admitted and refused.retry_after_s == 1
    clock.advance(1)
    assert (await admit_one(store, request)).admitted


async def test_retry_after_on_random_histories(store: RateLimitStore, clock: FakeClock) -> None:
    rng = random.Random(20260101)
    limit = 100
    for trial in range(12):
        key = f"acct:{trial}:tpm"
        for _ in range(rng.randint(5, 40)):
            clock.advance(rng.randint(0, 3000) / 1000)
            await store.admit([Limit(key, limit, rng.randint(1, 30))])
        remaining = (await store.peek([Limit(key, limit, 0)]))[0].remaining
        if remaining == limit:
            continue
        request = Limit(key, limit, rng.randint(remaining + 1, limit))
        refused = await store.admit([request])
        assert not refused.admitted
        wait = refused.retry_after_s
        assert 1 <= wait <= 60
        if wait > 1:
            clock.advance(wait - 1)
            assert not (await store.admit([request])).admitted
        clock.advance(1)
        assert (await store.admit([request])).admitted


async def test_remaining_and_reset(store: RateLimitStore, clock: FakeClock) -> None:
    key = "acct:a:tpm"
    assert (await store.peek([Limit(key, 10, 0)]))[0].remaining == 10
    assert (await store.peek([Limit(key, 10, 0)]))[0].reset_ms == 0
    await store.admit([Limit(key, 10, 2)])  # bucket T0
    clock.advance(10)
    decision = await admit_one(store, Limit(key, 10, 3))  # bucket T0+10, at T0+10.25
    assert decision.states[0].remaining == 5
    assert decision.states[0].reset_ms == 59_750
    clock.advance(0.5)
    (state,) = await store.peek([Limit(key, 10, 999)])
    assert (state.remaining, state.reset_ms, state.retry_after_s) == (5, 59_250, 0)
    clock.advance(50)  # T0+60.75: bucket T0 has left
    (state,) = await store.peek([Limit(key, 10, 0)])
    assert (state.remaining, state.reset_ms) == (7, 9_250)
    clock.advance(10)  # T0+70.75: empty
    (state,) = await store.peek([Limit(key, 10, 0)])
    assert (state.remaining, state.reset_ms) == (10, 0)


async def test_cost_zero_is_admitted_and_counts_nothing(store: RateLimitStore) -> None:
    empty = await admit_one(store, Limit("acct:b:tpm", 10, 0))
    assert empty.admitted and empty.states[0].remaining == 10 and empty.states[0].reset_ms == 0
    rpm = Limit("acct:a:rpm", 2, 1)
    await store.admit([rpm])
    await store.admit([rpm])
    decision = await admit_one(store, Limit("acct:a:rpm", 2, 0))
    assert decision.admitted and decision.states[0].remaining == 0
    assert not (await store.admit([rpm])).admitted


async def test_a_cost_above_the_limit_never_fits(store: RateLimitStore) -> None:
    rpm = Limit("acct:a:rpm", 10, 1)
    refused = await admit_one(store, Limit("acct:a:tpm", 5, 6), rpm)
    assert not refused.admitted
    assert refused.states[0].retry_after_s == 60 and refused.states[0].remaining == 5
    assert refused.states[1].retry_after_s == 0
    assert [s.remaining for s in await store.peek([Limit("acct:a:tpm", 5, 0), rpm])] == [5, 10]
    zero = await admit_one(store, Limit("acct:a:closed", 0, 1))
    assert not zero.admitted and zero.retry_after_s == 60


async def test_the_same_key_twice_must_hold_the_total(store: RateLimitStore) -> None:
    refused = await admit_one(store, Limit("k", 10, 3), Limit("k", 5, 3))
    assert not refused.admitted and refused.states[1].retry_after_s == 60
    decision = await admit_one(store, Limit("k", 10, 2), Limit("k", 5, 2))
    assert decision.admitted and [s.remaining for s in decision.states] == [6, 1]


async def test_no_limits_admits(store: RateLimitStore) -> None:
    decision = await store.admit([])
    assert decision.admitted and decision.states == () and decision.second == T0
    assert await store.peek([]) == ()


async def test_peek_is_read_only(store: RateLimitStore) -> None:
    rpm = Limit("acct:a:rpm", 1, 1)
    for _ in range(3):
        assert (await store.peek([rpm]))[0].remaining == 1
    assert (await store.admit([rpm])).admitted


async def test_concurrent_admits_admit_exactly_the_limit(store: RateLimitStore) -> None:
    limits = [Limit("acct:a:rpm", 25, 1), Limit("acct:a:tpm", 10_000, 7)]
    decisions = await asyncio.gather(*(store.admit(limits) for _ in range(100)))
    assert sum(d.admitted for d in decisions) == 25
    assert [s.remaining for s in await store.peek(limits)] == [0, 10_000 - 25 * 7]


@pytest.mark.redis
async def test_two_nodes_share_one_limit(clock: FakeClock, redis_prefix: str) -> None:
    clients = [redis.asyncio.Redis(host="127.0.0.1", port=6379) for _ in range(2)]
    nodes = [RedisRateLimitStore(client, clock, key_prefix=redis_prefix) for client in clients]
    try:
        rpm = [Limit("acct:a:rpm", 25, 1)]
        decisions = await asyncio.gather(*(nodes[i % 2].admit(rpm) for i in range(100)))
        assert sum(d.admitted for d in decisions) == 25
        assert (
            sum(d.admitted for d in decisions[0::2]) > 0
            and sum(d.admitted for d in decisions[1::2]) > 0
        )
    finally:
        for node in nodes:
            await node.close()  # closes its client


async def test_adjust_returns_tokens_but_never_below_zero(store: RateLimitStore) -> None:
    tpm = Limit("acct:a:tpm", 1000, 400)
    decision = await store.admit([tpm])
    assert decision.states[0].remaining == 600
    await store.adjust(tpm.key, decision.second, -150)
    assert (await store.peek([tpm]))[0].remaining == 750
    await store.adjust(tpm.key, decision.second, 50)  # a true-up can also add
    assert (await store.peek([tpm]))[0].remaining == 700
    await store.adjust(tpm.key, decision.second, -10_000)
    (state,) = await store.peek([tpm])
    assert state.remaining == 1000 and state.reset_ms == 0
    # Had the bucket gone negative, more than the limit would now fit.
    assert (await store.admit([Limit(tpm.key, 1000, 1000)])).admitted
    assert not (await store.admit([Limit(tpm.key, 1000, 1)])).admitted


async def test_adjust_ignores_buckets_outside_the_window(
    store: RateLimitStore, clock: FakeClock
) -> None:
    tpm = Limit("acct:a:tpm", 1000, 100)
    old = await store.admit([tpm])
    clock.advance(60)
    recent = await store.admit([tpm])
    await store.adjust(tpm.key, old.second, 500)
    await store.adjust(tpm.key, old.second, -100)
    assert (await store.peek([tpm]))[0].remaining == 900
    await store.adjust(tpm.key, recent.second, -100)
    assert (await store.peek([tpm]))[0].remaining == 1000
    await store.adjust("acct:never:tpm", recent.second, -5)
    assert (await store.peek([Limit("acct:never:tpm", 10, 0)]))[0].remaining == 10


async def test_slots(store: RateLimitStore, clock: FakeClock) -> None:
    key = "dep:m/x:concurrency"
    first = await store.acquire_slot(key, 2, 30)
    second = await store.acquire_slot(key, 2, 30)
    assert first and second and first != second
    assert await store.acquire_slot(key, 2, 30) is None
    await store.release_slot(key, first)
    await store.release_slot(key, "not-a-token")
    third = await store.acquire_slot(key, 2, 30)
    assert third is not None
    assert await store.acquire_slot(key, 2, 30) is None
    clock.advance(29.9)
    assert await store.acquire_slot(key, 2, 30) is None
    clock.advance(0.1)  # both slots held have expired: nobody released them
    assert await store.acquire_slot(key, 2, 30) is not None
    assert await store.acquire_slot(key, 2, 30) is not None
    assert await store.acquire_slot(key, 2, 30) is None


async def test_keys_are_safe_for_any_model_name(store: RateLimitStore) -> None:
    names = [
        "a:b",
        "a",
        "b:rpm",
        "a/b",
        "a b",
        "a*b?[c]",
        "ünï ✓",
        "a%3Ab",
        "x" * 500,
        "x" * 501,
        "",
    ]
    keys = [rate_key("acct", "1", "model", name, "rpm") for name in names]
    keys += [
        "raw:a b",
        "raw:a%20b",
        "raw:a:b",
        "raw:a%3Ab",
    ]  # distinct for the store, escaped or not
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert (await store.admit([Limit(key, 1, 1)])).admitted, key
    for key in keys:
        assert not (await store.admit([Limit(key, 1, 1)])).admitted, key
    for key in keys:
        assert await store.acquire_slot(key, 1, 10) is not None
        assert await store.acquire_slot(key, 1, 10) is None


@pytest.mark.redis
async def test_redis_prunes_old_buckets_and_expires_keys(
    clock: FakeClock, redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    store = RedisRateLimitStore(redis_client, clock, key_prefix=redis_prefix)
    rpm = Limit("acct:a:rpm", 100, 1)
    for _ in range(5):
        await store.admit([rpm])
        clock.advance(1)
    hash_key = store.window_key(rpm.key)
    assert hash_key == redis_prefix + "{acct:a}:w:acct:a:rpm"  # the account's hash tag
    fields = await redis_client.hgetall(hash_key)
    # Five buckets (a ring: second s in field s % 60), the running total, the newest stamp and
    # the newest second written.
    assert T0 % 60 == 0
    assert fields == {
        **{str(i).encode(): b"1" for i in range(5)},
        b"n": b"5",
        b"l": str(T0 + 4).encode(),
        b"w": str(T0 + 4).encode(),
    }
    assert 90 <= await redis_client.ttl(hash_key) <= 95
    clock.advance(57)  # T0+62: buckets T0..T0+2 leave, one by one as they go
    decision = await store.admit([rpm])
    assert decision.states[0].remaining == 97
    assert await redis_client.hlen(hash_key) == 3 + 3
    clock.advance(60)
    decision = await store.admit([rpm])
    assert decision.states[0].remaining == 99
    assert await redis_client.hgetall(hash_key) == {
        str(decision.second % 60).encode(): b"1",
        b"n": b"1",
        b"l": str(decision.second).encode(),
        b"w": str(decision.second).encode(),
    }
    await store.adjust(rpm.key, decision.second, -1)
    assert await redis_client.exists(hash_key) == 0  # an empty counter is no key at all


@pytest.mark.redis
async def test_a_node_behind_counts_in_the_newest_second(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    ahead, behind = FakeClock(), FakeClock()
    ahead.advance(2)
    stores = [
        RedisRateLimitStore(redis_client, clock, key_prefix=redis_prefix)
        for clock in (ahead, behind)
    ]
    rpm = Limit("acct:a:rpm", 3, 1)
    assert (await stores[0].admit([rpm])).second == T0 + 2
    late = await stores[1].admit([rpm])
    assert late.admitted and late.second == T0 + 2  # stamped with the newest second
    await stores[1].adjust(rpm.key, late.second, -1)  # its true-up finds its bucket
    assert (await stores[1].peek([rpm]))[0].remaining == 2
    assert [(await stores[1].admit([rpm])).admitted for _ in range(3)] == [True, True, False]
    # The node behind sees the window end when the stamp (not its own clock) says so.
    behind.advance(61)
    assert not (await stores[1].admit([rpm])).admitted
    behind.advance(1)
    assert (await stores[1].admit([rpm])).admitted


@pytest.mark.redis
async def test_counted_in_afterwards_moves_the_window(
    clock: FakeClock, redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    """A positive adjust for a second newer than any admission (a fallback admission counted
    in when Redis is back) counts like an admission stamped then."""
    store = RedisRateLimitStore(redis_client, clock, key_prefix=redis_prefix)
    rpm = Limit("acct:a:rpm", 10, 1)
    await store.admit([rpm])  # T0: 1
    clock.advance(30)
    await store.adjust(rpm.key, T0 + 20, 4)  # T0+20: 4
    await store.adjust(rpm.key, T0 - 70, 4)  # long gone: ignored
    assert (await store.peek([rpm]))[0].remaining == 5
    clock.advance(30)  # T0+60: bucket T0 has left
    assert (await store.peek([rpm]))[0].remaining == 6
    clock.advance(20)  # T0+80: all gone
    assert (await store.admit([rpm])).states[0].remaining == 9


async def test_local_store_forgets_idle_keys(clock: FakeClock) -> None:
    store = InProcessRateLimitStore(clock)
    for i in range(1000):
        await store.admit([Limit(f"acct:{i}:rpm", 10, 1)])
    assert store.key_count == 1000
    clock.advance(59)
    await store.admit([Limit("acct:new:rpm", 10, 1)])
    assert store.key_count == 1001  # still in the window
    clock.advance(1)
    await store.admit([Limit("acct:newer:rpm", 10, 1)])
    assert store.key_count == 2

    bounded = InProcessRateLimitStore(clock, max_keys=10)
    for i in range(25):
        await bounded.admit([Limit(f"acct:{i}:rpm", 10, 1)])
    assert bounded.key_count == 10
    assert (await bounded.peek([Limit("acct:24:rpm", 10, 0)]))[0].remaining == 9


def same(local: tuple[LimitState, ...], shared: tuple[LimitState, ...]) -> bool:
    return all(
        dataclasses.replace(a, reset_ms=0) == dataclasses.replace(b, reset_ms=0)
        and a.reset_ms <= b.reset_ms
        and (a.reset_ms > 0) == (b.reset_ms > 0)
        for a, b in zip(local, shared, strict=True)
    )


@pytest.mark.redis
async def test_redis_agrees_with_the_in_process_store_on_random_histories(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    """The ring and running total in Redis against the in-process store's buckets: the same
    random admissions, true-ups, peeks and idle gaps (0 to 70 s) give the same answers (but
    for `reset_ms` after a true-up emptied the newest bucket: Redis may then say later)."""
    rng = random.Random(20261206)
    clocks = [FakeClock(), FakeClock()]
    stores: list[RateLimitStore] = [
        InProcessRateLimitStore(clocks[0]),
        RedisRateLimitStore(redis_client, clocks[1], key_prefix=redis_prefix),
    ]
    keys = ["acct:a:rpm", "acct:a:model:m:rpm", "acct:a:tpm"]
    admitted: list[tuple[str, int, int]] = []
    for step in range(400):
        gap = rng.choice([0, 0, 0, 0.3, 1, 1, 2, 5, 30, 59, 61, 70])
        for clock in clocks:
            clock.advance(gap)
        op = rng.random()
        if op < 0.6:
            limits = [Limit(key, rng.choice([5, 20, 300]), rng.randint(0, 40)) for key in keys]
            answers = [await store.admit(limits) for store in stores]
            assert same(answers[0].states, answers[1].states), step
            assert answers[0].admitted == answers[1].admitted, step
            assert answers[0].second == answers[1].second, step
            if answers[0].admitted:
                admitted += [(limit.key, answers[0].second, limit.cost) for limit in limits]
        elif op < 0.85 and admitted:
            key, second, cost = rng.choice(admitted)
            delta = rng.randint(-cost - 5, 10)
            for store in stores:
                await store.adjust(key, second, delta)
        else:
            limits = [Limit(key, 100, 0) for key in keys]
            views = [await store.peek(limits) for store in stores]
            assert same(views[0], views[1]), step


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_rate_key_escapes_every_part_as_quote_does(parts: list[str]) -> None:
    """Parts that need no escape skip `quote`; the key is the same as with it."""
    assert rate_key(*parts) == ":".join(quote(part, safe="") for part in parts)
    plain = ["acct_01HZ", "gpt-4o-mini", "a.b~c", "x_y-z"]
    assert rate_key(*plain) == ":".join(plain)
